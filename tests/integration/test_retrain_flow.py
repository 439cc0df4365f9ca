"""End to end: the real `retrain` flow over a real DVC repo, MLflow SQLite store, GX, jieba
and TensorFlow, on a small sample of the bundled corpus with a tiny model (the session's
shared trained project)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.retrain import StageFailed, retrain
from senti import registry, tags, versioning
from senti.config import load_context
from senti.io import sha256_file
from tests.conftest import copy_project

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_project) -> tuple[Path, dict]:
    return trained_project


def test_first_run_runs_every_stage_and_registers(trained):
    root, result = trained
    assert set(result["stages"].values()) == {"ran"}
    assert result["registered"] and result["version"] == "1"
    for who in ("model", "baseline"):
        assert 0.5 < result["metrics"][who]["accuracy"] <= 1.0
        assert 0.0 < result["metrics"][who]["macro_f1"] <= 1.0
    assert list(versioning.read_lock(root)) == versioning.stages(root)


def test_run_is_tracked_with_lineage(trained):
    root, result = trained
    _, layout = load_context(root)
    registry.configure(layout, "senti")
    client = MlflowClient()
    version = client.get_model_version("senti-sentiment", result["version"])
    run = client.get_run(version.run_id)
    assert run.data.params["train.epochs"] == "2"
    assert "test.model.accuracy" in run.data.metrics
    assert "test.baseline.macro_f1" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train.loss")) == 2
    run_tags = run.data.tags
    assert len(run_tags[tags.GIT_COMMIT]) == 40
    assert run_tags[tags.VOCAB_SHA256] == sha256_file(layout.vocab)
    assert run_tags[tags.JIEBA_VERSION] == "0.42.1"
    lock = versioning.read_lock(root)
    assert run_tags["dvc.ingest.outs.data/raw/corpus.csv"] == lock["ingest"]["outs"][0]["md5"]
    assert "dvc.train.outs.models/bilstm" in run_tags
    assert run_tags[tags.PREFECT_FLOW_RUN] != tags.NONE
    assert run_tags[tags.PREFECT_DEPLOYMENT] == tags.NONE  # run directly, not by a deployment
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "train" and inputs[0].dataset.digest
    reports = {a.path for a in client.list_artifacts(run.info.run_id, tags.REPORTS_DIR)}
    # the reports directory, logged whole: every report of every stage, Data Docs included
    assert {f"reports/{p.name}" for p in layout.reports.iterdir()} == reports
    assert {"reports/confusion_matrix.png", "reports/evaluation.md",
            "reports/data_docs"} <= reports
    lineage_files = {a.path for a in client.list_artifacts(run.info.run_id, "lineage")}
    assert {tags.PARAMS_ARTIFACT, tags.DVC_LOCK_ARTIFACT} <= lineage_files


def test_registered_pyfunc_predicts_raw_text(trained):
    root, result = trained
    registry.configure(load_context(root)[1], "senti")
    model = mlflow.pyfunc.load_model(result["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["质量很好，物流也快", "太差了，再也不买了"]}))
    assert list(out.columns) == ["label", "probability", "prob_negative", "prob_positive",
                                 "known_share", "flag"]
    assert set(out["label"]) <= {"negative", "positive"}
    assert ((out["prob_negative"] + out["prob_positive"]).round(5) == 1).all()


def test_unchanged_rerun_skips_everything_and_registers_nothing(trained):
    root, _ = trained
    again = retrain(root=str(root))
    skipped = {s for s, status in again["stages"].items() if status == "skipped"}
    # ingest always re-reads the external source; its output is unchanged, so nothing else runs
    assert skipped == {"validate", "prepare", "segment", "vocab", "embeddings", "train",
                       "evaluate"}
    assert not again["registered"] and again["version"] == "1"


def test_invalid_data_stops_flow_and_keeps_outputs(trained, tmp_path):
    root = copy_project(trained[0], tmp_path / "project")
    _, layout = load_context(root)
    before = {p: sha256_file(p) for p in (layout.tokens, layout.vocab, layout.model_file,
                                          layout.metrics)}
    bad = root / "bad.csv"
    pd.DataFrame({"text": ["great product, fast delivery"] * 600 + ["terrible"] * 600,
                  "label": ["positive"] * 600 + ["negative"] * 600}).to_csv(bad, index=False)
    params_before = (root / "params.yaml").read_text()
    with pytest.raises(StageFailed) as failure:
        retrain(root=str(root), overrides={"data.source": "bad.csv"})
    message = str(failure.value)
    assert "data validation failed" in message and "cjk_share" in message
    assert (root / "params.yaml").read_text() == params_before  # override undone
    assert {p: sha256_file(p) for p in before} == before
    registry.configure(layout, "senti")
    versions = MlflowClient().search_model_versions("name = 'senti-sentiment'")
    assert [str(v.version) for v in versions] == ["1"]
