"""Stage ``prepare``: clean, de-duplicate and split the validated raw data."""

from __future__ import annotations

from pathlib import Path

from senti import prepare
from senti.config import load_context
from senti.io import read_json, write_json
from senti.stages import main
from senti.validate import read_raw_csv


def run(root: Path) -> dict:
    params, layout = load_context(root)
    if not read_json(layout.validation_report).get("success"):
        raise ValueError(f"{layout.validation_report} records a failed validation: "
                         "fix the data and run the validate stage first")
    dataset, labels, report = prepare.prepare(
        read_raw_csv(layout.raw_csv), params.data.labels, params.data.sample_size,
        params.data.val_fraction, params.data.test_fraction)
    for split, counts in report["splits"].items():
        if sum(counts.values()) == 0:
            raise ValueError(f"the {split} split is empty after cleaning: "
                             f"{report['counts']['rows_sampled']} rows are too few")
    layout.dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(layout.dataset, index=False)
    write_json(layout.labels, labels)
    write_json(layout.prepare_report, report)
    return report


if __name__ == "__main__":
    main(run)
