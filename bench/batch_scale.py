"""Batch prediction at scale: this process vs a local Dask cluster of 1 and 2 workers.

    python -m bench.batch_scale [--root .] [--rows 200000] [--chunk-rows N] [--version N]

Builds ``--rows`` texts recombined from the bundled reviews (:mod:`bench.scale_corpus`, no
duplicates) under the project's first batch folder, then classifies them with a registered
version of the project at ``--root`` (default: the @champion, else the newest) three ways:
the single-process path (``local``), and Dask with 1 and with 2 worker processes of one thread
each. Each run is timed whole, cluster start-up and model loading included, from a clean
work directory. Prints one JSON line: seconds and rows/s per run, the speed-ups the issue sets
goals for (2 workers >= 1.7x 1 worker; 1 worker within 15% of local) and whether the three
outputs are byte-identical. The files it wrote are removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.scale_corpus import generate
from senti import registry, tags
from senti.config import STATE_DIR, load_context

RUNS = {"local": ("local", 0), "dask_1_worker": ("dask", 1), "dask_2_workers": ("dask", 2)}


def run_one(root: Path, name: str, source: Path, version: str, chunk_rows: int | None) -> dict:
    """One timed run (in its own process: a loaded model puts its code on ``sys.path``,
    which worker processes started later would inherit)."""
    params, layout = load_context(root)
    engine, workers = RUNS[name]
    shutil.rmtree(layout.root / STATE_DIR / "batch", ignore_errors=True)
    params = params.model_copy(update={"dask": params.dask.model_copy(
        update={"scheduler": "", "workers": workers, "threads_per_worker": 1})})
    if chunk_rows:
        params = params.model_copy(update={"serve": params.serve.model_copy(
            update={"batch_chunk_rows": chunk_rows})})
    output = source.with_name(f"out-{name}.csv")
    started = time.perf_counter()
    report = registry.predict_csv(layout, params, source, output, version, engine=engine)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "rows_per_second": round(report["rows"] / seconds, 1),
            "engine": report["engine"], "load_1min_after": round(os.getloadavg()[0], 2),
            "output_sha256": hashlib.sha256(output.read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--version", default=None)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per chunk (default: serve.batch_chunk_rows)")
    parser.add_argument("--run", choices=sorted(RUNS), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args()
    params, layout = load_context(args.root)
    folder = layout.root / params.serve.batch_dirs[0] / "bench-batch-scale"
    source = folder / "in.csv"
    if args.run:
        print(json.dumps(run_one(args.root, args.run, source, args.version, args.chunk_rows)))
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        generate(source, args.rows, args.seed, duplicate_rate=0.0, conflict_rate=0.0)
        if args.version is None:  # the @champion, else the newest version
            registry.configure(layout, params.registry.experiment)
            name = params.registry.model_name
            args.version = registry.alias_version(name, tags.CHAMPION) or \
                registry.resolve_model_uri(name).rsplit("/", 1)[1]
        result: dict = {"rows": args.rows, "cores": os.cpu_count(),
                        "chunk_rows": args.chunk_rows or params.serve.batch_chunk_rows,
                        "model_version": args.version,
                        "load_1min_before": round(os.getloadavg()[0], 2)}
        for name in RUNS:
            child = subprocess.run(
                [sys.executable, "-m", "bench.batch_scale", "--root", str(args.root),
                 "--version", args.version, "--run", name,
                 *(["--chunk-rows", str(args.chunk_rows)] if args.chunk_rows else [])],
                check=True, stdout=subprocess.PIPE, text=True)
            result[name] = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps({name: result[name]}), flush=True)
        result["speedup_2_vs_1_worker"] = round(
            result["dask_1_worker"]["seconds"] / result["dask_2_workers"]["seconds"], 3)
        result["dask_1_worker_vs_local"] = round(
            result["dask_1_worker"]["seconds"] / result["local"]["seconds"], 3)
        result["outputs_identical"] = len({result[n].pop("output_sha256") for n in RUNS}) == 1
        print(json.dumps(result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
