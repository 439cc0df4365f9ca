"""The classifier: Embedding -> BiLSTM -> self-attention -> masked avg+max pooling -> softmax.

Everything after the embedding is a nested model (``bilstm_attention``) taking the embedded
tokens and the token ids (for the padding mask), so training can feed it perturbed embeddings
(adversarial training, :mod:`senti.train`). Pure Keras 3 (layers and ``keras.ops`` only) so
it runs under the TensorFlow, JAX or PyTorch backends, and imports nothing of senti but the
type of its params (bench/gpu_check.sh builds it where neither TensorFlow nor jieba exists).
The LSTM keeps every setting the cuDNN kernel needs (tanh/sigmoid, no recurrent dropout, no
unroll, bias on); inputs are right-padded with id 0 and never all padding. The output layer
computes in float32 whatever the global dtype policy, so under mixed precision
(``train.mixed_precision``) the softmax and the loss stay in float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import keras
from keras import layers, ops

if TYPE_CHECKING:
    from senti.config import ModelParams


@keras.saving.register_keras_serializable(package="senti")
class MaskedGlobalMaxPooling1D(layers.Layer):
    """Max over time of the unmasked steps only (Keras' GlobalMaxPooling1D ignores masks)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.max(inputs, axis=1)
        keep = ops.expand_dims(ops.cast(mask, "bool"), -1)
        lowest = ops.full_like(inputs, -1e9)
        return ops.max(ops.where(keep, inputs, lowest), axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="senti")
class PaddingMask(layers.Layer):
    """True where a token id is not padding (id 0)."""

    def call(self, token_ids):
        return ops.not_equal(token_ids, 0)

    def compute_output_shape(self, input_shape):
        return input_shape


@contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[None]:
    """Keras' global dtype policy for the models built inside: ``mixed_float16`` (float16
    compute, float32 variables; the output layer stays float32) or ``float32``. The policy
    in force before is restored on exit."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def build_head(num_classes: int, params: ModelParams) -> keras.Model:
    """Embedded tokens and their ids -> class probabilities (the model minus its embedding)."""
    embedded = keras.Input(shape=(None, params.embed_dim), name="embedded")
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    mask = PaddingMask(name="padding_mask")(token_ids)
    x = layers.SpatialDropout1D(params.spatial_dropout, name="embedding_dropout")(embedded)
    h = layers.Bidirectional(
        layers.LSTM(params.lstm_units, return_sequences=True), name="bilstm")(x, mask=mask)
    attended = layers.Attention(name="self_attention")([h, h], mask=[mask, mask])
    pooled = layers.Concatenate(name="pool")([
        layers.GlobalAveragePooling1D(name="avg_pool")(attended, mask=mask),
        MaskedGlobalMaxPooling1D(name="max_pool")(attended, mask=mask),
    ])
    pooled = layers.Dropout(params.dropout, name="head_dropout")(pooled)
    probabilities = layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(pooled)
    return keras.Model([embedded, token_ids], probabilities, name="bilstm_attention")


def build_model(vocab_size: int, num_classes: int, params: ModelParams) -> keras.Model:
    """The BiLSTM + attention classifier: token ids -> class probabilities."""
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedded = layers.Embedding(vocab_size, params.embed_dim, name="embedding")(token_ids)
    probabilities = build_head(num_classes, params)([embedded, token_ids])
    return keras.Model(token_ids, probabilities, name="senti_bilstm_attention")


def weights_sha256(model: keras.Model) -> str:
    """sha256 over every weight array of ``model`` (dtype, shape and bytes, in layer order):
    equal exactly when two models of one architecture hold bit-identical weights. The hash of
    the ``.keras`` file cannot serve: the file also records when it was saved."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(f"{weights.dtype}{weights.shape}".encode())
        digest.update(weights.tobytes())
    return digest.hexdigest()


def load_model(path: Path | str) -> keras.Model:
    """Load a saved classifier (``.keras`` file) for inference."""
    return keras.saving.load_model(path, compile=False)
