"""The promote, rollback and gate-new-version flows on a real project store (SQLite MLflow,
Prefect's test API, a DVC remote directory), without training: versions are a keyword model
logged from code (tests/code/keyword_model.py), or a stub that cannot be loaded. What a
failure changes: nothing before the decision is recorded; the decision itself after."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.promote import promote
from senti import lineage, notify, registry, tags
from senti.cli import app
from senti.config import load_context
from senti.promote import PromotionError
from tests.conftest import REPO, set_params

KEYWORD_MODEL = Path(__file__).with_name("keyword_model.py")
LENIENT_GATE = {"promote.min_delta": -1.0, "promote.require_beat_baseline": False,
                "promote.min_behaviour_pass_rate": 0.0}


@pytest.fixture
def project(tmp_path, monkeypatch, prefect_harness) -> Path:
    """A project with a test split, its own MLflow store and a lenient gate; no versions."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(notify.WEBHOOK_ENV, raising=False)
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    set_params(root, LENIENT_GATE)
    params, layout = load_context(root)
    layout.tokens.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": ["很好", "不好", "好用", "不喜欢"], "label": ["positive", "negative"] * 2,
                  "split": "test"}).to_parquet(layout.tokens)
    layout.labels.parent.mkdir(parents=True, exist_ok=True)
    layout.labels.write_text('["negative", "positive"]', encoding="utf-8")
    mlflow.set_experiment(experiment_id=registry.configure(layout, params.registry.experiment))
    return root


def model_name(root: Path) -> str:
    return load_context(root)[0].registry.model_name


def register(root: Path, loadable: bool = True) -> str:
    """A new version: the keyword model, or a run's stub file that no loader accepts."""
    name = model_name(root)
    with mlflow.start_run() as run:
        if loadable:
            uri = mlflow.pyfunc.log_model(name="model", python_model=str(KEYWORD_MODEL),
                                          pip_requirements=[]).model_uri
        else:
            mlflow.log_text("stub", "model/stub.txt")
            uri = f"{run.info.artifact_uri}/model"
    return str(MlflowClient().create_model_version(
        name, uri, run_id=run.info.run_id, tags={tags.VALIDATION: "passed"}).version)


def champion(root: Path) -> str | None:
    return registry.alias_version(model_name(root), tags.CHAMPION)


def version_tags(root: Path, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(model_name(root), version).tags


def promoted_first(root: Path) -> None:
    """Versions 1 and 2, version 1 the champion."""
    MlflowClient().create_registered_model(model_name(root))
    assert register(root) == "1" and register(root) == "2"
    assert promote(root=str(root), version="1")["decision"] == "promoted"


def test_a_version_spelled_otherwise_is_still_the_champion(project):
    promoted_first(project)
    before = version_tags(project, "1")
    for spelled in ("01", " 1", "+1"):
        with pytest.raises(PromotionError, match=r"^version 1 is already the champion"):
            promote(root=str(project), version=spelled)
    cli = CliRunner().invoke(app, ["promote", "--version", "01", "--root", str(project)])
    assert cli.exit_code == 1 and "version 1 is already the champion" in cli.output
    assert champion(project) == "1" and version_tags(project, "1") == before
    assert [r["decision"] for r in lineage.decisions(model_name(project), "1")] == ["promoted"]

