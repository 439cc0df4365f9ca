"""The inference path on a tiny (untrained) model: shapes, order, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from senti.config import ModelParams
from senti.model import build_model
from senti.serve import InvalidInputError, Predictor, _texts_of
from senti.vocab import build_vocab, save_vocab

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    root = tmp_path_factory.mktemp("model")
    model = build_model(40, 2, ModelParams(embed_dim=8, lstm_units=4, dropout=0.1,
                                           spatial_dropout=0.1, maxlen=16))
    model.save(root / "model.keras")
    save_vocab(build_vocab([["质量", "很", "好"], ["太", "差", "了"]], 1, 40), root / "vocab.json")
    (root / "labels.json").write_text(json.dumps(LABELS))
    return Predictor(root / "model.keras", root / "vocab.json", root / "labels.json", maxlen=16)


def test_predictions_have_label_probability_and_class_columns(predictor):
    out = predictor.predict(["质量很好", "太差了", "Nice 质量 😀", "質量很好", "🙂🙂"])
    assert list(out.columns) == ["label", "probability", "prob_negative", "prob_positive"]
    assert len(out) == 5 and set(out["label"]) <= set(LABELS)
    np.testing.assert_allclose(out["prob_negative"] + out["prob_positive"], 1, atol=1e-5)


def test_batch_order_matches_single_predictions(predictor):
    texts = ["质量很好，物流也快，非常满意", "差", "一般般吧"]
    batch = predictor.predict_proba(texts)
    singles = np.concatenate([predictor.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_huge_text_is_clipped_not_rejected(predictor):
    out = predictor.predict(["好" * 100_000])
    assert out["label"].iloc[0] in LABELS


@pytest.mark.parametrize("bad, problem", [
    ([""], "row 0: text is empty"),
    (["ok", "   \u3000"], "row 1: text is empty or whitespace only"),
    ([None], "row 0: text is null"),
    ([float("nan")], "row 0: text is null"),
    ([42], "row 0: text must be a string, got int"),
])
def test_bad_rows_are_named(predictor, bad, problem):
    with pytest.raises(InvalidInputError, match=problem):
        predictor.predict(bad)


def test_pyfunc_inputs_need_a_text_column():
    assert _texts_of(pd.DataFrame({"text": ["好", None]})) == ["好", None]
    assert _texts_of([{"text": "好"}, {"text": "差"}]) == ["好", "差"]
    with pytest.raises(InvalidInputError, match="'text' column"):
        _texts_of(pd.DataFrame({"review": ["好"]}))
