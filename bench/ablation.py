"""Ablation: BiLSTM variants vs the TF-IDF + LinearSVC baseline on the pipeline's own split.

Reads the prepared tokens of the last pipeline run (data/processed/tokens.parquet), trains each
variant with the library's training code and reports test accuracy / macro-F1 next to the
baseline trained on the same split in the same run. With several ``--seeds`` every variant is
trained once per seed and reported as mean and standard deviation (a single seed moves test
accuracy by about a point here). ``--ensembles a+b`` adds rows for the average of the listed
variants' probabilities, seed by seed. Every variant starts from word2vec vectors learnt on
its own token view of the training texts and the extra corpus (``embeddings`` in params.yaml),
as the pipeline does, unless its spec turns that off.

    python bench/ablation.py [--variants NAME ...] [--seeds N ...] [--ensembles A+B ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from senti import evaluate as ev
from senti.config import load_context, load_params
from senti.embeddings import initial_embedding
from senti.inference import predict_proba
from senti.stages.embeddings import extra_corpus
from senti.train import train_model
from senti.vocab import build_vocab, encode_split

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
    "rare_words_as_chars": {"tokens": "rare_as_chars"},
    "lr_plateau_0.3": {"train": {"lr_plateau_factor": 0.3, "patience": 3}},
    "class_weights": {"train": {"class_weights": True}},
    "no_label_smoothing": {"train": {"label_smoothing": 0.0}},
    "label_smoothing_0.15": {"train": {"label_smoothing": 0.15}},
    "min_freq_1": {"vocab": {"min_freq": 1}},
    "vocab_10k": {"vocab": {"max_size": 10000}},
    "no_adversarial": {"train": {"adversarial_eps": 0.0}},
    "adversarial_0.5": {"train": {"adversarial_eps": 0.5}},
    "adversarial_1.5": {"train": {"adversarial_eps": 1.5}},
    "adversarial_2.5": {"train": {"adversarial_eps": 2.5}},
    "batch_128": {"train": {"batch_size": 128, "learning_rate": 0.002}},
    "spatial_dropout_0.4": {"model": {"spatial_dropout": 0.4}},
    "spatial_dropout_0.2": {"model": {"spatial_dropout": 0.2}},
    "spatial_dropout_0.1": {"model": {"spatial_dropout": 0.1}},
    "spatial_dropout_0.0": {"model": {"spatial_dropout": 0.0}},
    "no_pretraining": {"embeddings": {"epochs": 0}},
    "skipgram_train_texts_only": {"embeddings": {"architecture": "skipgram", "extra_corpus": ""}},
    "skipgram_5_epochs": {"embeddings": {"architecture": "skipgram", "epochs": 5}},
    "skipgram": {"embeddings": {"architecture": "skipgram"}},
    "skipgram_downsample_1e-5": {"embeddings": {"architecture": "skipgram", "downsample": 1e-5}},
}


def token_view(frame: pd.DataFrame, mode: str) -> pd.Series:
    """The token sequences a variant trains on, derived from the pipeline's jieba tokens."""
    if mode == "chars":
        return frame["text"].map(lambda t: [c for c in t if not c.isspace()])
    if mode == "char_bigrams":
        return frame["text"].map(lambda t: [t[i:i + 2] for i in range(max(len(t) - 1, 1))])
    if mode == "rare_as_chars":  # words seen < 2 times in training are spelled out in chars
        counts = Counter(t for tokens in frame.loc[frame["split"] == "train", "tokens"]
                         for t in tokens)
        return frame["tokens"].map(lambda ts: [u for t in ts
                                               for u in ([t] if counts[t] >= 2 else list(t))])
    if mode == "both":
        return frame.apply(lambda r: list(r["tokens"]) + [c for c in r["text"]
                                                         if not c.isspace()], axis=1)
    return frame["tokens"].map(list)


def run_variant(name: str, spec: dict, tokens: pd.DataFrame, extra: pd.DataFrame,
                labels: list[str], seed: int) -> tuple[dict, np.ndarray]:
    """Train one variant with one seed; its result row and its test probabilities.
    ``extra`` is the segmented extra corpus of the word vectors (split "extra")."""
    params = load_params(".")
    model_p = params.model.model_copy(update=spec.get("model", {}))
    train_p = params.train.model_copy(update={**spec.get("train", {}), "seed": seed})
    embed_p = params.embeddings.model_copy(update=spec.get("embeddings", {}))
    if not embed_p.extra_corpus:
        extra = extra.iloc[:0]
    frame = pd.concat([tokens, extra], ignore_index=True)
    frame = frame.assign(tokens=token_view(frame, spec.get("tokens", "words")))
    split = {s: frame[frame["split"] == s] for s in ("train", "val", "test", "extra")}
    vocab_p = params.vocab.model_copy(update=spec.get("vocab", {}))
    vocab = build_vocab(split["train"]["tokens"], vocab_p.min_freq, vocab_p.max_size)
    enc = {s: encode_split(split[s]["tokens"], split[s]["label"], vocab, model_p.maxlen, labels)
           for s in ("train", "val", "test")}
    started = time.perf_counter()
    sentences = [*map(list, split["train"]["tokens"]), *map(list, split["extra"]["tokens"])]
    embedding, _ = initial_embedding(sentences, vocab.tokens, embed_p, model_p.embed_dim, seed)
    with tempfile.TemporaryDirectory() as backup:
        model, history = train_model(enc["train"], enc["val"], len(vocab), len(labels),
                                     model_p, train_p, Path(backup) / "b", name,
                                     initial_embedding=embedding)
    seconds = time.perf_counter() - started
    proba = predict_proba(model, enc["test"][0])
    metrics = ev.classification_metrics(enc["test"][1], proba, labels)
    return {"variant": name, "seed": seed, "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "epochs": len(history["loss"]),
            "train_seconds": round(seconds)}, proba


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: mean (and standard deviation over seeds) of each measure."""
    table = runs.groupby("variant", sort=False).agg(
        seeds=("seed", "count"), accuracy=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
        macro_f1=("macro_f1", "mean"), macro_f1_sd=("macro_f1", "std"),
        epochs=("epochs", "mean"), train_seconds=("train_seconds", "mean"))
    return table.reset_index().round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=None,
                        help="training seeds (default: train.seed of params.yaml)")
    parser.add_argument("--ensembles", nargs="*", default=[],
                        help="variants joined by '+' whose probabilities are averaged")
    args = parser.parse_args()
    for ensemble in args.ensembles:
        if unknown := set(ensemble.split("+")) - set(args.variants):
            parser.error(f"ensemble {ensemble}: {sorted(unknown)} not among --variants")
    params, layout = load_context(".")
    tokens = pd.read_parquet(layout.tokens)
    extra = extra_corpus(params, layout).assign(split="extra", label=None)
    labels = json.loads(layout.labels.read_text())
    index = {label: i for i, label in enumerate(labels)}
    train, test = tokens[tokens["split"] == "train"], tokens[tokens["split"] == "test"]
    baseline = ev.train_baseline(train["text"].tolist(), train["label"].map(index).to_numpy(),
                                 params.evaluate)
    base = ev.classification_metrics(test["label"].map(index).to_numpy(),
                                     ev.baseline_scores(baseline, test["text"].tolist()), labels)
    y_test = test["label"].map(index).to_numpy()
    rows, probas = [], {}
    for seed in args.seeds or [params.train.seed]:
        for name in args.variants:
            row, probas[name, seed] = run_variant(name, VARIANTS[name], tokens, extra, labels,
                                                  seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
        for ensemble in args.ensembles:
            proba = np.mean([probas[name, seed] for name in ensemble.split("+")], axis=0)
            metrics = ev.classification_metrics(y_test, proba, labels)
            rows.append({"variant": f"ensemble {ensemble}", "seed": seed,
                         "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
            print(json.dumps(rows[-1]), flush=True)
    print(f"baseline (TF-IDF char 1-3 + LinearSVC): accuracy {base['accuracy']:.4f}  "
          f"macro-F1 {base['macro_f1']:.4f}")
    print(summarize(pd.DataFrame(rows)).to_markdown(index=False))


if __name__ == "__main__":
    main()
