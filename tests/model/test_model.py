"""The Keras model and input pipeline, on tiny shapes."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from senti.config import ModelParams, TrainParams
from senti.inference import COMPILE_AT_BATCH, ForwardPass, bucket_batch, predict_proba
from senti.model import build_model, load_model
from senti.train import AdversarialTraining, bucket_boundaries, make_dataset, train_model
from senti.vocab import build_vocab, encode_split, encode_to_file

PARAMS = ModelParams(embed_dim=8, lstm_units=4, dropout=0.1, spatial_dropout=0.1, maxlen=32)


def test_padding_does_not_change_predictions():
    model = build_model(50, 3, PARAMS)
    short = np.array([[5, 6, 7], [3, 1, 0]], dtype="int32")
    padded = np.pad(short, ((0, 0), (0, 9)))
    np.testing.assert_allclose(model(short), model(padded), atol=1e-6)
    assert model(short).shape == (2, 3)


def test_saved_model_round_trips(tmp_path):
    model = build_model(50, 2, PARAMS)
    model.save(tmp_path / "m.keras")
    x = np.array([[4, 5, 6]], dtype="int32")
    np.testing.assert_allclose(load_model(tmp_path / "m.keras")(x), model(x), atol=1e-6)


def test_bucketed_batches_pad_to_their_own_longest():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(2, 50, size=n)) for n in rng.integers(1, 32, size=300)]
    labels = rng.integers(0, 2, size=300)
    widths = [x.shape[1] for x, _ in make_dataset(seqs, labels, 2, 16, maxlen=32,
                                                     bucketed=True, shuffle=True, seed=1)]
    assert max(widths) <= 32 and min(widths) < 16
    fixed = [x.shape[1] for x, _ in make_dataset(seqs, labels, 2, 16, maxlen=32,
                                                    bucketed=False, shuffle=False, seed=1)]
    assert set(fixed) == {32}
    seen = sum(x.shape[0] for x, _ in make_dataset(seqs, labels, 2, 16, maxlen=32,
                                                      bucketed=True, shuffle=True, seed=1))
    assert seen == 300
    assert bucket_boundaries(128) == [8, 16, 24, 32, 48, 72, 108]


def test_texts_read_from_disk_give_the_batches_of_texts_in_memory(tmp_path):
    """The train stage's input: a split encoded to a file batch by batch and read back
    memory-mapped gives, batch for batch, what the same split encoded in memory gives
    (shuffled, bucketed, with token dropout: every random choice included)."""
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(60)]
    token_lists = [list(rng.choice(words, size=n)) for n in rng.integers(1, 40, size=500)]
    labels = [("negative", "positive")[i] for i in rng.integers(0, 2, size=500)]
    vocab, order = build_vocab(token_lists[:300], 2, 50), ["negative", "positive"]
    in_memory = encode_split(token_lists, labels, vocab, 32, order)
    on_disk = encode_to_file(((token_lists[i:i + 128], labels[i:i + 128])
                              for i in range(0, 500, 128)), vocab, 32, order,
                             tmp_path / "train.int32")
    assert isinstance(on_disk[0].ids, np.memmap)
    assert (tmp_path / "train.int32").stat().st_size == 4 * int(in_memory[0].lengths.sum())
    np.testing.assert_array_equal(on_disk[1], in_memory[1])

    def batches(texts, classes):
        return [(x.numpy(), y.numpy()) for x, y in make_dataset(
            texts, classes, 2, 16, maxlen=32, bucketed=True, shuffle=True, seed=5,
            token_dropout=0.2)]
    for (x, y), (x_disk, y_disk) in zip(batches(*in_memory), batches(*on_disk), strict=True):
        np.testing.assert_array_equal(x, x_disk)
        np.testing.assert_array_equal(y, y_disk)
    empty = encode_to_file([], vocab, 32, order, tmp_path / "empty.int32")
    assert len(empty[0]) == 0 and empty[1].size == 0


def test_sequences_longer_than_maxlen_are_rejected():
    with pytest.raises(ValueError, match=r"1\.\.maxlen"):
        make_dataset([[1] * 40], np.array([0]), 2, 4, maxlen=32, bucketed=True,
                     shuffle=False, seed=0)


def test_predict_proba_keeps_input_order():
    model = build_model(50, 2, PARAMS)
    seqs = [[5, 6, 7, 8, 9], [3], [4, 4]]
    batched = predict_proba(model, seqs, batch_size=2)
    one_by_one = np.concatenate([predict_proba(model, [s]) for s in seqs])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_bucketed_batches_take_few_shapes_and_repeat_the_first_text():
    batch = bucket_batch([[5] * 33, [3], [4, 4]])
    assert batch.shape == (4, 64)  # rows to a power of two, length to a multiple of 32
    assert batch[:, 33:].sum() == 0 and (batch[3] == batch[0]).all()
    assert bucket_batch([[1] * 32]).shape == (1, 32)


def test_the_served_forward_pass_gives_the_evaluated_probabilities_before_and_after_xla():
    model = build_model(50, 2, PARAMS)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 50, size=n)) for n in (1, 7, 32, 33, 3)]
    served = ForwardPass(model)
    answers = [served(seqs)]  # the traced graph: no XLA asked for
    served.use_xla()
    for _ in range(COMPILE_AT_BATCH - 1):
        served(seqs[:1])  # shape (1, 32): met too few times to be compiled
    answers += [served(seqs) for _ in range(COMPILE_AT_BATCH)]  # (8, 64): the last queues it
    deadline = time.monotonic() + 120
    while not served.compiled_shapes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.compiled_shapes == {(8, 64)}  # rows to a power of two, length to 32s
    answers.append(served(seqs))  # XLA-compiled
    for answer in answers:
        np.testing.assert_allclose(answer, predict_proba(model, seqs), atol=1e-5)


@pytest.mark.slow  # trains
def test_lr_plateau_factor_cuts_the_rate_after_each_epoch_without_val_gain(tmp_path):
    rng = np.random.default_rng(0)  # random labels: memorising them makes val loss go up

    def split(n):
        return [list(rng.integers(2, 50, size=8)) for _ in range(n)], rng.integers(0, 2, size=n)

    train_params = TrainParams(epochs=4, batch_size=16, learning_rate=0.05, weight_decay=0.0,
                               label_smoothing=0.0, token_dropout=0.0, adversarial_eps=0.0,
                               patience=10,
                               lr_plateau_factor=0.5, class_weights=False,
                               bucketed_batches=True, seed=3, deterministic=True,
                               mixed_precision=False)
    model, history = train_model(split(128), split(64), 50, 2, PARAMS, train_params,
                                 tmp_path / "backup", "test")
    best, cuts = float("inf"), 0
    for loss in history["val_loss"]:
        cuts += loss >= best - 1e-4  # Keras' default min_delta
        best = min(best, loss)
    assert cuts >= 1
    final_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert final_rate == pytest.approx(0.05 * 0.5 ** cuts, rel=1e-5)


def _tiny_split(rng, n):
    return [list(rng.integers(2, 50, size=rng.integers(1, 12))) for _ in range(n)], \
        rng.integers(0, 2, size=n)


def test_adversarial_perturbation_has_norm_eps_per_text_and_raises_the_loss():
    keras.utils.set_random_seed(0)
    model = build_model(50, 2, PARAMS)
    trainer = AdversarialTraining(model, eps=0.05)
    trainer.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy())
    assert len(trainer.trainable_variables) == len(model.trainable_variables)
    token_ids = tf.constant([[5, 6, 7, 0], [8, 9, 0, 0], [3, 4, 5, 6]], dtype=tf.int32)
    y = tf.one_hot([0, 1, 1], 2)
    _, _, gradients, perturbation = trainer.clean_pass(token_ids, y)
    assert len(gradients) == len(model.trainable_variables)
    norms = tf.norm(tf.reshape(perturbation, [3, -1]), axis=1)
    np.testing.assert_allclose(norms, 0.05, rtol=1e-4)
    np.testing.assert_array_equal(perturbation.numpy()[1, 2:], 0)  # padding untouched
    head, embedded = model.get_layer("bilstm_attention"), model.get_layer("embedding")(token_ids)
    loss_fn = keras.losses.CategoricalCrossentropy()
    clean = loss_fn(y, head([embedded, token_ids], training=False))
    pushed = loss_fn(y, head([embedded + perturbation, token_ids], training=False))
    assert float(pushed) > float(clean)


@pytest.mark.slow  # trains
def test_adversarial_training_returns_the_plain_classifier(tmp_path):
    rng = np.random.default_rng(0)
    base = dict(epochs=2, batch_size=16, learning_rate=0.01, weight_decay=0.0,
                label_smoothing=0.0, token_dropout=0.0, patience=5, lr_plateau_factor=1.0,
                class_weights=True, bucketed_batches=True, seed=3, deterministic=True,
                mixed_precision=False)
    train, val = _tiny_split(rng, 96), _tiny_split(rng, 32)
    plain, _ = train_model(train, val, 50, 2, PARAMS, TrainParams(**base, adversarial_eps=0.0),
                           tmp_path / "b1", "test")
    model, history = train_model(train, val, 50, 2, PARAMS,
                                 TrainParams(**base, adversarial_eps=1.0), tmp_path / "b2", "test")
    assert type(model) is type(plain) and len(history["loss"]) == 2
    assert not np.allclose(model.get_weights()[0], plain.get_weights()[0])  # same seed, other fit
    model.save(tmp_path / "m.keras")
    x = np.array([[4, 5, 6]], dtype="int32")
    np.testing.assert_allclose(load_model(tmp_path / "m.keras")(x), model(x), atol=1e-6)
