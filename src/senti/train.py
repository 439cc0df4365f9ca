"""Train: the tf.data input pipeline and the Keras training loop.

Batches are padded to their own longest text (length-bucketed), not to ``maxlen``: texts
average ~46 tokens here, so fixed padding to 128 would spend most compute on padding.
Training resumes from its last epoch after an interruption (``BackupAndRestore``).
With ``train.adversarial_eps`` > 0 every step also trains on the embeddings pushed, text by
text, a distance ``eps`` in the direction that most increases the loss (Miyato et al. 2017,
"Adversarial Training Methods for Semi-Supervised Text Classification"), the one lever that
gained the BiLSTM more than its seed spread here (docs/benchmarks.md). That step uses
TensorFlow's ``GradientTape``, so it needs the TensorFlow backend; the model stays neutral.

On a machine with several GPUs training is data-parallel (``MirroredStrategy``) and
``train.batch_size`` is the batch of each GPU; ``train.mixed_precision`` computes in float16
where it is safe (the float32 classifier is what is returned and saved).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from senti.config import ModelParams, TrainParams
from senti.io import sha256_bytes
from senti.model import build_model, dtype_policy
from senti.vocab import OOV_ID, EncodedTexts

_BACKUP_FINGERPRINT = "config.sha256"
READ_ROWS = 256  # texts the input pipeline reads from its EncodedTexts at a time


def bucket_boundaries(maxlen: int) -> list[int]:
    """Sequence-length bucket edges, roughly geometric, below ``maxlen``."""
    edges, edge = [], 8
    while edge < maxlen:
        edges.append(edge)
        edge = edge + 8 if edge < 32 else int(edge * 1.5)
    return edges


def make_dataset(
    sequences: Sequence[Sequence[int]], labels: np.ndarray, num_classes: int, batch_size: int,
    *, maxlen: int, bucketed: bool, shuffle: bool, seed: int, token_dropout: float = 0.0,
) -> tf.data.Dataset:
    """Batches of (right-padded token ids, one-hot labels).

    ``bucketed`` groups texts of similar length and pads each batch to its longest text;
    otherwise every batch is padded to ``maxlen`` (the naive pipeline, kept for benchmarks).
    ``token_dropout`` replaces that share of tokens by OOV (training only: it teaches the
    model not to lean on single rare words). Order is preserved when neither shuffling nor
    bucketing. Every random choice (order, bucket mixing, dropped tokens, new ones each epoch)
    follows ``seed``: the same arguments give the same batches in every process, whatever
    the threads of the parallel map do.

    The texts are read from ``sequences`` :data:`READ_ROWS` at a time, in the pipeline's
    order, as it reaches them: an :class:`~senti.vocab.EncodedTexts` memory-mapped from disk
    (:func:`~senti.vocab.encode_to_file`) is never loaded whole, and nothing is copied into
    the graph. Lists of ids are converted to one in memory first.
    """
    texts = (sequences if isinstance(sequences, EncodedTexts)
             else EncodedTexts.from_lists(sequences))
    if texts.lengths.size and (texts.lengths.min() < 1 or texts.lengths.max() > maxlen):
        raise ValueError("sequences must hold 1..maxlen ids (see Vocabulary.encode)")
    onehot = tf.one_hot(tf.constant(labels, dtype=tf.int32), num_classes)

    def read(indices):  # one Python call per READ_ROWS texts, not per text
        ids, lengths = tf.numpy_function(texts.gather, [indices], (tf.int32, tf.int64),
                                         stateful=False)
        ids.set_shape([None, None])
        lengths.set_shape([None])
        return ids, lengths, tf.gather(onehot, indices)

    def element(padded, length, label):
        return padded[:length], label

    def drop_tokens(read_element, draw):
        ids, label = element(*read_element)
        noise = tf.random.stateless_uniform(
            tf.shape(ids), seed=[tf.constant(seed, tf.int64), draw])
        return tf.where(noise < token_dropout, tf.constant(OOV_ID, tf.int32), ids), label

    ds = tf.data.Dataset.range(len(texts))
    if shuffle:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(READ_ROWS).map(read, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=True).unbatch()
    if token_dropout > 0:
        # One draw per text and epoch, taken in the pipeline's order, seeds a stateless mask:
        # a stateful random op in the parallel map would hand each text whichever number
        # its thread reached first (different weights on every run).
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(
            drop_tokens, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if bucketed:
        edges = bucket_boundaries(maxlen)
        ds = ds.bucket_by_sequence_length(
            lambda ids, _: tf.shape(ids)[0], edges, [batch_size] * (len(edges) + 1))
        if shuffle:  # mix buckets, so consecutive steps do not all see one length
            ds = ds.shuffle(64, seed=seed, reshuffle_each_iteration=True)
    else:
        ds = ds.padded_batch(batch_size, padded_shapes=([maxlen], [num_classes]))
    return ds.prefetch(tf.data.AUTOTUNE)


class AdversarialTraining(keras.Model):
    """Trains ``classifier`` on each batch and on its adversarial perturbation.

    The loss is L(e) + L(e + r), where e are the batch's embedded tokens and r, per text, has
    L2 norm ``eps`` along the gradient of L at e (treated as a constant). Weights are the
    classifier's own: once fitted, use ``classifier``; this wrapper is never saved.
    """

    def __init__(self, classifier: keras.Model, eps: float, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("train.adversarial_eps > 0 needs the TensorFlow backend "
                               f"(KERAS_BACKEND is {keras.backend.backend()!r}); set it to 0")
        self.classifier = classifier
        self.eps = eps
        self.built = True  # its only weights are the (built) classifier's

    @property
    def embedding(self) -> keras.layers.Layer:
        return self.classifier.get_layer("embedding")

    @property
    def head(self) -> keras.Model:
        return self.classifier.get_layer("bilstm_attention")

    def call(self, token_ids, training=False):
        return self.classifier(token_ids, training=training)

    def _loss(self, token_ids, y, y_pred, sample_weight):
        return self.compute_loss(x=token_ids, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=True)

    def clean_pass(self, token_ids, y, sample_weight=None):
        """One forward/backward pass on the batch as it is: (predictions, loss, the loss's
        gradients for the trainable variables, the adversarial perturbation of the embedded
        batch: per text of L2 norm ``eps`` along the gradient of the loss).

        Gradients are of the optimizer's scaled loss (under mixed precision a
        ``LossScaleOptimizer`` scales it so float16 gradients do not underflow, and unscales
        them in ``apply``; otherwise the scale is 1). The perturbation is normalised in
        float32 and has the embeddings' dtype."""
        with tf.GradientTape() as tape:
            embedded = self.embedding(token_ids)
            y_pred = self.head([embedded, token_ids], training=True)
            loss = self._loss(token_ids, y, y_pred, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        *gradients, direction = tape.gradient(scaled, [*self.trainable_variables, embedded])
        direction = tf.cast(direction, tf.float32)
        norm = tf.sqrt(tf.reduce_sum(tf.square(direction), axis=[1, 2], keepdims=True))
        return (y_pred, loss, gradients,
                tf.cast(self.eps * direction / (norm + 1e-12), embedded.dtype))

    def train_step(self, data):
        token_ids, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, loss, gradients, perturbation = self.clean_pass(token_ids, y, sample_weight)
        with tf.GradientTape() as tape:  # the perturbation is a constant here
            perturbed = self.embedding(token_ids) + perturbation
            adversarial_loss = self.optimizer.scale_loss(self._loss(
                token_ids, y, self.head([perturbed, token_ids], training=True), sample_weight))
        adversarial_gradients = tape.gradient(adversarial_loss, self.trainable_variables)
        self.optimizer.apply(
            [tf.convert_to_tensor(g) + tf.convert_to_tensor(a)
             for g, a in zip(gradients, adversarial_gradients, strict=True)],
            self.trainable_variables)
        # compute_loss divides by the replica count under a distribution strategy.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss * replicas)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        return {metric.name: metric.result() for metric in self.metrics}


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (k * count_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return {c: float(len(labels) / (num_classes * n)) if n else 0.0 for c, n in enumerate(counts)}


def distribution_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` (one replica per GPU, gradients all-reduced every step) when more
    than one GPU is visible; otherwise the default strategy, which runs on the one GPU if
    there is one, else on the CPU. One machine only: see docs/architecture.md for why
    TensorFlow's multi-worker strategy is not used."""
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def float32_copy(model: keras.Model, vocab_size: int, num_classes: int,
                 params: ModelParams) -> keras.Model:
    """The classifier rebuilt with float32 compute and ``model``'s weights (its variables are
    float32 under mixed precision too): what is saved and served, on any hardware."""
    with dtype_policy(mixed_precision=False):
        rebuilt = build_model(vocab_size, num_classes, params)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _prepare_backup_dir(backup_dir: Path, fingerprint: str) -> None:
    """Keep a resumable backup only if it was made by this exact configuration and data."""
    marker = backup_dir / _BACKUP_FINGERPRINT
    if backup_dir.exists() and (not marker.exists() or marker.read_text() != fingerprint):
        shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def train_model(
    train: tuple[Sequence[Sequence[int]], np.ndarray],
    val: tuple[Sequence[Sequence[int]], np.ndarray],
    vocab_size: int, num_classes: int,
    model_params: ModelParams, train_params: TrainParams,
    backup_dir: Path, data_fingerprint: str, initial_embedding: np.ndarray | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Fit the classifier with early stopping on validation loss; return (model, history).

    ``initial_embedding`` (``vocab_size`` x ``embed_dim``, e.g. word2vec vectors from
    :mod:`senti.embeddings`) replaces the random initial embedding. The best epoch's weights
    are kept. ``backup_dir`` holds the state of an unfinished run:
    started again with the same configuration and data, training resumes where it stopped.

    With ``train_params.deterministic`` TensorFlow's op determinism is on: the same inputs,
    params and seed give bit-identical weights on the same kind of machine, however loaded
    (an uninterrupted run, that is: a resumed one starts its data order afresh).

    ``strategy`` defaults to :func:`distribution_strategy`. Each step takes
    ``train_params.batch_size`` texts per replica (the global batch is that times the
    replicas); the learning rate is not rescaled.
    """
    keras.utils.set_random_seed(train_params.seed)  # Python, NumPy, TensorFlow and Keras
    if train_params.deterministic:  # for the rest of the process: TF cannot switch it off
        tf.config.experimental.enable_op_determinism()
    config = {"model": model_params.model_dump(), "train": train_params.model_dump(),
              "data": data_fingerprint, "vocab_size": vocab_size, "classes": num_classes}
    _prepare_backup_dir(backup_dir, sha256_bytes(json.dumps(config, sort_keys=True).encode()))
    strategy = strategy or distribution_strategy()
    global_batch = train_params.batch_size * strategy.num_replicas_in_sync

    def batches(split, training):
        return make_dataset(split[0], split[1], num_classes, global_batch,
                            maxlen=model_params.maxlen, bucketed=train_params.bucketed_batches,
                            shuffle=training, seed=train_params.seed,
                            token_dropout=train_params.token_dropout if training else 0.0)

    with strategy.scope(), dtype_policy(train_params.mixed_precision):
        model = build_model(vocab_size, num_classes, model_params)
        if initial_embedding is not None:
            expected = (vocab_size, model_params.embed_dim)
            if initial_embedding.shape != expected:
                raise ValueError(f"initial embedding has shape {initial_embedding.shape}, "
                                 f"the model needs {expected}: rebuild it for this vocabulary")
            model.get_layer("embedding").set_weights([initial_embedding])
        trainer = (AdversarialTraining(model, train_params.adversarial_eps)
                   if train_params.adversarial_eps > 0 else model)
        trainer.compile(
            optimizer=keras.optimizers.AdamW(train_params.learning_rate,
                                             weight_decay=train_params.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(
                label_smoothing=train_params.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=train_params.patience,
                                      restore_best_weights=True),
        keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=True),
    ]
    if train_params.lr_plateau_factor < 1:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=train_params.lr_plateau_factor, patience=0))
    weights = (balanced_class_weights(train[1], num_classes)
               if train_params.class_weights else None)
    history = trainer.fit(batches(train, True), validation_data=batches(val, False),
                          epochs=train_params.epochs, callbacks=callbacks,
                          class_weight=weights, verbose=2)
    shutil.rmtree(backup_dir, ignore_errors=True)
    if train_params.mixed_precision:
        model = float32_copy(model, vocab_size, num_classes, model_params)
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}
