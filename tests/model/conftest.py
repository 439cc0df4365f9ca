"""A tiny untrained model with a six-token vocabulary, loaded as the serving Predictor: the
inference path and batch prediction are tested on it in seconds."""

import json

import pytest

from senti.config import ModelParams
from senti.model import build_model
from senti.serve import Predictor
from senti.vocab import build_vocab, save_vocab

LABELS = ["negative", "positive"]


@pytest.fixture(scope="session")
def predictor(tmp_path_factory) -> Predictor:
    root = tmp_path_factory.mktemp("model")
    model = build_model(40, 2, ModelParams(embed_dim=8, lstm_units=4, dropout=0.1,
                                           spatial_dropout=0.1, maxlen=16))
    model.save(root / "model.keras")
    save_vocab(build_vocab([["质量", "很", "好"], ["太", "差", "了"]], 1, 40), root / "vocab.json")
    (root / "labels.json").write_text(json.dumps(LABELS))
    return Predictor(root / "model.keras", root / "vocab.json", root / "labels.json", maxlen=16)
