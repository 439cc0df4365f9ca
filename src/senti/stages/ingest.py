"""Stage ``ingest``: copy the configured source to the raw CSV, unchanged."""

from __future__ import annotations

from pathlib import Path

from senti import ingest
from senti.config import load_context
from senti.io import write_json
from senti.stages import main


def run(root: Path) -> dict:
    params, layout = load_context(root)
    report = ingest.ingest(params.data.source, layout.root, layout.raw_csv)
    write_json(layout.ingest_report, report)
    return report


if __name__ == "__main__":
    main(run)
