"""Stage ``prepare``: clean, de-duplicate and split the validated raw data, without the rows
validation quarantined, in two passes (:class:`senti.prepare.Cleaner`), memory bounded:
the raw CSV is read in batches and the rows that pass the row-level steps go to a scratch
parquet file next to the dataset; then the dataset's rows are read back from it, given their
split and written. Only a sample (``data.sample_size``) is held whole, to be put in its order.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from senti import prepare
from senti.config import load_context
from senti.io import atomic_path, read_json, write_json
from senti.stages import BATCH_ROWS, main
from senti.validate import read_raw_batches

# rows of a row group of the dataset: pyarrow's default, so the file is the one a single
# DataFrame.to_parquet of the whole dataset writes, byte for byte
ROW_GROUP_ROWS = 1024 * 1024
SCRATCH_PREFIX = ".prepare-"  # the scratch directory, next to the dataset
CLEANED = pa.schema([("text", pa.large_string()), ("label", pa.large_string())])


def write_row_groups(path: Path, tables: Iterable[pa.Table]) -> None:
    """``tables`` (one schema, the first's metadata) as one parquet file at ``path``, cut
    into row groups of :data:`ROW_GROUP_ROWS` rows whatever the sizes of the tables."""
    held: list[pa.Table] = []
    with ExitStack() as stack:
        writer = None
        for table in tables:
            held.append(table)
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(path, table.schema))
            if sum(map(len, held)) >= ROW_GROUP_ROWS:
                joined = pa.concat_tables(held)
                whole = len(joined) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
                writer.write_table(joined.slice(0, whole).combine_chunks())
                held = [joined.slice(whole)]
        if writer is not None:
            writer.write_table(pa.concat_tables(held).combine_chunks())


def run(root: Path) -> dict:
    params, layout = load_context(root)
    if not read_json(layout.validation_report).get("success"):
        raise ValueError(f"{layout.validation_report} records a failed validation: "
                         "fix the data and run the validate stage first")
    quarantined = pd.read_csv(layout.quarantine, usecols=["row"])["row"]
    cleaner = prepare.Cleaner(params.validate.max_text_chars, quarantined.tolist())
    layout.dataset.parent.mkdir(parents=True, exist_ok=True)
    for stale in layout.dataset.parent.glob(f"{SCRATCH_PREFIX}*"):  # of a killed run
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX,
                                     dir=layout.dataset.parent) as scratch:
        cleaned, attrs = Path(scratch) / "cleaned.parquet", {}
        with pq.ParquetWriter(cleaned, CLEANED) as writer:
            for raw in read_raw_batches(layout.raw_csv, params.data.max_source_bytes):
                attrs = attrs or dict(raw.attrs)
                writer.write_table(pa.Table.from_pandas(cleaner.add(raw), schema=CLEANED,
                                                        preserve_index=False))
        plan = cleaner.plan(params.data.sample_size)
        labels = plan.label_order(params.data.labels, params.validate.min_rows_after_cleaning)
        tally: Counter[tuple[str, str]] = Counter()

        def dataset() -> Iterator[pa.Table]:
            parts = (batch.to_pandas() for batch in
                     pq.ParquetFile(cleaned).iter_batches(batch_size=BATCH_ROWS))
            for part in prepare.take(parts, plan.rows):
                part = prepare.with_split(part, params.data.val_fraction,
                                          params.data.test_fraction)
                tally.update(prepare.split_labels(part))
                part.attrs = attrs  # the raw data's (its encoding), where to_parquet puts them
                table = pa.Table.from_pandas(part, preserve_index=False)
                yield table.replace_schema_metadata({
                    **table.schema.metadata,
                    **({b"PANDAS_ATTRS": json.dumps(attrs).encode()} if attrs else {})})

        with atomic_path(layout.dataset) as tmp:
            write_row_groups(tmp, dataset())
            report = prepare.report(plan, labels, tally)
            for split, counts in report["splits"].items():
                if sum(counts.values()) == 0:
                    raise ValueError(f"the {split} split is empty after cleaning: "
                                     f"{plan.counts['rows_sampled']} rows are too few")
    write_json(layout.labels, labels)
    write_json(layout.prepare_report, report)
    return report


if __name__ == "__main__":
    main(run)
