"""Stage ``evaluate``: test metrics of the model and the baseline, plots and a report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from senti import evaluate as ev
from senti.config import load_context
from senti.inference import predict_proba
from senti.io import read_json, write_json
from senti.model import load_model
from senti.stages import main
from senti.vocab import class_indices, encode_split, load_vocab


def run(root: Path) -> dict:
    params, layout = load_context(root)
    tokens, vocabulary = pd.read_parquet(layout.tokens), load_vocab(layout.vocab)
    labels = read_json(layout.labels)
    test, train_rows = tokens[tokens["split"] == "test"], tokens[tokens["split"] == "train"]
    seqs, y_true = encode_split(test["tokens"], test["label"], vocabulary, params.model.maxlen,
                                labels)
    proba = predict_proba(load_model(layout.model_file), seqs)
    baseline = ev.train_baseline(train_rows["text"].tolist(),
                                 class_indices(train_rows["label"], labels), params.evaluate)
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


if __name__ == "__main__":
    main(run)
