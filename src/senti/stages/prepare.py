"""Stage ``prepare``: clean, de-duplicate and split the validated raw data, without the rows
validation quarantined. The raw CSV is read in batches, never whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from senti import prepare
from senti.config import load_context
from senti.io import atomic_path, read_json, write_json
from senti.stages import main
from senti.validate import read_raw_batches


def run(root: Path) -> dict:
    params, layout = load_context(root)
    if not read_json(layout.validation_report).get("success"):
        raise ValueError(f"{layout.validation_report} records a failed validation: "
                         "fix the data and run the validate stage first")
    quarantined = pd.read_csv(layout.quarantine, usecols=["row"])["row"]
    dataset, labels, report = prepare.prepare(
        read_raw_batches(layout.raw_csv, params.data.max_source_bytes), params.data.labels,
        params.data.sample_size, params.data.val_fraction, params.data.test_fraction,
        max_chars=params.validate.max_text_chars,
        min_rows=params.validate.min_rows_after_cleaning, quarantined=quarantined.tolist())
    for split, counts in report["splits"].items():
        if sum(counts.values()) == 0:
            raise ValueError(f"the {split} split is empty after cleaning: "
                             f"{report['counts']['rows_sampled']} rows are too few")
    with atomic_path(layout.dataset) as tmp:
        dataset.to_parquet(tmp, index=False)
    write_json(layout.labels, labels)
    write_json(layout.prepare_report, report)
    return report


if __name__ == "__main__":
    main(run)
