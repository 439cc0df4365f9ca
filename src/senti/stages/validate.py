"""Stage ``validate``: the data suite (Great Expectations) on the raw CSV."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from senti.config import load_context
from senti.stages import main
from senti.validate import read_raw_csv, validate_frame, write_report


def run(root: Path) -> dict:
    """Write the validation report and Data Docs; fail naming the unmet expectations."""
    params, layout = load_context(root)
    report = validate_frame(read_raw_csv(layout.raw_csv), params.validate, params.data.labels,
                            docs_dir=layout.data_docs)
    # Recorded relative to the project, so the report's hash does not depend on the checkout.
    report = dataclasses.replace(report, data_docs=str(layout.data_docs.relative_to(layout.root)
                                                       / "index.html"))
    write_report(report, layout.validation_report)
    if not report.success:
        print(report.summary(), file=sys.stderr)
        raise ValueError(f"validation failed: {len(report.failed)} expectation(s) not met")
    print(f"validation passed ({report.rows} rows); Data Docs: {report.data_docs}")
    return report.to_dict()


if __name__ == "__main__":
    main(run)
