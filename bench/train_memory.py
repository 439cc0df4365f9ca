"""Wall time and peak memory of the train stage on N copies of this checkout's tokens file.

    python -m bench.train_memory --copies 800 --work /tmp/senti-train-memory

Run from the project root after a ``senti retrain`` (it reads ``data/processed``). A
throw-away project in ``--work`` gets this checkout's params.yaml with ``--set`` values
(default: one epoch, batches of 1,024 texts, no adversarial step, so that a large copy trains
in minutes), the vocabulary, labels and initial embedding, and a tokens file holding the
checkout's ``--copies`` times, one row group per copy. Its train stage runs as DVC runs it
(``python -m senti.stages.train``, :func:`bench.scale.run_stage`): the wall time, the peak RSS
of the stage process, and the sha256 of the trained weights (the same data and params give
the same weights, however the stage reads its input) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from bench.scale import run_stage
from senti.config import load_context, parse_overrides, write_overrides
from senti.io import read_json

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = ["train.epochs=1", "train.batch_size=1024", "train.adversarial_eps=0"]


def make_project(work: Path, copies: int, overrides: list[str]) -> Path:
    """The throw-away project: params, the processed inputs, the repeated tokens file."""
    _, layout = load_context(REPO)
    project = work / f"train-{copies}x"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    write_overrides(project, parse_overrides(overrides))
    _, target = load_context(project)
    target.tokens.parent.mkdir(parents=True, exist_ok=True)
    for name in ("vocab", "labels", "embeddings"):
        shutil.copy(getattr(layout, name), getattr(target, name))
    tokens = pq.read_table(layout.tokens)
    with pq.ParquetWriter(target.tokens, tokens.schema) as writer:
        for _ in range(copies):
            writer.write_table(tokens)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path("/tmp/senti-train-memory"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=f"params (default: {' '.join(DEFAULTS)})")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    project = make_project(args.work, args.copies, args.overrides or DEFAULTS)
    _, layout = load_context(project)
    result = {"copies": args.copies, "rows": pq.ParquetFile(layout.tokens).metadata.num_rows,
              **run_stage(project, "train", args.timeout)}
    if layout.train_report.exists() and not result["exit"]:
        result["weights_sha256"] = read_json(layout.train_report)["weights_sha256"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
