"""Training throughput: samples/second of the model's training step.

``corpus`` (the default): length-bucketed batches against the naive fixed-maxlen pipeline, on
the training split of the last pipeline run (data/processed/), same model size and samples,
side by side in one process under TensorFlow; prints samples/second of each and the ratio.

``--synthetic``: the model of params.yaml (vocabulary of ``vocab.max_size`` ids, the classes of
``data.labels``) trained by plain Keras ``fit`` on random token ids, right-padded to
``model.maxlen``, in batches of ``train.batch_size``; no data files, no adversarial step (that
needs TensorFlow: the real step costs about twice as much). It imports neither TensorFlow
(under ``KERAS_BACKEND=jax`` or ``torch``) nor jieba, so it runs where only JAX is installed:
bench/gpu_check.sh runs it on a GPU and on the CPU. Prints one JSON object.

    python bench/train_throughput.py [--samples 6400]
    KERAS_BACKEND=jax python bench/train_throughput.py --synthetic [--samples N] [--mixed-precision]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import keras
import numpy as np

from senti.config import Params, load_params
from senti.model import build_model, dtype_policy


def corpus_samples_per_second(seqs, y, num_classes, vocab_size, bucketed: bool) -> float:
    from senti.train import make_dataset  # TensorFlow: the corpus measurement only

    params = load_params(".")
    keras.utils.set_random_seed(0)
    model = build_model(vocab_size, num_classes, params.model)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    data = make_dataset(seqs, y, num_classes, params.train.batch_size,
                        maxlen=params.model.maxlen, bucketed=bucketed, shuffle=True, seed=0)
    model.fit(data.take(3), verbose=0)  # build and trace before timing
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return len(seqs) / (time.perf_counter() - started)


def corpus(samples: int) -> dict:
    import pandas as pd

    from senti.config import load_context
    from senti.io import read_json
    from senti.vocab import encode_split, load_vocab

    params, layout = load_context(".")
    tokens = pd.read_parquet(layout.tokens)
    train = tokens[tokens["split"] == "train"].head(samples)
    labels = read_json(layout.labels)
    vocab = load_vocab(layout.vocab)
    seqs, y = encode_split(train["tokens"], train["label"], vocab, params.model.maxlen, labels)
    naive = corpus_samples_per_second(seqs, y, len(labels), len(vocab), bucketed=False)
    bucketed = corpus_samples_per_second(seqs, y, len(labels), len(vocab), bucketed=True)
    lengths = np.array([len(s) for s in seqs])
    return {"samples": len(seqs), "mean_tokens": round(float(lengths.mean()), 1),
            "maxlen": params.model.maxlen,
            "naive_samples_per_s": round(naive, 1),
            "bucketed_samples_per_s": round(bucketed, 1),
            "speedup": round(bucketed / naive, 2)}


def synthetic_batches(params: Params, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` texts of random ids (1..maxlen tokens, right-padded with 0, as the real
    pipeline pads) and one-hot labels, for the vocabulary and classes params.yaml sets."""
    rng = np.random.default_rng(seed)
    maxlen, classes = params.model.maxlen, max(len(params.data.labels), 2)
    lengths = rng.integers(1, maxlen + 1, size=samples)
    ids = rng.integers(2, params.vocab.max_size, size=(samples, maxlen), dtype=np.int32)
    ids[np.arange(maxlen) >= lengths[:, None]] = 0
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, size=samples)]
    return ids, labels


def synthetic(samples: int, mixed_precision: bool) -> dict:
    params = load_params(".")
    batch = params.train.batch_size
    samples = max(samples // batch, 1) * batch  # whole batches: one compiled shape
    ids, labels = synthetic_batches(params, samples, seed=0)
    keras.utils.set_random_seed(0)
    with dtype_policy(mixed_precision):
        model = build_model(params.vocab.max_size, labels.shape[1], params.model)
        model.compile(optimizer=keras.optimizers.AdamW(params.train.learning_rate),
                      loss="categorical_crossentropy")
    warmup = min(3 * batch, samples)
    model.fit(ids[:warmup], labels[:warmup], batch_size=batch, verbose=0)  # compile first
    started = time.perf_counter()
    model.fit(ids, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    return {"backend": keras.backend.backend(),
            "devices": keras.distribution.list_devices(),
            "mixed_precision": mixed_precision,
            "samples": samples, "batch_size": batch, "maxlen": params.model.maxlen,
            "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 1),
            # (bench/gpu_check.sh blocks both imports: a blocked module is None here)
            "imported_tensorflow": sys.modules.get("tensorflow") is not None,
            "imported_jieba": sys.modules.get("jieba") is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None,
                        help="texts to time (default: 6400 corpus, 4096 synthetic)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random token ids, any Keras backend (bench/gpu_check.sh)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="with --synthetic: Keras' mixed_float16 policy")
    args = parser.parse_args()
    if args.synthetic:
        result = synthetic(args.samples or 4096, args.mixed_precision)
    elif args.mixed_precision:
        parser.error("--mixed-precision needs --synthetic")
    else:
        result = corpus(args.samples or 6400)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
