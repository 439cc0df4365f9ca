"""Stage ``segment``: jieba tokens of every prepared text, streamed in chunks of
``segment.chunk_rows`` texts (memory bounded whatever the corpus size), segmented on a local
process pool or, with ``segment.engine: dask``, on the Dask cluster of ``dask``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from senti import cluster
from senti.config import load_context
from senti.io import atomic_path, sha256_file, write_json
from senti.segment import jieba_version, segment_chunks
from senti.stages import main

TOKENS = pa.field("tokens", pa.list_(pa.string()))


def run(root: Path) -> dict:
    params, layout = load_context(root)
    user_dict = params.segment.user_dict_path(layout.root)
    dataset = pq.ParquetFile(layout.dataset)
    read: deque[pa.RecordBatch] = deque()  # batches whose tokens are being computed

    def texts() -> Iterator[list[str]]:
        for batch in dataset.iter_batches(batch_size=params.segment.chunk_rows):
            read.append(batch)
            yield batch.column("text").to_pylist()

    engine = cluster.dask(params.dask) if params.segment.engine == "dask" \
        else cluster.processes(params.segment.workers)
    schema = dataset.schema_arrow.append(TOKENS).remove_metadata()
    lengths: list[int] = []
    chars = 0
    started = time.perf_counter()
    with engine as running, atomic_path(layout.tokens) as tmp, \
            pq.ParquetWriter(tmp, schema) as writer:
        for tokens in segment_chunks(texts(), user_dict, running):
            batch = read.popleft()
            chars += sum(map(len, batch.column("text").to_pylist()))
            lengths.extend(map(len, tokens))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(tokens, TOKENS.type)], schema=schema))
    seconds = time.perf_counter() - started
    counts = np.asarray(lengths or [0])
    report = {
        "rows": len(lengths),
        "tokens_mean": round(float(counts.mean()), 2),
        "tokens_p50": int(np.percentile(counts, 50)),
        "tokens_p95": int(np.percentile(counts, 95)),
        "tokens_p99": int(np.percentile(counts, 99)),
        "jieba_version": jieba_version(),
        "user_dict_sha256": sha256_file(user_dict) if user_dict else None,
    }
    write_json(layout.segment_report, report)
    print(f"segmented {len(lengths)} texts in {seconds:.1f}s on {running.name} "
          f"({chars / seconds / 1e6:.2f} M chars/s)")
    return report


if __name__ == "__main__":
    main(run)
