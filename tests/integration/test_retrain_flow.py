"""End to end: the real `retrain` flow over a real DVC repo, MLflow SQLite store, GX, jieba
and TensorFlow, on a small sample of the bundled corpus with a tiny model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.retrain import StageFailed, retrain
from senti import lineage, registry
from senti.config import Layout
from senti.io import sha256_file
from tests.conftest import make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    root = make_project(tmp_path_factory.mktemp("project"))
    return root, retrain(root=str(root))


def test_first_run_runs_every_stage_and_registers(trained):
    root, result = trained
    assert set(result["stages"].values()) == {"ran"}
    assert result["registered"] and result["version"] == "1"
    for who in ("model", "baseline"):
        assert 0.5 < result["metrics"][who]["accuracy"] <= 1.0
        assert 0.0 < result["metrics"][who]["macro_f1"] <= 1.0
    lock = (root / "dvc.lock").read_text()
    for stage in ("ingest", "validate", "prepare", "segment", "vocab", "embeddings", "train",
                  "evaluate"):
        assert f"  {stage}:" in lock


def test_run_is_tracked_with_lineage(trained):
    root, result = trained
    layout = Layout(root)
    registry.configure(layout, "senti")
    client = MlflowClient()
    version = client.get_model_version("senti-sentiment", result["version"])
    run = client.get_run(version.run_id)
    assert run.data.params["train.epochs"] == "2"
    assert "test.model.accuracy" in run.data.metrics
    assert "test.baseline.macro_f1" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train.loss")) == 2
    tags = run.data.tags
    assert len(tags["git.commit"]) == 40
    assert tags["vocab.sha256"] == sha256_file(layout.vocab)
    assert tags["jieba.version"] == "0.42.1"
    lock = lineage.read_lock(layout.dvc_lock)
    assert tags["dvc.ingest.outs.data/raw/corpus.csv"] == lock["ingest"]["outs"][0]["md5"]
    assert "dvc.train.outs.models/bilstm" in tags
    assert tags["prefect.flow_run_id"] != "none"
    assert tags["prefect.deployment"] == "none"  # run directly, not through a deployment
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "train" and inputs[0].dataset.digest
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/confusion_matrix.png", "reports/evaluation.md",
            "reports/dvc.lock"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "data_docs")


def test_registered_pyfunc_predicts_raw_text(trained):
    root, result = trained
    registry.configure(Layout(root), "senti")
    model = mlflow.pyfunc.load_model(result["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["质量很好，物流也快", "太差了，再也不买了"]}))
    assert list(out.columns) == ["label", "probability", "prob_negative", "prob_positive"]
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


def test_invalid_data_stops_flow_and_keeps_outputs(trained):
    root, _ = trained
    layout = Layout(root)
    before = {p: sha256_file(p) for p in (layout.tokens, layout.vocab, layout.model_file,
                                          layout.metrics)}
    bad = root / "bad.csv"
    pd.DataFrame({"text": ["great product, fast delivery"] * 600 + ["terrible"] * 600,
                  "label": ["positive"] * 600 + ["negative"] * 600}).to_csv(bad, index=False)
    params_before = (root / "params.yaml").read_text()
    with pytest.raises(StageFailed) as failure:
        retrain(root=str(root), overrides={"data.source": "bad.csv"})
    message = str(failure.value)
    assert "validate" in message and "cjk_share" in message
    assert (root / "params.yaml").read_text() == params_before  # override undone
    assert {p: sha256_file(p) for p in before} == before
    registry.configure(layout, "senti")
    versions = MlflowClient().search_model_versions("name = 'senti-sentiment'")
    assert [str(v.version) for v in versions] == ["1"]
