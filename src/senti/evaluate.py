"""Evaluation metrics, a classical baseline, significance test, plots and report tables.

Everything here works on plain arrays: ``y_true`` / ``y_pred`` are integer class indices
into ``labels`` and ``proba`` is an ``(n, k)`` array of class scores whose column ``j``
belongs to ``labels[j]``. Nothing imports TensorFlow; the model's probabilities are
produced elsewhere and passed in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # non-interactive: pipeline stages and tests have no display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import binomtest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from senti.config import EvaluateParams

LENGTH_EDGES: tuple[float, ...] = (0, 16, 32, 64, 128, math.inf)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and (binary) ROC-AUC.

    The prediction is the arg-max of ``proba``. ``roc_auc`` (from ``proba[:, 1]``) is present
    only for two labels and only when ``y_true`` holds both classes, where it is defined.
    The result holds plain Python numbers, so it can be written with ``json.dump``.
    """
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    k = len(labels)
    if proba.ndim != 2 or proba.shape != (len(y_true), k):
        raise ValueError(f"proba must have shape ({len(y_true)}, {k}), got {proba.shape}")
    y_pred = proba.argmax(axis=1)
    idx = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0
    )
    metrics: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            label: {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
            }
            for j, label in enumerate(labels)
        },
    }
    if k == 2 and len(np.unique(y_true)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
    return metrics


def train_baseline(
    train_texts: list[str], train_y: np.ndarray, params: EvaluateParams
) -> Pipeline:
    """Fit TF-IDF character 1..``baseline_ngram_max``-grams + ``LinearSVC(C=baseline_c)``.

    Works on raw (unsegmented) text, so it is independent of the tokenizer. ``train_y`` must
    contain every class index ``0..k-1`` so that score columns line up with ``labels``.
    """
    train_y = np.asarray(train_y, dtype=int)
    classes = np.unique(train_y)
    if not np.array_equal(classes, np.arange(len(classes))) or len(classes) < 2:
        raise ValueError(f"train_y must contain every class 0..k-1 (k >= 2), got {classes}")
    pipeline = Pipeline([
        ("tfidf", TfidfVectorizer(
            analyzer="char",
            ngram_range=(1, params.baseline_ngram_max),
            sublinear_tf=True,
            min_df=2,
        )),
        # liblinear visits the samples in a random order: seeded, the baseline is the same
        # on every run (unseeded, its scores moved by ~1e-6 between runs)
        ("svm", LinearSVC(C=params.baseline_c, random_state=0)),
    ])
    return pipeline.fit(list(train_texts), train_y)


def baseline_scores(pipeline: Pipeline, texts: Sequence[str]) -> np.ndarray:
    """``(n, k)`` scores from the baseline's decision function, rows summing to 1.

    Softmax over the SVM decision scores (binary: over ``[0, s]``, i.e. ``sigmoid(s)`` for
    the positive class). These are monotone in the margins, so arg-max equals
    ``pipeline.predict`` and ROC-AUC is exact, but they are NOT calibrated probabilities:
    do not use them for ECE or reliability plots.
    """
    scores = np.asarray(pipeline.decision_function(list(texts)), dtype=float)
    if scores.ndim == 1:
        scores = np.column_stack([np.zeros_like(scores), scores])
    return softmax(scores, axis=1)


def confusion_matrix_table(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]
) -> pd.DataFrame:
    """Confusion matrix in long format: one row per (actual, predicted) pair, zeros included."""
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    return pd.DataFrame(
        [
            {"actual": actual, "predicted": predicted, "count": int(cm[i, j])}
            for i, actual in enumerate(labels)
            for j, predicted in enumerate(labels)
        ],
        columns=["actual", "predicted", "count"],
    )


def _save(fig: plt.Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path, title: str
) -> None:
    """Write a PNG confusion matrix (rows actual, columns predicted) with annotated counts."""
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(
        ax=ax, values_format="d", cmap="Blues", colorbar=False,
        xticks_rotation=45 if len(labels) > 2 else "horizontal",
    )
    ax.set_title(title)
    _save(fig, path)


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test on paired per-example correctness of models A and B.

    ``b01``: examples A got wrong and B got right; ``b10``: A right, B wrong. Under H0 (equal
    error rates) ``b01 ~ Binomial(b01 + b10, 0.5)``; ``p_value`` is two-sided, 1.0 when the
    models never disagree.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in shape: {a.shape} vs {b.shape}")
    b01 = int(np.sum(~a & b))
    b10 = int(np.sum(a & ~b))
    p_value = binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return {"b01": b01, "b10": b10, "p_value": float(p_value)}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def evaluation_markdown(model_metrics: dict, baseline_metrics: dict, labels: list[str]) -> str:
    """Markdown table comparing model and baseline metrics (from :func:`classification_metrics`)."""
    rows: list[tuple[str, float | None, float | None]] = [
        (name, model_metrics.get(key), baseline_metrics.get(key))
        for name, key in [("Accuracy", "accuracy"), ("Macro-F1", "macro_f1"),
                          ("ROC-AUC", "roc_auc")]
    ]
    for label in labels:
        for stat in ("precision", "recall"):
            rows.append((
                f"{stat.capitalize()} ({label})",
                model_metrics["per_class"][label][stat],
                baseline_metrics["per_class"][label][stat],
            ))
    lines = ["| Metric | Model | Baseline | Δ |", "|---|---:|---:|---:|"]
    for name, m, b in rows:
        delta = None if m is None or b is None else m - b
        lines.append(f"| {name} | {_fmt(m)} | {_fmt(b)} | "
                     f"{'—' if delta is None else f'{delta:+.4f}'} |")
    return "\n".join(lines) + "\n"


def metrics_by_length(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    lengths: np.ndarray,
    edges: Sequence[float] = LENGTH_EDGES,
) -> list[dict]:
    """Accuracy per text-length bucket ``[edges[i], edges[i+1])``, every bucket listed.

    ``accuracy`` is ``None`` for an empty bucket; lengths outside the edges are not counted.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    lengths = np.asarray(lengths, dtype=float)
    out = []
    for lo, hi in itertools.pairwise(edges):
        mask = (lengths >= lo) & (lengths < hi)
        n = int(mask.sum())
        out.append({
            "bucket": f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}",
            "n": n,
            "accuracy": float(accuracy_score(y_true[mask], y_pred[mask])) if n else None,
        })
    return out


def _confidence_bins(
    y_true: np.ndarray, proba: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label confidence binned into ``bins`` equal-width bins ``(lo, hi]`` over [0, 1].

    Returns per-bin mean confidence, accuracy and count (NaN means for empty bins).
    """
    proba = np.asarray(proba, dtype=float)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true, dtype=int)
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    count = np.bincount(which, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return mean_conf, accuracy, count


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: count-weighted mean of ``|accuracy - confidence|`` over the bins."""
    mean_conf, accuracy, count = _confidence_bins(y_true, proba, bins)
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_conf[filled]))
                 / count.sum())


def plot_reliability(y_true: np.ndarray, proba: np.ndarray, path: Path, bins: int = 10) -> None:
    """Write a PNG reliability diagram (accuracy vs confidence per bin) with the ECE."""
    mean_conf, accuracy, count = _confidence_bins(y_true, proba, bins)
    centers = (np.arange(bins) + 0.5) / bins
    filled = count > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centers[filled], accuracy[filled], width=1 / bins, edgecolor="black",
           alpha=0.7, label="accuracy")
    ax.plot(mean_conf[filled], accuracy[filled], "o", color="C1", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-label probability)",
           ylabel="accuracy",
           title=f"Reliability (ECE = {expected_calibration_error(y_true, proba, bins):.3f})")
    ax.legend(loc="upper left")
    _save(fig, path)


def plot_roc_pr(y_true: np.ndarray, curves: dict[str, np.ndarray], labels: list[str],
                path: Path) -> None:
    """ROC and precision-recall curves of several scorers (name -> (n, k) scores): for the
    positive class ``labels[1]`` when binary, else one-vs-rest for every class."""
    y_true = np.asarray(y_true)
    classes = [1] if len(labels) == 2 else range(len(labels))
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, scores in curves.items():
        for c in classes:
            line = name if len(labels) == 2 else f"{name}: {labels[c]}"
            RocCurveDisplay.from_predictions(y_true == c, scores[:, c], name=line, ax=roc_ax)
            PrecisionRecallDisplay.from_predictions(y_true == c, scores[:, c], name=line,
                                                    ax=pr_ax)
    roc_ax.set_title("ROC")
    pr_ax.set_title("Precision-recall")
    _save(fig, path)


def plot_training_curves(history: pd.DataFrame, path: Path) -> None:
    """Loss and accuracy per epoch, training vs validation (columns as Keras names them)."""
    epochs = history.index + 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.legend()
    _save(fig, path)
