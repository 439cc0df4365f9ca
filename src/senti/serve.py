"""Serve: raw Chinese text in, label and class probabilities out.

:class:`Predictor` is the fast inference path (jieba loaded once, one compiled TensorFlow
function over batches padded to their longest text, so no retracing per call).
:class:`SentimentPyfunc` wraps it as an MLflow pyfunc model: :mod:`senti.pyfunc_model` is
the model code the registry logs, and ``mlflow models serve`` serves. Nothing here imports
the training module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from senti.inference import compile_inference, pad_batch
from senti.model import load_model
from senti.prepare import normalise_text
from senti.segment import Segmenter
from senti.vocab import load_vocab

TEXT_COLUMN = "text"
MAX_BATCH = 256
# Only the first ``maxlen`` tokens are used; jieba averages < 2 characters per token, so
# segmenting more than this many characters per token slot is wasted work on huge inputs.
CHARS_PER_TOKEN_SLOT = 8


class InvalidInputError(ValueError):
    """A request row cannot be classified; the message names the row and the problem."""


def check_texts(values: Sequence[object]) -> list[str]:
    """Reject nulls, non-strings and texts with nothing to classify, naming each bad row."""
    problems = []
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            problems.append(f"row {row}: text is null")
        elif not isinstance(value, str):
            problems.append(f"row {row}: text must be a string, got {type(value).__name__}")
        elif not value.strip():
            problems.append(f"row {row}: text is empty or whitespace only")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidInputError(f"invalid input: {shown}{more}")
    return list(values)  # type: ignore[arg-type]


class Predictor:
    """Loads a trained model's artifacts once and classifies batches of raw texts."""

    def __init__(self, model_file: Path | str, vocab_file: Path | str, labels_file: Path | str,
                 maxlen: int, user_dict: Path | str | None = None) -> None:
        self.model = load_model(model_file)
        self.vocab = load_vocab(Path(vocab_file))
        self.labels: list[str] = json.loads(Path(labels_file).read_text(encoding="utf-8"))
        self.maxlen = maxlen
        self.segmenter = Segmenter(user_dict)
        self._infer = compile_inference(self.model)

    def encode(self, text: str) -> list[int]:
        clipped = normalise_text(text)[: self.maxlen * CHARS_PER_TOKEN_SLOT]
        return self.vocab.encode(self.segmenter.cut(clipped), self.maxlen)

    def _infer_batch(self, seqs: list[list[int]]) -> np.ndarray:
        """Probabilities of one batch of encoded texts, padded to its longest."""
        return self._infer(pad_batch(seqs)).numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, one row per text, columns in ``self.labels`` order.

        Texts are batched by character length (a cheap proxy for token count, so batches
        carry little padding). While TensorFlow, which releases the GIL, classifies one batch
        on a second thread, jieba segments the next, so the two costs overlap.
        """
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[i:i + MAX_BATCH] for i in range(0, len(order), MAX_BATCH)]
        proba = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if len(batches) == 1:
            proba[order] = self._infer_batch([self.encode(texts[i]) for i in order])
            return proba
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="senti-infer") as model_thread:
            pending = [(rows, model_thread.submit(
                self._infer_batch, [self.encode(texts[i]) for i in rows])) for rows in batches]
            for rows, future in pending:
                proba[rows] = future.result()
        return proba

    def predict(self, texts: Sequence[object]) -> pd.DataFrame:
        """``label``, ``probability`` (of that label) and ``prob_<label>`` for every class."""
        proba = self.predict_proba(check_texts(texts)) if len(texts) else np.zeros(
            (0, len(self.labels)), dtype=np.float32)
        best = proba.argmax(axis=1)
        frame = pd.DataFrame({
            "label": [self.labels[i] for i in best],
            "probability": proba[np.arange(len(best)), best].astype(float),
        })
        for j, label in enumerate(self.labels):
            frame[f"prob_{label}"] = proba[:, j].astype(float)
        return frame


def _texts_of(model_input: object) -> list[object]:
    """The ``text`` values of a pyfunc input (DataFrame, list of dicts/strings, or dict)."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise InvalidInputError(f"input must have a '{TEXT_COLUMN}' column, "
                                    f"got columns {list(model_input.columns)}")
        return [None if pd.isna(v) else v for v in model_input[TEXT_COLUMN].tolist()]
    if isinstance(model_input, dict) and TEXT_COLUMN in model_input:
        values = model_input[TEXT_COLUMN]
        return list(values) if isinstance(values, list | tuple | np.ndarray) else [values]
    if isinstance(model_input, list | np.ndarray):
        return [v.get(TEXT_COLUMN) if isinstance(v, dict) else v for v in model_input]
    raise InvalidInputError(f"unsupported input type {type(model_input).__name__}: "
                            f"send records with a '{TEXT_COLUMN}' field")


class SentimentPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around :class:`Predictor` (artifacts: model, vocab, labels...)."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        config = json.loads(Path(artifacts["serving_config"]).read_text(encoding="utf-8"))
        self.predictor = Predictor(artifacts["model"], artifacts["vocab"], artifacts["labels"],
                                   maxlen=config["maxlen"], user_dict=artifacts.get("user_dict"))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            return self.predictor.predict(_texts_of(model_input))
        except InvalidInputError as exc:  # a 400 from the scoring server, not a 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
