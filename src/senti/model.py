"""The classifier: Embedding -> BiLSTM -> self-attention -> masked avg+max pooling -> softmax.

Pure Keras 3 (layers and ``keras.ops`` only) so it runs under the TensorFlow, JAX or PyTorch
backends. The LSTM keeps every setting the cuDNN kernel needs (tanh/sigmoid, no recurrent
dropout, no unroll, bias on); inputs are right-padded with id 0 and never all padding.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

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


def build_model(vocab_size: int, num_classes: int, params: ModelParams) -> keras.Model:
    """The BiLSTM + attention classifier; outputs class probabilities."""
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = layers.Embedding(vocab_size, params.embed_dim, mask_zero=True, name="embedding")(token_ids)
    x = layers.SpatialDropout1D(params.spatial_dropout, name="embedding_dropout")(x)
    h = layers.Bidirectional(
        layers.LSTM(params.lstm_units, return_sequences=True), name="bilstm")(x)
    attended = layers.Attention(name="self_attention")([h, h])  # query/value masks from h
    pooled = layers.Concatenate(name="pool")([
        layers.GlobalAveragePooling1D(name="avg_pool")(attended),
        MaskedGlobalMaxPooling1D(name="max_pool")(attended),
    ])
    pooled = layers.Dropout(params.dropout, name="head_dropout")(pooled)
    probabilities = layers.Dense(num_classes, activation="softmax", name="probabilities")(pooled)
    return keras.Model(token_ids, probabilities, name="senti_bilstm_attention")


def load_model(path: Path | str) -> keras.Model:
    """Load a saved classifier (``.keras`` file) for inference."""
    return keras.saving.load_model(path, compile=False)
