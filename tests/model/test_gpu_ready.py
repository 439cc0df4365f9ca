"""GPU-ready training, checked on the CPU: the LSTM as configured keeps every condition of the
cuDNN kernel, mixed precision keeps the softmax in float32 and saves a float32 model, and the
global batch grows with the replicas of a MirroredStrategy."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from senti.config import ModelParams, TrainParams, load_params
from senti.inference import pad_batch
from senti.model import build_model, dtype_policy
from senti.train import distribution_strategy, make_dataset
from tests.conftest import REPO

TINY = ModelParams(embed_dim=8, lstm_units=4, dropout=0.1, spatial_dropout=0.1, maxlen=32)


def _train_params(**changes) -> TrainParams:
    base = dict(epochs=1, batch_size=16, learning_rate=0.01, weight_decay=0.0,
                label_smoothing=0.0, token_dropout=0.0, adversarial_eps=0.0, patience=1,
                lr_plateau_factor=1.0, class_weights=False, bucketed_batches=True, seed=3,
                deterministic=True, mixed_precision=False)
    return TrainParams(**{**base, **changes})


def _split(rng: np.random.Generator, n: int, maxlen: int = 12):
    return [list(rng.integers(2, 50, size=rng.integers(1, maxlen))) for _ in range(n)], \
        rng.integers(0, 2, size=n)


def _assert_right_padded(batch: np.ndarray) -> None:
    """What cuDNN needs of a mask: each row's tokens first, then only padding; no row empty."""
    mask = batch != 0
    lengths = mask.sum(axis=1)
    assert lengths.min() >= 1, "a row is all padding"
    np.testing.assert_array_equal(mask, np.arange(batch.shape[1]) < lengths[:, None])


def test_the_configured_lstm_keeps_every_cudnn_condition():
    head = build_model(50, 2, load_params(REPO).model).get_layer("bilstm_attention")
    bilstm = head.get_layer("bilstm")
    for lstm in (bilstm.forward_layer, bilstm.backward_layer):
        config = lstm.get_config()
        assert (config["activation"], config["recurrent_activation"]) == ("tanh", "sigmoid")
        assert config["recurrent_dropout"] == 0
        assert config["unroll"] is False and config["use_bias"] is True
        assert lstm.use_cudnn in ("auto", True)


def test_training_and_inference_batches_are_right_padded_and_never_empty():
    rng = np.random.default_rng(0)
    seqs, labels = _split(rng, 200, maxlen=32)
    for bucketed in (True, False):
        for ids, _ in make_dataset(seqs, labels, 2, 16, maxlen=32, bucketed=bucketed,
                                   shuffle=True, seed=1):
            _assert_right_padded(ids.numpy())
    _assert_right_padded(pad_batch(seqs))


def test_mixed_precision_computes_in_float16_with_a_float32_softmax():
    with dtype_policy(mixed_precision=True):
        model = build_model(50, 2, TINY)
    head = model.get_layer("bilstm_attention")
    assert head.get_layer("bilstm").forward_layer.compute_dtype == "float16"
    assert head.get_layer("bilstm").forward_layer.variable_dtype == "float32"
    assert head.get_layer("probabilities").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # restored on exit
    probabilities = model(np.array([[5, 6, 7, 0]], dtype="int32"))
    assert keras.backend.standardize_dtype(probabilities.dtype) == "float32"


def test_one_cpu_is_the_default_strategy_with_one_replica():
    assert distribution_strategy().num_replicas_in_sync == 1


# Two logical CPUs stand in for two GPUs. TensorFlow fixes its devices when it starts, and a
# second MirroredStrategy in one process collides with the first one's collective ops, so
# the trainings run in a process of their own, one after the other on one strategy.
_TWO_REPLICAS = """
import json, sys
from pathlib import Path
import keras
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from senti.train import train_model
from tests.model.test_gpu_ready import TINY, _train_params
rng = np.random.default_rng(0)
data = [list(rng.integers(2, 50, size=8)) for _ in range(128)], rng.integers(0, 2, size=128)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for number, changes in enumerate(json.loads(sys.argv[2])):
    model, history = train_model(data, data, 50, 2, TINY, _train_params(**changes),
                                 Path(sys.argv[1]) / str(number), "test", strategy=strategy)
    head = model.get_layer("bilstm_attention")
    print(json.dumps({
        "losses": history["loss"] + history["val_loss"],
        "policies": sorted({layer.dtype_policy.name for layer in model.layers + head.layers}),
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if getattr(model, "optimizer", None) else None}))  # a float32 copy was never compiled
"""


def _train_on_two_replicas(backups: Path, *changes: dict) -> list[dict]:
    """One training per ``changes`` (to the test's train params), each on two replicas."""
    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, str(backups),
                           json.dumps(changes)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(changes), done.stdout  # Keras prints its progress there too
    return results


@pytest.mark.slow
def test_two_replicas_split_the_global_batch_and_train_adversarially_in_mixed_precision(
        tmp_path):
    # plain, then the adversarial step's loss scaling and summed gradients, all-reduced
    # across replicas, in mixed precision
    plain, mixed = _train_on_two_replicas(tmp_path, {}, {"mixed_precision": True,
                                                         "adversarial_eps": 0.05})
    # 128 texts of one length, 16 per replica, 2 replicas: 4 steps of 32 texts an epoch, not 8
    # of 16 (TensorFlow's distributed iterator may close an epoch with one empty step: 5)
    assert plain["steps"] in (4, 5)
    assert mixed["policies"] == ["float32"]  # the classifier returned is float32
    assert all(math.isfinite(v) for v in mixed["losses"])
