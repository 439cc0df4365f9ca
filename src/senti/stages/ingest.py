"""Stage ``ingest``: copy the configured source to the raw CSV (converted to UTF-8 if it is
UTF-16 or GB18030, which is said on stderr)."""

from __future__ import annotations

import sys
from pathlib import Path

from senti import ingest
from senti.config import load_context
from senti.io import write_json
from senti.stages import main


def run(root: Path) -> dict:
    params, layout = load_context(root)
    report = ingest.ingest(params.data.source, layout.root, layout.raw_csv,
                           params.data.max_source_bytes, params.data.source_dirs)
    if report["source_encoding"] not in ingest.UTF8_ENCODINGS:
        print(f"ingest: data.source {params.data.source!r} is {report['source_encoding']}: "
              f"converted to UTF-8 in {params.paths.raw_csv}", file=sys.stderr)
    write_json(layout.ingest_report, report)
    return report


if __name__ == "__main__":
    main(run)
