"""The embedded MLflow store: each project keeps its own database and artifacts, even after
MLflow copied an earlier project's URI into MLFLOW_TRACKING_URI; a user's URI still wins."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from senti import registry
from senti.config import Layout


def test_each_project_keeps_its_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        layout = Layout(tmp_path / name)
        layout.root.mkdir()
        experiment_id = registry.configure(layout, "senti")
        assert mlflow.get_tracking_uri() == f"sqlite:///{layout.mlflow_db}"
        location = mlflow.get_experiment(experiment_id).artifact_location
        assert location == layout.mlflow_artifacts.as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("/b/mlflow.db")  # MLflow set it
    assert registry.tracking_uri(Layout(tmp_path / "a")).endswith("/a/mlflow.db")


def test_a_tracking_uri_set_by_the_user_wins(tmp_path, monkeypatch):
    server = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert registry.tracking_uri(Layout(Path(tmp_path / "project"))) == server
