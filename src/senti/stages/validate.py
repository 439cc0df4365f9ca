"""Stage ``validate``: the data suite (Great Expectations) on the raw CSV."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from senti.config import load_context
from senti.io import atomic_dir, atomic_path
from senti.stages import main
from senti.validate import quarantine_table, read_raw_csv, validate_frame, write_report


def run(root: Path) -> dict:
    """Write the validation report, the quarantine list and Data Docs (each atomically); fail
    naming the unmet expectations."""
    params, layout = load_context(root)
    raw = read_raw_csv(layout.raw_csv, params.data.max_source_bytes)
    with atomic_dir(layout.data_docs) as docs:
        report = validate_frame(raw, params.validate, params.data.labels, docs_dir=docs)
    # Recorded relative to the project, so the report's hash does not depend on the checkout.
    report = dataclasses.replace(report, data_docs=str(layout.data_docs.relative_to(layout.root)
                                                       / "index.html"))
    with atomic_path(layout.quarantine) as tmp:
        quarantine_table(raw, report).to_csv(tmp, index=False)
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
