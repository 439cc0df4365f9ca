"""Inference on encoded texts: batches padded to their longest text, one compiled forward pass.

Shared by the evaluate stage and serving (:mod:`senti.serve`), which must not import the
training module.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

# An XLA-compiled forward pass compiles one program per input shape (~1 s of a CPU core each):
# bucketed batches (:func:`bucket_batch`) keep the shapes few. Lengths go up in steps of
# LENGTH_STEP, rows in powers of two: with maxlen 128 and 256 rows, at most 4 x 9 programs.
LENGTH_STEP = 32
# A server compiles a shape when it meets it for this time: shapes met once or twice (a rare
# length, a lone large request, a short-lived server) are not worth ~1-2 s of a core each.
COMPILE_AT_BATCH = 3
logger = logging.getLogger(__name__)


def pad_batch(sequences: Sequence[Sequence[int]], length: int = 0) -> np.ndarray:
    """Right-pad encoded texts with 0 to the longest of them, or to ``length`` if longer
    (int32, the model's input)."""
    batch = np.zeros((len(sequences), max([length, *map(len, sequences)])), dtype=np.int32)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)] = seq
    return batch


def bucket_batch(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """:func:`pad_batch` to one of few shapes: the length up to a multiple of
    :data:`LENGTH_STEP`, the rows up to a power of two (the added rows repeat the first text;
    their answers are to be dropped). Padding is masked, so a text's probabilities do not
    change beyond float rounding."""
    longest = max(map(len, sequences))
    rows = 1 << (len(sequences) - 1).bit_length()
    batch = pad_batch(sequences, -(-longest // LENGTH_STEP) * LENGTH_STEP)
    return np.concatenate([batch, np.repeat(batch[:1], rows - len(batch), axis=0)])


def compile_inference(model: keras.Model, xla: bool = False):
    """The model's forward pass as one ``tf.function`` over ``[None, None]`` int32 batches:
    traced once, whatever the batch size or length (an eager call is ~100x slower). With
    ``xla``, compiled by XLA for each input shape it meets: 3-8x less CPU per call on this
    model once compiled (docs/benchmarks.md): :meth:`ForwardPass.use_xla`."""
    return tf.function(lambda ids: model(ids, training=False), jit_compile=xla,
                       input_signature=[tf.TensorSpec([None, None], tf.int32)])


class ForwardPass:
    """Class probabilities of encoded texts (one row each, in order) from the traced graph,
    the batch padded to its longest text: the same batch gives the same numbers, always.

    A long-running server calls :meth:`use_xla`: from then on a batch runs XLA-compiled once
    the program for its :func:`bucket_batch` shape exists, 3-8x cheaper. One background
    thread compiles a shape (~1 s of a core) once :data:`COMPILE_AT_BATCH` batches had it;
    until it is compiled they run through the traced graph, so no request waits for a
    compilation; the two paths agree to float rounding. The thread starts with the first
    shape to compile (again in a forked child) and, a daemon, ends with the process.
    """

    def __init__(self, model: keras.Model) -> None:
        self._model, self._plain = model, compile_inference(model)
        self._xla: Callable[[np.ndarray], tf.Tensor] | None = None
        self._compiled: set[tuple[int, ...]] = set()
        self._seen: Counter[tuple[int, ...]] = Counter()
        self._to_compile: queue.SimpleQueue[tuple[int, ...]] = queue.SimpleQueue()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None

    def use_xla(self) -> None:
        """Run each batch shape XLA-compiled once it has been compiled in the background."""
        if self._xla is None:
            self._xla = compile_inference(self._model, xla=True)

    def __call__(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        if self._xla is not None:
            batch = bucket_batch(sequences)
            if batch.shape in self._compiled:
                return self._xla(batch).numpy()[: len(sequences)]
            self._compile_later(batch.shape)
        return self._plain(pad_batch(sequences)).numpy()

    def _compile_later(self, shape: tuple[int, ...]) -> None:
        with self._start:
            self._seen[shape] += 1
            if self._seen[shape] != COMPILE_AT_BATCH:
                return
            if self._thread is None or not self._thread.is_alive():  # none yet; or forked
                self._thread = threading.Thread(target=self._compile, name="senti-xla",
                                                daemon=True)
                self._thread.start()
            self._to_compile.put(shape)

    @property
    def compiled_shapes(self) -> frozenset[tuple[int, ...]]:
        """The batch shapes that run XLA-compiled now."""
        return frozenset(self._compiled)

    def _compile(self) -> None:
        while True:
            shape = self._to_compile.get()
            try:
                self._xla(np.ones(shape, dtype=np.int32))  # type: ignore[misc]
            except Exception:  # that shape stays on the traced graph
                logger.warning("XLA could not compile the forward pass for %s", shape,
                               exc_info=True)
            else:
                self._compiled.add(shape)


def predict_proba(model: keras.Model, sequences: Sequence[Sequence[int]],
                  batch_size: int = 256) -> np.ndarray:
    """Class probabilities for already-encoded sequences, in input order; batches group
    similar lengths so they carry little padding."""
    infer = compile_inference(model)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    proba = np.zeros((len(sequences), model.output_shape[-1]), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        proba[rows] = infer(tf.constant(pad_batch([sequences[i] for i in rows]))).numpy()
    return proba
