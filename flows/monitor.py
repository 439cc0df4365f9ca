"""Prefect flow ``monitor``: drift of a batch-prediction output against the version that made
its predictions (see :mod:`senti.drift`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from senti import batch, drift, registry
from senti.config import load_context, project_root
from senti.prepare import normalise_text
from senti.segment import segment_texts

ARTIFACT_KEY = "drift-monitor"


@flow(name="monitor", log_prints=True)
def monitor(predictions_csv: str, root: str | None = None,
            text_column: str = "text") -> dict[str, Any]:
    """Compare ``predictions_csv`` (an output of ``senti predict --input/--output`` or the
    batch-predict flow, under the project's ``serve.batch_dirs``) with the version named in
    its ``model_version`` column: predicted-label shares (rows the model declined as a label
    of their own) and confidences against that version's test-set predictions; text lengths,
    OOV rate and unseen tokens of the input texts (cut with that version's jieba user
    dictionary) against its training data. Posts the report as a markdown artifact; returns
    it."""
    params, layout = load_context(project_root(root))
    path = batch.project_file(predictions_csv, layout, params.serve.batch_dirs)
    frame = drift.read_predictions(path, text_column)
    registry.configure(layout, params.registry.experiment)
    texts = frame[text_column].dropna().map(
        lambda text: normalise_text(text, params.validate.max_text_chars))
    texts = texts[texts != ""].tolist()
    with tempfile.TemporaryDirectory() as tmp:  # cut as the version's own data was
        reference = registry.drift_reference(params, frame[batch.VERSION_COLUMN].iloc[0],
                                             Path(tmp))
        tokens = segment_texts(texts, reference.user_dict, params.segment.workers)
    report = drift.compare(
        reference, drift.data_profile(pd.DataFrame({"text": texts, "tokens": tokens}),
                                      params.drift),
        params.drift, drift.prediction_profile(frame["label"], frame["probability"]),
        current=predictions_csv)
    create_markdown_artifact(drift.render_markdown(report), key=ARTIFACT_KEY,
                             description=report.headline())
    if report.drifted:
        get_run_logger().warning(report.headline())
    return report.to_dict()
