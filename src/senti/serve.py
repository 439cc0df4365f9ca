"""Serve: raw Chinese text in; label, class probabilities and how much of the text the model
knows out.

:class:`Predictor` is the fast inference path (jieba loaded once, one compiled TensorFlow
function, so no retracing per call, XLA-compiled per batch shape in a server, run by one
:class:`ModelThread` that merges the batches of concurrent requests).
:class:`SentimentPyfunc` wraps it as an MLflow pyfunc model: :mod:`senti.pyfunc_model` is
the model code the registry logs (with this module: nothing here may need more than the
model's requirements; the HTTP server is :mod:`senti.server`). Nothing here imports the
training module.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from senti.inference import ForwardPass
from senti.model import load_model
from senti.prepare import CJK_PATTERN, normalise_text
from senti.segment import Segmenter
from senti.vocab import OOV_ID, check_maxlen, load_vocab

TEXT_COLUMN = "text"
MAX_BATCH = 256
# Only the first ``maxlen`` tokens are used; jieba averages < 2 characters per token, so
# reading more than this many characters per token slot is wasted work on huge inputs.
CHARS_PER_TOKEN_SLOT = 8
# A prediction's ``flag``, most severe first. The first two leave ``label`` and
# ``probability`` empty: the model has nothing it knows to judge.
NO_CHINESE = "no_chinese"  # not one Chinese character in what the model reads
NO_KNOWN_TOKENS = "no_known_tokens"  # every token out of the vocabulary
LOW_COVERAGE = "low_coverage"  # known share below serve.min_known_share
OK = "ok"
_CJK = re.compile(CJK_PATTERN)
_OBJECT_COLUMNS = ("label", "probability", "flag")


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
        elif not value or value.isspace():  # no copy of a huge text, unlike strip()
            problems.append(f"row {row}: text is empty or whitespace only")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidInputError(f"invalid input: {shown}{more}")
    return list(values)  # type: ignore[arg-type]


class ModelThread:
    """Runs a model's forward pass on one thread of its own for every caller of a
    :class:`Predictor` (the server's request threads, a request's own batches).

    The batches submitted while the model is busy wait in a queue and then run as one batch
    (``infer`` pads it), up to ``max_rows`` rows. Under concurrent requests the
    model is called once per round instead of once per request, which is where a
    single-text request spent most of its time (a forward pass on 8 texts costs little more
    than on one); a lone request waits for nothing. The probabilities of a text do not
    depend on the batch it ran in beyond float rounding (padding is masked). The thread
    starts with the first batch (again in a forked child) and, a daemon, ends with the
    process.
    """

    def __init__(self, infer: Callable[[list[list[int]]], np.ndarray], max_rows: int) -> None:
        self._infer, self._max_rows = infer, max_rows
        self._queue: queue.SimpleQueue[tuple[list[list[int]], Future]] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, seqs: list[list[int]]) -> Future:
        """Queue encoded texts (at most ``max_rows``); the future holds their
        probabilities, one row per text, or the error the forward pass raised."""
        future: Future = Future()
        self._queue.put((seqs, future))
        with self._start:
            if self._thread is None or not self._thread.is_alive():  # none yet; or forked
                self._thread = threading.Thread(target=self._run, name="senti-model",
                                                daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        held: tuple[list[list[int]], Future] | None = None
        while True:
            jobs = [held or self._queue.get()]
            held, rows = None, len(jobs[0][0])
            while held is None:  # everything queued meanwhile, as far as max_rows allows
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if rows + len(job[0]) > self._max_rows:
                    held = job  # first in the next round
                else:
                    jobs.append(job)
                    rows += len(job[0])
            try:
                proba = self._infer([seq for seqs, _ in jobs for seq in seqs])
            except Exception as exc:  # each caller gets it from its future
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            start = 0
            for seqs, future in jobs:
                future.set_result(proba[start:start + len(seqs)])
                start += len(seqs)


class Predictor:
    """Loads a trained model's artifacts once and classifies batches of raw texts.

    A text is read up to ``max_chars`` (``maxlen`` * :data:`CHARS_PER_TOKEN_SLOT`)
    characters, clipped before it is normalised, so a huge text costs what a long one does.
    A ``maxlen`` :func:`~senti.vocab.check_maxlen` refuses, or a vocabulary whose size is not
    the model's embedding rows, raises ValueError.
    """

    def __init__(self, model_file: Path | str, vocab_file: Path | str, labels_file: Path | str,
                 maxlen: int, user_dict: Path | str | None = None,
                 min_known_share: float = 0.0) -> None:
        self.model = load_model(model_file)
        self.vocab = load_vocab(Path(vocab_file))
        rows = self.model.get_layer("embedding").input_dim
        if rows != len(self.vocab):
            raise ValueError(f"vocabulary {vocab_file} has {len(self.vocab)} tokens; the model's "
                             f"embedding has {rows} rows")
        self.labels: list[str] = json.loads(Path(labels_file).read_text(encoding="utf-8"))
        self.maxlen = check_maxlen(maxlen)
        self.max_chars = maxlen * CHARS_PER_TOKEN_SLOT
        self.min_known_share = min_known_share  # below it: flagged low_coverage
        self.segmenter = Segmenter(user_dict)
        self.forward = ForwardPass(self.model)  # a server switches it to XLA
        self._model_thread = ModelThread(self.forward, MAX_BATCH)

    def encode(self, text: str) -> list[int]:
        """The token ids the model reads of ``text`` (never empty; unknown tokens OOV)."""
        read = normalise_text(text, self.max_chars)[: self.max_chars]  # NFKC can expand
        return self.vocab.encode(self.segmenter.cut(read), self.maxlen)

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[int]]]:
        """Class probabilities, one row per text, columns in ``self.labels`` order, and the
        token ids each text was read as.

        Texts are batched by character length (a cheap proxy for token count, so batches
        carry little padding). While the :class:`ModelThread` classifies one batch
        (TensorFlow releases the GIL), jieba segments the next, so the two costs overlap.
        """
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[i:i + MAX_BATCH] for i in range(0, len(order), MAX_BATCH)]
        proba = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        encoded: list[list[int]] = [[] for _ in texts]

        def encode_rows(rows: np.ndarray) -> list[list[int]]:
            for i in rows:
                encoded[i] = self.encode(texts[i])
            return [encoded[i] for i in rows]

        pending = [(rows, self._model_thread.submit(encode_rows(rows))) for rows in batches]
        for rows, future in pending:
            proba[rows] = future.result()
        return proba, encoded

    def columns(self, texts: Sequence[object]) -> dict[str, list]:
        """The answer for ``texts`` column by column, as plain Python values (what JSON
        carries): ``label`` and ``probability`` (of that label), ``prob_<label>`` for every
        class, ``known_share`` (share of the tokens read that are in the vocabulary) and
        ``flag`` (:data:`OK`, :data:`LOW_COVERAGE`, :data:`NO_KNOWN_TOKENS`,
        :data:`NO_CHINESE`). The last two leave ``label`` and ``probability`` None; the
        ``prob_<label>`` columns always hold the model's raw output."""
        checked = check_texts(texts)
        proba, encoded = self.score(checked)
        known = np.array([np.mean(np.asarray(ids) != OOV_ID) for ids in encoded], dtype=float)
        chinese = np.array([_CJK.search(t[: self.max_chars]) is not None for t in checked],
                           dtype=bool)
        flags = np.select([~chinese, known == 0, known < self.min_known_share],
                          [NO_CHINESE, NO_KNOWN_TOKENS, LOW_COVERAGE], OK)
        judged = chinese & (known > 0)
        best = proba.argmax(axis=1)
        top = proba[np.arange(len(best)), best].astype(float)
        return {
            "label": [self.labels[b] if j else None for b, j in zip(best, judged, strict=True)],
            "probability": [float(p) if j else None for p, j in zip(top, judged, strict=True)],
            **{f"prob_{label}": proba[:, j].astype(float).tolist()
               for j, label in enumerate(self.labels)},
            "known_share": known.tolist(),
            "flag": flags.tolist(),
        }

    def predict(self, texts: Sequence[object]) -> pd.DataFrame:
        """:meth:`columns` as a DataFrame: ``label``, ``probability`` and ``flag`` are object
        columns (a declined row holds None, JSON null, not NaN), the rest float64."""
        return pd.DataFrame({  # one constructor call: a column at a time costs ~3x as much
            name: pd.Series(values, dtype=object) if name in _OBJECT_COLUMNS else
            np.asarray(values, dtype=float) for name, values in self.columns(texts).items()})

    def records(self, texts: Sequence[object]) -> list[dict[str, object]]:
        """:meth:`columns` as one dict per text: the rows :meth:`predict`'s DataFrame gives
        as records, built without pandas (the serving fast path, :mod:`senti.server`)."""
        columns = self.columns(texts)
        return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


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


def _serving_maxlen(path: Path) -> int:
    """The ``maxlen`` of the serving config ``path`` (:func:`~senti.vocab.check_maxlen`);
    ValueError naming the file when it has none it accepts."""
    config = json.loads(path.read_text(encoding="utf-8"))
    try:
        return check_maxlen(config.get("maxlen") if isinstance(config, dict) else None)
    except ValueError as exc:
        raise ValueError(f"serving config {path}: {exc}") from None


class SentimentPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around :class:`Predictor` (artifacts: model, vocab, labels...)."""

    max_rows: int | None = None  # rows one predict call may carry (None: any)

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.predictor = Predictor(artifacts["model"], artifacts["vocab"], artifacts["labels"],
                                   maxlen=_serving_maxlen(Path(artifacts["serving_config"])),
                                   user_dict=artifacts.get("user_dict"))

    def configure(self, min_known_share: float, max_rows: int | None = None,
                  xla: bool = False) -> None:
        """Apply params.yaml's ``serve`` section to the loaded model: the low-coverage
        threshold, and for a server the rows one request may carry and the XLA-compiled
        forward pass (:meth:`senti.inference.ForwardPass.use_xla`: floats may differ from a
        batch job's in the last bits)."""
        self.predictor.min_known_share = min_known_share
        self.max_rows = max_rows
        if xla:
            self.predictor.forward.use_xla()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            texts = _texts_of(model_input)
            if self.max_rows is not None and len(texts) > self.max_rows:
                raise InvalidInputError(
                    f"{len(texts)} rows in one request; the limit is {self.max_rows} "
                    "(serve.max_rows_per_request): split the request")
            return self.predictor.predict(texts)
        except InvalidInputError as exc:  # a 400 from the scoring server, not a 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
