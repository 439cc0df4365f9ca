"""A tiny untrained model with a six-token vocabulary, loaded as the serving Predictor: the
inference path and batch prediction are tested on it in seconds."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from senti.config import ModelParams
from senti.model import build_model
from senti.serve import Predictor
from senti.vocab import build_vocab, save_vocab

LABELS = ["negative", "positive"]


def _predictor(folder: Path) -> Predictor:
    return Predictor(folder / "model.keras", folder / "vocab.json", folder / "labels.json",
                     maxlen=16)


@dataclass(frozen=True)
class TinyModel:
    """The tiny model's files as a :class:`senti.batch.ModelSource` (what a registered
    version is in production): each process that predicts with it loads it itself."""

    folder: str
    version: str = "7"

    def load(self):
        predictor = _predictor(Path(self.folder))
        return lambda frame: predictor.predict(frame["text"].tolist())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    vocab = build_vocab([["质量", "很", "好"], ["太", "差", "了"]], 1, 40)
    model = build_model(len(vocab), 2, ModelParams(embed_dim=8, lstm_units=4, dropout=0.1,
                                                   spatial_dropout=0.1, maxlen=16))
    model.save(root / "model.keras")
    save_vocab(vocab, root / "vocab.json")
    (root / "labels.json").write_text(json.dumps(LABELS))
    return root


@pytest.fixture(scope="session")
def predictor(tiny_model_dir) -> Predictor:
    return _predictor(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> TinyModel:
    return TinyModel(str(tiny_model_dir))
