"""Deterministic training: the same data, params and seed give the same batches. (That a
retrain in another process, on a loaded CPU, gives bit-identical weights and predictions is
tests/integration/test_reproduce.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from senti.config import ParamsError, apply_overrides, load_params, parse_overrides
from senti.train import make_dataset
from senti.vocab import OOV_ID
from tests.conftest import REPO


def _epochs(seqs, labels, seed: int, epochs: int = 2) -> list[np.ndarray]:
    """Every token id the training pipeline yields, epoch by epoch, in order."""
    data = make_dataset(seqs, labels, 2, 16, maxlen=32, bucketed=True, shuffle=True, seed=seed,
                        token_dropout=0.3)
    return [np.concatenate([ids.numpy().ravel() for ids, _ in data]) for _ in range(epochs)]


def test_batches_and_dropped_tokens_follow_the_seed_not_the_threads():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(2, 50, size=n)) for n in rng.integers(1, 32, size=600)]
    labels = rng.integers(0, 2, size=600)
    first, again, other = _epochs(seqs, labels, 1), _epochs(seqs, labels, 1), _epochs(
        seqs, labels, 2)
    for epoch, repeat in zip(first, again, strict=True):  # a fresh pipeline, the same batches
        np.testing.assert_array_equal(epoch, repeat)
    assert not np.array_equal(first[0], first[1])  # another order and other drops each epoch
    assert not np.array_equal(first[0], other[0])  # another seed, other batches
    tokens = first[0][first[0] != 0]  # padding aside; no text holds OOV before dropout
    assert np.mean(tokens == OOV_ID) == pytest.approx(0.3, abs=0.03)


def test_deterministic_is_true_or_false():
    with pytest.raises(ParamsError, match=r"^train\.deterministic: expected true/false, got 1$"):
        apply_overrides(load_params(REPO).raw, parse_overrides(["train.deterministic=1"]))
