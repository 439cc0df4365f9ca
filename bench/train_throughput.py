"""Training throughput: length-bucketed batches vs the naive fixed-maxlen pipeline.

Same data (the training split of the last pipeline run), same model size, same number of
samples, measured side by side in one process; prints samples/second of each and the ratio.

    python bench/train_throughput.py [--samples 6400]
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np
import pandas as pd

from senti.config import load_context, load_params
from senti.model import build_model
from senti.train import make_dataset
from senti.vocab import encode_split, load_vocab


def samples_per_second(seqs, y, num_classes, vocab_size, bucketed: bool) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6400)
    args = parser.parse_args()
    params, layout = load_context(".")
    tokens = pd.read_parquet(layout.tokens)
    train = tokens[tokens["split"] == "train"].head(args.samples)
    labels = json.loads(layout.labels.read_text())
    vocab = load_vocab(layout.vocab)
    seqs, y = encode_split(train["tokens"], train["label"], vocab, params.model.maxlen, labels)
    naive = samples_per_second(seqs, y, len(labels), len(vocab), bucketed=False)
    bucketed = samples_per_second(seqs, y, len(labels), len(vocab), bucketed=True)
    lengths = np.array([len(s) for s in seqs])
    print(json.dumps({"samples": len(seqs), "mean_tokens": round(float(lengths.mean()), 1),
                      "maxlen": params.model.maxlen,
                      "naive_samples_per_s": round(naive, 1),
                      "bucketed_samples_per_s": round(bucketed, 1),
                      "speedup": round(bucketed / naive, 2)}))


if __name__ == "__main__":
    main()
