"""The embedded MLflow store: each project keeps its own database and artifacts, even after
MLflow copied an earlier project's URI into MLFLOW_TRACKING_URI; a user's URI still wins.
And the registered model's pinned requirements cover every distribution its code imports."""

from __future__ import annotations

import ast
import os
import sys
from importlib.metadata import packages_distributions

import mlflow

from senti import registry
from senti.config import Layout, load_params
from tests.code.test_architecture import imported_names, module_file, senti_closure
from tests.conftest import REPO

PATHS = load_params(REPO).paths


def test_each_project_keeps_its_own_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        layout = Layout(tmp_path / name, PATHS)
        layout.root.mkdir()
        experiment_id = registry.configure(layout, "senti")
        assert mlflow.get_tracking_uri() == f"sqlite:///{layout.mlflow_db}"
        location = mlflow.get_experiment(experiment_id).artifact_location
        assert location == layout.mlflow_artifacts.as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("/b/mlflow.db")  # MLflow set it
    assert registry.tracking_uri(Layout(tmp_path / "a", PATHS)).endswith("/a/mlflow.db")


def test_a_tracking_uri_set_by_the_user_wins(tmp_path, monkeypatch):
    server = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert registry.tracking_uri(Layout(tmp_path / "project", PATHS)) == server


def test_the_model_pins_every_distribution_its_code_imports():
    """The model's code is senti.pyfunc_model and the senti modules it imports (logged with
    the model); whatever else they import must come from a pinned public distribution."""
    distributions = packages_distributions()
    pinned = set(registry.RUNTIME_REQUIREMENTS)
    unpinned = set()
    for module in senti_closure("senti.pyfunc_model"):
        tree = ast.parse(module_file(module).read_text(encoding="utf-8"))  # type: ignore[union-attr]
        for top in {name.split(".")[0] for name in imported_names(tree)}:
            if top in ("senti", "__future__") or top in sys.stdlib_module_names:
                continue
            if not set(distributions.get(top, [top])) & pinned:
                unpinned.add(top)
    assert not unpinned, f"serving code imports {sorted(unpinned)}, not in the requirements"
