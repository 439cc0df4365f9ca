"""Ablation: BiLSTM variants vs the TF-IDF + LinearSVC baseline on the pipeline's own split.

Reads the prepared tokens of the last pipeline run (data/processed/tokens.parquet), trains each
variant with the library's training code and reports test accuracy / macro-F1 next to the
baseline trained on the same split in the same run.

    python bench/ablation.py [--variants NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from senti import evaluate as ev
from senti.config import Layout, load_params
from senti.stages import encode_split
from senti.train import predict_proba, train_model
from senti.vocab import build_vocab

VARIANTS: dict[str, dict] = {
    "defaults": {},
    "seed_style": {"model": {"spatial_dropout": 0.0, "dropout": 0.0},
                   "train": {"weight_decay": 0.0, "label_smoothing": 0.0,
                             "learning_rate": 0.001}},
    "regularised": {"model": {"embed_dim": 64, "spatial_dropout": 0.4},
                    "train": {"learning_rate": 0.001}},
    "small_strong_decay": {"model": {"embed_dim": 64, "lstm_units": 32, "spatial_dropout": 0.5},
                           "train": {"learning_rate": 0.001, "weight_decay": 0.01}},
    "regularised_token_dropout": {"model": {"embed_dim": 64, "spatial_dropout": 0.4},
                                  "train": {"learning_rate": 0.001, "token_dropout": 0.1}},
    "regularised_min_freq3": {"model": {"embed_dim": 64, "spatial_dropout": 0.4},
                              "train": {"learning_rate": 0.001, "token_dropout": 0.1},
                              "vocab": {"min_freq": 3}},
    "slow_lr": {"model": {"embed_dim": 64, "spatial_dropout": 0.4},
                "train": {"learning_rate": 0.0005, "batch_size": 32, "token_dropout": 0.1}},
    "maxlen_256": {"model": {"maxlen": 256}},
    "char_bigrams": {"tokens": "char_bigrams", "model": {"maxlen": 192}},
    "chars": {"tokens": "chars", "model": {"maxlen": 160}},
    "words_and_chars": {"tokens": "both", "model": {"maxlen": 256}},
}


def token_view(frame: pd.DataFrame, mode: str) -> pd.Series:
    if mode == "chars":
        return frame["text"].map(lambda t: [c for c in t if not c.isspace()])
    if mode == "char_bigrams":
        return frame["text"].map(lambda t: [t[i:i + 2] for i in range(max(len(t) - 1, 1))])
    if mode == "both":
        return frame.apply(lambda r: list(r["tokens"]) + [c for c in r["text"]
                                                         if not c.isspace()], axis=1)
    return frame["tokens"].map(list)


def run_variant(name: str, spec: dict, tokens: pd.DataFrame, labels: list[str]) -> dict:
    params = load_params(".")
    model_p = dataclasses.replace(params.model, **spec.get("model", {}))
    train_p = dataclasses.replace(params.train, **spec.get("train", {}))
    frame = tokens.assign(tokens=token_view(tokens, spec.get("tokens", "words")))
    split = {s: frame[frame["split"] == s] for s in ("train", "val", "test")}
    vocab_p = dataclasses.replace(params.vocab, **spec.get("vocab", {}))
    vocab = build_vocab(split["train"]["tokens"], vocab_p.min_freq, vocab_p.max_size)
    enc = {s: encode_split(f, vocab, model_p.maxlen, labels) for s, f in split.items()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as backup:
        model, history = train_model(enc["train"], enc["val"], len(vocab), len(labels),
                                     model_p, train_p, Path(backup) / "b", name)
    seconds = time.perf_counter() - started
    metrics = ev.classification_metrics(enc["test"][1], predict_proba(model, enc["test"][0]),
                                        labels)
    return {"variant": name, "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4), "epochs": len(history["loss"]),
            "train_seconds": round(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    layout, params = Layout(Path(".")), load_params(".")
    tokens = pd.read_parquet(layout.tokens)
    labels = json.loads(layout.labels.read_text())
    index = {label: i for i, label in enumerate(labels)}
    train, test = tokens[tokens["split"] == "train"], tokens[tokens["split"] == "test"]
    baseline = ev.train_baseline(train["text"].tolist(), train["label"].map(index).to_numpy(),
                                 params.evaluate)
    base = ev.classification_metrics(test["label"].map(index).to_numpy(),
                                     ev.baseline_scores(baseline, test["text"].tolist()), labels)
    rows = [{"variant": "baseline (TF-IDF char 1-3 + LinearSVC)",
             "accuracy": round(base["accuracy"], 4), "macro_f1": round(base["macro_f1"], 4)}]
    for name in args.variants:
        rows.append(run_variant(name, VARIANTS[name], tokens, labels))
        print(json.dumps(rows[-1]), flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
