"""Stage ``segment``: jieba tokens of every prepared text."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from senti.config import load_context
from senti.io import atomic_path, sha256_file, write_json
from senti.segment import jieba_version, segment_texts
from senti.stages import main


def run(root: Path) -> dict:
    params, layout = load_context(root)
    dataset = pd.read_parquet(layout.dataset)
    user_dict = params.segment.user_dict_path(layout.root)
    started = time.perf_counter()
    dataset["tokens"] = segment_texts(dataset["text"].tolist(), user_dict, params.segment.workers)
    seconds = time.perf_counter() - started
    with atomic_path(layout.tokens) as tmp:
        dataset.to_parquet(tmp, index=False)
    lengths = dataset["tokens"].map(len).to_numpy()
    report = {
        "rows": len(dataset),
        "tokens_mean": round(float(lengths.mean()), 2),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p95": int(np.percentile(lengths, 95)),
        "tokens_p99": int(np.percentile(lengths, 99)),
        "jieba_version": jieba_version(),
        "user_dict_sha256": sha256_file(user_dict) if user_dict else None,
    }
    write_json(layout.segment_report, report)
    print(f"segmented {len(dataset)} texts in {seconds:.1f}s "
          f"({dataset['text'].str.len().sum() / seconds / 1e6:.2f} M chars/s)")
    return report


if __name__ == "__main__":
    main(run)
