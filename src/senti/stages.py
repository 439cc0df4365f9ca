"""The DVC pipeline stages: each reads params.yaml and its inputs, calls the library, and
writes its outputs where ``dvc.yaml`` declares them (see :class:`senti.config.Layout`).

Stages are invoked as ``senti stage <name>`` by DVC; they hold no logic of their own beyond
wiring files to library functions.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senti import ingest as ingest_lib
from senti import prepare as prepare_lib
from senti.config import PEOPLES_DAILY, Layout, Params, load_params
from senti.io import atomic_write_bytes, read_json, sha256_file, write_json
from senti.validate import DataValidationError, read_raw_csv, validate_frame, write_report


def _context(root: Path | str) -> tuple[Params, Layout]:
    return load_params(root), Layout(Path(root))


def read_tokens(layout: Layout) -> pd.DataFrame:
    return pd.read_parquet(layout.tokens)


def encode_split(frame: pd.DataFrame, vocab, maxlen: int,
                 labels: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Token ids and class indices of one split."""
    index = {label: i for i, label in enumerate(labels)}
    seqs = [vocab.encode(list(tokens), maxlen) for tokens in frame["tokens"]]
    return seqs, frame["label"].map(index).to_numpy(dtype=np.int64)


def ingest(root: Path | str = ".") -> dict:
    params, layout = _context(root)
    report = ingest_lib.ingest(params.data.source, layout.root, layout.raw_csv)
    write_json(layout.ingest_report, report)
    return report


def validate(root: Path | str = ".") -> dict:
    """Run the data suite on the raw copy; raise :class:`DataValidationError` on failure."""
    params, layout = _context(root)
    report = validate_frame(read_raw_csv(layout.raw_csv), params.validate, params.data.labels,
                            docs_dir=layout.data_docs)
    # Recorded relative to the project, so the report's hash does not depend on the checkout.
    report = dataclasses.replace(report, data_docs=str(layout.data_docs.relative_to(layout.root)
                                                       / "index.html"))
    write_report(report, layout.validation_report)
    if not report.success:
        raise DataValidationError(report)
    return report.to_dict()


def prepare(root: Path | str = ".") -> dict:
    params, layout = _context(root)
    if not read_json(layout.validation_report).get("success"):
        raise RuntimeError(f"{layout.validation_report} records a failed validation: "
                           "fix the data and run the validate stage first")
    dataset, labels, report = prepare_lib.prepare(
        read_raw_csv(layout.raw_csv), params.data.labels, params.data.sample_size,
        params.data.val_fraction, params.data.test_fraction)
    for split, counts in report["splits"].items():
        if sum(counts.values()) == 0:
            raise ValueError(f"the {split} split is empty after cleaning: "
                             f"{report['counts']['rows_sampled']} rows are too few")
    layout.dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(layout.dataset, index=False)
    write_json(layout.labels, labels)
    write_json(layout.prepare_report, report)
    return report


def _user_dict(params: Params, layout: Layout) -> Path | None:
    return layout.root / params.segment.user_dict if params.segment.user_dict else None


def extra_corpus(params: Params, layout: Layout) -> pd.DataFrame:
    """The unlabelled texts (``embeddings.extra_corpus``) word vectors learn from besides the
    training texts, normalised and segmented as the pipeline's own (columns text, tokens)."""
    from senti.segment import segment_texts

    if params.embeddings.extra_corpus != PEOPLES_DAILY:
        return pd.DataFrame({"text": [], "tokens": []})
    texts = [t for t in map(prepare_lib.normalise_text, ingest_lib.peoples_daily_texts()) if t]
    return pd.DataFrame({"text": texts, "tokens": segment_texts(
        texts, _user_dict(params, layout), params.segment.workers)})


def segment(root: Path | str = ".") -> dict:
    from senti.segment import jieba_version, segment_texts

    params, layout = _context(root)
    dataset = pd.read_parquet(layout.dataset)
    user_dict = _user_dict(params, layout)
    started = time.perf_counter()
    dataset["tokens"] = segment_texts(dataset["text"].tolist(), user_dict, params.segment.workers)
    seconds = time.perf_counter() - started
    layout.tokens.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(layout.tokens, index=False)
    lengths = dataset["tokens"].map(len).to_numpy()
    report = {
        "rows": len(dataset),
        "tokens_mean": round(float(lengths.mean()), 2),
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p95": int(np.percentile(lengths, 95)),
        "tokens_p99": int(np.percentile(lengths, 99)),
        "jieba_version": jieba_version(),
        "user_dict_sha256": sha256_file(user_dict) if user_dict else None,
    }
    write_json(layout.segment_report, report)
    print(f"segmented {len(dataset)} texts in {seconds:.1f}s "
          f"({dataset['text'].str.len().sum() / seconds / 1e6:.2f} M chars/s)")
    return report


def vocab(root: Path | str = ".") -> dict:
    from senti.vocab import build_vocab, save_vocab

    params, layout = _context(root)
    tokens = read_tokens(layout)
    by_split = {s: tokens.loc[tokens["split"] == s, "tokens"] for s in prepare_lib.SPLITS}
    vocabulary = build_vocab(by_split["train"], params.vocab.min_freq, params.vocab.max_size)
    digest = save_vocab(vocabulary, layout.vocab)
    report = {
        "size": len(vocabulary),
        "sha256": digest,
        "oov_rate": {s: round(vocabulary.oov_rate(by_split[s]), 5) for s in ("val", "test")},
    }
    write_json(layout.vocab_report, report)
    return report


def embeddings(root: Path | str = ".") -> dict:
    """Learn word vectors on the training texts (and the extra corpus) and write the initial
    embedding matrix of the vocabulary."""
    from senti.embeddings import initial_embedding
    from senti.vocab import load_vocab

    params, layout = _context(root)
    tokens, vocabulary = read_tokens(layout), load_vocab(layout.vocab)
    started = time.perf_counter()
    sentences: list[list[str]] = []
    extra = pd.DataFrame({"tokens": []})
    if params.embeddings.epochs:  # with 0 the corpus is not needed
        extra = extra_corpus(params, layout)
        sentences = [*map(list, tokens.loc[tokens["split"] == "train", "tokens"]),
                     *map(list, extra["tokens"])]
    matrix, learnt = initial_embedding(sentences, vocabulary.tokens, params.embeddings,
                                       params.model.embed_dim, params.train.seed)
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    atomic_write_bytes(layout.embeddings, buffer.getvalue())
    report = {
        "pretrained": bool(sentences),
        "corpus_texts": len(sentences),
        "corpus_tokens": sum(map(len, sentences)),
        "extra_corpus": params.embeddings.extra_corpus or None,
        "extra_corpus_texts": len(extra),
        "extra_corpus_sha256": (sha256_file(ingest_lib.peoples_daily_file())
                                if len(extra) else None),
        "vocab_rows_learnt": learnt,
        "vocab_coverage": round(learnt / len(vocabulary), 5),
        "shape": list(matrix.shape),
        "sha256": sha256_file(layout.embeddings),
    }
    write_json(layout.embeddings_report, report)
    print(f"initial embedding {matrix.shape}: {learnt} rows learnt from "
          f"{report['corpus_tokens']} tokens in {time.perf_counter() - started:.0f}s")
    return report


def train(root: Path | str = ".") -> dict:
    from senti.train import train_model
    from senti.vocab import load_vocab

    params, layout = _context(root)
    tokens, vocabulary = read_tokens(layout), load_vocab(layout.vocab)
    labels = read_json(layout.labels)
    splits = {s: encode_split(tokens[tokens["split"] == s], vocabulary, params.model.maxlen,
                              labels) for s in ("train", "val")}
    started = time.perf_counter()
    model, history = train_model(
        splits["train"], splits["val"], len(vocabulary), len(labels), params.model, params.train,
        backup_dir=layout.checkpoints,
        data_fingerprint=sha256_file(layout.tokens) + sha256_file(layout.vocab)
        + sha256_file(layout.embeddings),
        initial_embedding=np.load(layout.embeddings, allow_pickle=False))
    seconds = time.perf_counter() - started
    layout.model_dir.mkdir(parents=True, exist_ok=True)
    model.save(layout.model_file)
    pd.DataFrame(history).rename_axis("epoch").reset_index().to_csv(
        layout.train_history, index=False)
    best = int(np.argmin(history["val_loss"]))
    report = {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": round(history["val_loss"][best], 5),
        "best_val_accuracy": round(history["val_accuracy"][best], 5),
        "train_rows": len(splits["train"][1]),
        "parameters": int(model.count_params()),
    }
    write_json(layout.train_report, report)
    print(f"trained {report['epochs_run']} epochs in {seconds:.0f}s; best epoch {best + 1}")
    return report


def evaluate(root: Path | str = ".") -> dict:
    from senti import evaluate as ev
    from senti.model import load_model
    from senti.train import predict_proba
    from senti.vocab import load_vocab

    params, layout = _context(root)
    tokens, vocabulary = read_tokens(layout), load_vocab(layout.vocab)
    labels = read_json(layout.labels)
    test, train_rows = tokens[tokens["split"] == "test"], tokens[tokens["split"] == "train"]
    seqs, y_true = encode_split(test, vocabulary, params.model.maxlen, labels)
    proba = predict_proba(load_model(layout.model_file), seqs)
    index = {label: i for i, label in enumerate(labels)}
    baseline = ev.train_baseline(train_rows["text"].tolist(),
                                 train_rows["label"].map(index).to_numpy(), params.evaluate)
    baseline_proba = ev.baseline_scores(baseline, test["text"].tolist())
    y_pred, baseline_pred = proba.argmax(1), baseline_proba.argmax(1)
    model_metrics = ev.classification_metrics(y_true, proba, labels)
    model_metrics["ece"] = ev.expected_calibration_error(y_true, proba)
    model_metrics["by_length"] = ev.metrics_by_length(
        y_true, y_pred, test["tokens"].map(len).to_numpy())
    metrics = {"model": model_metrics,
               "baseline": ev.classification_metrics(y_true, baseline_proba, labels)}
    write_json(layout.metrics, metrics)
    pd.DataFrame({
        "text": test["text"].to_numpy(),
        "actual": [labels[i] for i in y_true],
        "predicted": [labels[i] for i in y_pred],
        "baseline_predicted": [labels[i] for i in baseline_pred],
        "confidence": proba.max(1).round(5),
    }).to_csv(layout.predictions, index=False)
    ev.plot_confusion_matrix(y_true, y_pred, labels, layout.confusion_png,
                             title="BiLSTM+attention, test split")
    ev.plot_reliability(y_true, proba, layout.reliability_png)
    ev.plot_roc_pr(y_true, {"BiLSTM+attention": proba, "baseline": baseline_proba}, labels,
                   layout.roc_pr_png)
    ev.plot_training_curves(pd.read_csv(layout.train_history), layout.training_curves_png)
    layout.evaluation_md.write_text(
        ev.evaluation_markdown(model_metrics, metrics["baseline"], labels), encoding="utf-8")
    return metrics
