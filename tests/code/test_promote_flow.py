"""The promote, rollback and gate-new-version flows on a real project store (SQLite MLflow,
Prefect's test API, a DVC remote directory), without training: versions are a keyword model
logged from code (tests/code/keyword_model.py), or a stub that cannot be loaded. What a
failure changes: nothing before the decision is recorded; the decision itself after."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from dvc.repo import Repo
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.promote import gate_new_version, promote, rollback
from senti import lineage, notify, registry, tags, workspace
from senti.cli import app
from senti.config import load_context
from senti.promote import PromotionError
from tests.conftest import REPO, set_params

KEYWORD_MODEL = Path(__file__).with_name("keyword_model.py")
LENIENT_GATE = {"promote.min_delta": -1.0, "promote.require_beat_baseline": False,
                "promote.min_behaviour_pass_rate": 0.0}
HOLD = """
import sys, time
from senti import workspace
with workspace.project_lock(sys.argv[1], run="nightly"):
    print("locked", flush=True)
    time.sleep(120)
"""


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


def test_a_malformed_webhook_url_stops_promote_and_rollback_before_anything_changes(
        project, monkeypatch):
    promoted_first(project)
    monkeypatch.setenv(notify.WEBHOOK_ENV, "hooks.example/senti")
    with pytest.raises(ValueError, match=rf"^{notify.WEBHOOK_ENV}: needs an http"):
        promote(root=str(project), version="2")
    assert champion(project) == "1" and tags.DECISION not in version_tags(project, "2")
    monkeypatch.delenv(notify.WEBHOOK_ENV)
    assert promote(root=str(project), version="2")["promoted"]
    monkeypatch.setenv(notify.WEBHOOK_ENV, "ftp://hooks.example/senti")
    cli = CliRunner().invoke(app, ["rollback", "--root", str(project)])
    assert cli.exit_code == 1 and f"{notify.WEBHOOK_ENV}: needs an http" in cli.output
    assert champion(project) == "2" and tags.ROLLED_BACK not in version_tags(project, "2")


def test_a_gate_that_cannot_run_leaves_the_champion_and_says_why(project, monkeypatch):
    promoted_first(project)
    stub = register(project, loadable=False)
    result = gate_new_version(str(project), stub)
    assert result["decision"] == "error" and not result["promoted"]
    assert result["reason"].startswith(f"gate could not run: cannot load models:/"
                                       f"{model_name(project)}/{stub}")
    monkeypatch.setenv(notify.WEBHOOK_ENV, "not a url")
    result = gate_new_version(str(project), "2")
    assert result["decision"] == "error"
    assert result["reason"].startswith(f"gate could not run: {notify.WEBHOOK_ENV}: needs")
    assert champion(project) == "1"
    for version in ("2", stub):
        assert tags.DECISION not in version_tags(project, version)
        assert lineage.decisions(model_name(project), version) == []


def _remote(root: Path, url: str) -> None:
    (root / ".dvc" / "config").write_text(
        f"[core]\n    no_scm = true\n    remote = store\n['remote \"store\"']\n    url = {url}\n")


def test_a_ledger_that_cannot_be_written_leaves_the_decision_standing(project, caplog):
    Repo.init(str(project), no_scm=True).close()
    _remote(project, str(project.parent / "remote"))
    promoted_first(project)  # its decision is in the ledger
    (project.parent / "blocked").write_text("a file where the remote's directory would be")
    _remote(project, str(project.parent / "blocked" / "remote"))
    with caplog.at_level(logging.WARNING, logger="senti"):
        decision = promote(root=str(project), version="2")
    assert decision["promoted"] and champion(project) == "2"
    [warning] = [r for r in caplog.records if r.name.startswith("senti.progress")]  # terminal
    assert warning.getMessage().startswith(
        f"warning: {model_name(project)}: decision promoted on version 2 at {decision['time']}: "
        "no ledger entry written") and warning.exc_info is None
    _remote(project, str(project.parent / "remote"))
    found = {check.name: check for check in lineage.verify_ledger(project, model_name(project))}
    assert found["decision promoted on version 1 at " + lineage.decisions(
        model_name(project), "1")[0]["time"]].ok
    missing = found[f"decision promoted on version 2 at {decision['time']}"]
    assert missing.describe().startswith("MISSING   ledger decision promoted on version 2")


def test_promote_and_rollback_are_refused_while_another_run_holds_the_project(project):
    promoted_first(project)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = rf"^another retrain of this project is running: pid {holder.pid} on .*\(nightly\)"
        with pytest.raises(workspace.LockBusy, match=busy):
            promote(root=str(project), version="2")
        with pytest.raises(workspace.LockBusy, match=busy):
            rollback(root=str(project))
        cli = CliRunner().invoke(app, ["promote", "--version", "2", "--root", str(project)])
        assert cli.exit_code == 1 and f"pid {holder.pid}" in cli.output
        assert len(cli.output.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    assert champion(project) == "1" and tags.DECISION not in version_tags(project, "2")


def test_the_gate_of_a_retrain_runs_under_the_retrain_s_lock(project):
    promoted_first(project)
    with workspace.project_lock(project, run="this retrain"):
        assert gate_new_version(str(project), "2")["decision"] == "promoted"
    assert champion(project) == "2"
