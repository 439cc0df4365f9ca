"""The champion history at scale, on a real MLflow store (no mocks): 30 promotions in a row,
then rollbacks that walk back the ``promote.previous_champion`` chain, and no
registered-model tag written (MLflow's SQL schema caps those at 5,000 characters).

Versions are registered without training (a run with a stub artifact); the gate decisions
are built by :func:`senti.promote.decide` and recorded by :mod:`senti.registry` as a retrain's
would be. The store is the project's embedded SQLite file, or the tracking server named by
``SENTI_TEST_TRACKING_URI`` (e.g. ``mlflow server`` on PostgreSQL, which enforces the cap).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from senti import lineage, registry, tags
from senti import promote as gate
from senti.behaviour import BehaviourResult
from senti.config import Layout, PromoteParams, load_params
from tests.conftest import REPO

PROMOTIONS = 30
PASS_ALL = PromoteParams(min_delta=-1.0, alpha=0.05, require_beat_baseline=False,
                         min_behaviour_pass_rate=0.0)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Iterator[str]:
    """A configured MLflow store and a model name new to it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server = os.environ.get("SENTI_TEST_TRACKING_URI")
    if server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    # runs go to this experiment: the default one would put artifacts in ./mlruns
    mlflow.set_experiment(experiment_id=registry.configure(
        Layout(tmp_path, load_params(REPO).paths), "senti-history"))
    name = f"history-{uuid.uuid4().hex[:8]}"
    MlflowClient().create_registered_model(name)
    yield name


def register(name: str) -> str:
    """A new version of ``name`` without training: a run holding a stub artifact."""
    with mlflow.start_run() as run:
        mlflow.log_text("stub", "model/stub.txt")
    return str(MlflowClient().create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)


def judged(version: str, champion: str | None, *, better: bool = True) -> gate.GateDecision:
    """A gate decision on ``version`` against ``champion``, as the gate would make it."""
    def score(v: str, macro_f1: float) -> gate.ModelScore:
        return gate.ModelScore(v, macro_f1, macro_f1, np.ones(10, dtype=bool))
    params = PASS_ALL if better else PASS_ALL.model_copy(update={"min_delta": 0.5})
    return gate.decide(score(version, 0.5 + int(version) / 100),
                       None if champion is None else score(champion, 0.5 + int(champion) / 100),
                       params=params, validation_passed=True, run_metrics={},
                       behaviour=BehaviourResult(pass_rate=None, by_check={}))


def champion(name: str) -> str | None:
    return registry.alias_version(name, tags.CHAMPION)


def version_tags(name: str, version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(name, version).tags


def test_thirty_promotions_then_rollbacks_walk_back_the_chain(store):
    name, started = store, time.perf_counter()
    for n in range(1, PROMOTIONS + 1):
        version = register(name)
        registry.record_decision(None, name, judged(version, champion(name)), f"run-{n}")
        assert champion(name) == version == str(n)
    assert version_tags(name, "1")[tags.PREVIOUS_CHAMPION] == "none"
    for n in range(2, PROMOTIONS + 1):
        assert version_tags(name, str(n))[tags.PREVIOUS_CHAMPION] == str(n - 1)
    # a former champion judged again and rejected keeps the predecessor of its reign
    registry.record_decision(None, name, judged("28", "30", better=False), "run-regate")
    assert version_tags(name, "28")[tags.DECISION] == "rejected"
    assert version_tags(name, "28")[tags.PREVIOUS_CHAMPION] == "27"

    for current, previous in (("30", "29"), ("29", "28"), ("28", "27")):
        record = registry.rollback(None, name, f"{current} is broken", "run-back")
        assert (record.from_version, record.to_version) == (current, previous)
        assert champion(name) == previous
        restored = version_tags(name, previous)
        assert restored[tags.DECISION] == "rollback"
        assert restored[tags.CHAMPION_VERSION] == current
        assert restored[tags.PREVIOUS_CHAMPION] == str(int(previous) - 1)  # not erased
        assert tags.ROLLED_BACK in version_tags(name, current)
    assert [r["decision"] for r in lineage.decisions(name, "28")] == [
        "promoted", "rejected", "rollback"]

    # a new champion replaces the restored one; rolling it back skips 28..30 for good
    newest = register(name)
    registry.record_decision(None, name, judged(newest, champion(name)), "run-new")
    assert version_tags(name, newest)[tags.PREVIOUS_CHAMPION] == "27"
    assert registry.rollback(None, name, "newest is broken", None).to_version == "27"
    for expected in range(26, 0, -1):
        assert registry.rollback(None, name, "walk back", None).to_version == str(expected)
    with pytest.raises(gate.PromotionError, match="no earlier champion"):
        registry.rollback(None, name, "again", None)
    assert champion(name) == "1"
    assert [r["decision"] for r in lineage.decisions(name, "1")] == ["promoted", "rollback"]
    assert MlflowClient().get_registered_model(name).tags == {}
    print(f"{PROMOTIONS + 1} promotions, 30 rollbacks: {time.perf_counter() - started:.1f}s")


def test_rollback_refuses_a_champion_senti_did_not_promote(store):
    name = store
    with pytest.raises(gate.PromotionError, match="no @champion"):
        registry.rollback(None, name, "nothing yet", None)
    first = register(name)
    registry.record_decision(None, name, judged(first, None), None)
    outside = register(name)
    MlflowClient().set_registered_model_alias(name, tags.CHAMPION, outside)
    with pytest.raises(gate.PromotionError, match="moved outside senti"):
        registry.rollback(None, name, "x", None)
    assert champion(name) == outside


def test_rollback_refuses_a_champion_recorded_as_its_own_predecessor(store):
    """What an earlier senti wrote when ``--version 01`` judged the champion against itself:
    a rollback would "restore" the champion over itself."""
    name = store
    first = register(name)
    registry.record_decision(None, name, judged(first, None), None)
    registry._registry().set_model_version_tag(name, first, tags.PREVIOUS_CHAMPION, first)
    before = version_tags(name, first)
    with pytest.raises(gate.PromotionError, match="records itself as the champion it replaced"):
        registry.rollback(None, name, "x", None)
    assert champion(name) == first and version_tags(name, first) == before
