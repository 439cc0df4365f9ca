"""Stage ``validate``: the data suite (Great Expectations) on the raw CSV."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from senti.config import load_context
from senti.io import atomic_dir, atomic_path
from senti.stages import main
from senti.validate import quarantine_table, read_raw_batches, validate_batches, write_report


def run(root: Path) -> dict:
    """Write the validation report, the quarantine list and Data Docs (each atomically); fail
    naming the unmet expectations. The raw CSV is read in batches, never whole."""
    params, layout = load_context(root)

    def batches() -> Iterator[pd.DataFrame]:
        return read_raw_batches(layout.raw_csv, params.data.max_source_bytes)

    with atomic_dir(layout.data_docs) as docs:
        report = validate_batches(batches, params.validate, params.data.labels, docs_dir=docs)
    # Recorded relative to the project, so the report's hash does not depend on the checkout.
    report = dataclasses.replace(report, data_docs=str(layout.data_docs.relative_to(layout.root)
                                                       / "index.html"))
    with atomic_path(layout.quarantine) as tmp:
        quarantine_table(batches() if report.bad_rows else [], report).to_csv(tmp, index=False)
    write_report(report, layout.validation_report)
    if not report.success:
        print(report.summary(), file=sys.stderr)
        raise ValueError("validation failed: "
                         + ", ".join(f"{o.name} ({o.observed})" for o in report.failed))
    kept = (f"; {report.quarantined} rows quarantined in {params.paths.quarantine}"
            if report.quarantined else "")
    print(f"validation passed ({report.rows} rows); Data Docs: {report.data_docs}{kept}")
    return report.to_dict()


if __name__ == "__main__":
    main(run)
