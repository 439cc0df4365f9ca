"""Inference on encoded texts: batches padded to their longest text, one compiled forward pass.

Shared by the evaluate stage and serving (:mod:`senti.serve`), which must not import the
training module.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


def pad_batch(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Right-pad encoded texts with 0 to the longest of them (int32, the model's input)."""
    batch = np.zeros((len(sequences), max(map(len, sequences))), dtype=np.int32)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)] = seq
    return batch


def compile_inference(model: keras.Model):
    """The model's forward pass as one ``tf.function`` over ``[None, None]`` int32 batches:
    traced once, whatever the batch size or length (an eager call is ~100x slower)."""
    return tf.function(lambda ids: model(ids, training=False),
                       input_signature=[tf.TensorSpec([None, None], tf.int32)])


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
