"""End to end: the promotion gate at the end of real retrains (real DVC, MLflow SQLite store,
Prefect, TensorFlow): the shared trained project's champion, then, in a copy of it, a
deliberately untrained challenger, a forced promotion, rollbacks; then the champion served
over HTTP and used for batch prediction."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from typer.testing import CliRunner

from flows.batch_predict import batch_predict
from flows.promote import promote, rollback
from flows.retrain import retrain
from senti import lineage, registry, tags
from senti.cli import app
from senti.config import load_context
from senti.promote import PromotionError
from tests.conftest import REPO, copy_project

pytestmark = pytest.mark.slow

NAME = "senti-sentiment"
# Deliberately untrained: one epoch at a learning rate that barely moves the weights.
UNTRAINED = {"train.epochs": 1, "model.lstm_units": 2, "train.learning_rate": 0.0001}


@pytest.fixture(scope="module")
def second(trained_project, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the shared project (v1 the champion) retrained with an untrained model."""
    root = copy_project(trained_project[0], tmp_path_factory.mktemp("promote") / "project")
    return root, retrain(root=str(root), overrides=UNTRAINED)


def client_for(root: Path) -> MlflowClient:
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    return MlflowClient()


def tags_of(client: MlflowClient, version: str) -> dict[str, str]:
    return client.get_model_version(NAME, version).tags


def _artifact(key: str, flow_run_id: str) -> str:
    """The Prefect artifact ``key`` that the flow run ``flow_run_id`` created."""
    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(
                any_=[flow_run_id])), limit=50)
    assert found, f"no Prefect artifact {key} from flow run {flow_run_id}"
    return max(found, key=lambda a: a.created).data


def _artifacts_of(client: MlflowClient, version: str) -> tuple[str, str]:
    """The retrain-summary and promotion-decision artifacts of a version's retrain."""
    version_tags = tags_of(client, version)
    return (_artifact("retrain-summary", version_tags[tags.PREFECT_FLOW_RUN]),
            _artifact("promotion-decision", version_tags[tags.DECISION_FLOW_RUN]))


def test_first_version_passes_the_gate_and_becomes_champion(trained_project):
    root, result = trained_project
    promotion = result["promotion"]
    assert result["version"] == "1"
    assert promotion["decision"] == "promoted" and promotion["promoted"]
    assert promotion["champion"] is None and promotion["p_value"] is None
    assert {c["name"] for c in promotion["conditions"]} == {
        "validation", "champion", "baseline", "behaviour"}
    client = client_for(root)
    assert registry.alias_version(NAME, "champion") == "1"
    assert registry.alias_version(NAME, "challenger") is None  # promoted: no longer challenger
    tags_1 = tags_of(client, "1")
    assert tags_1["senti.validation"] == "passed"
    assert tags_1["promote.decision"] == "promoted"
    assert tags_1["promote.champion_version"] == "none"
    assert tags_1["promote.previous_champion"] == "none"
    assert tags_1["promote.flow_run_id"] not in ("", "none")
    assert float(tags_1["promote.challenger.macro_f1"]) == pytest.approx(
        promotion["challenger_metrics"]["macro_f1"], rel=1e-5)
    assert float(tags_1["promote.behaviour_pass_rate"]) >= 0.5
    run = client.get_run(client.get_model_version(NAME, "1").run_id)
    for check in ("negation", "template", "punctuation_width", "trailing_emoji", "traditional"):
        assert 0.0 <= run.data.metrics[f"behaviour.{check}.pass_rate"] <= 1.0
    assert run.data.metrics["gate.promoted"] == 1.0
    assert [r["decision"] for r in lineage.decisions(NAME, "1")] == ["promoted"]
    assert client.get_registered_model(NAME).tags == {}  # the history is the version tags
    # (its Prefect artifacts are in the API of the worker that trained it: the retrains of
    # this module check theirs)


def test_worse_retrain_is_rejected_and_champion_unchanged(second):
    root, result = second
    promotion = result["promotion"]
    assert result["registered"] and result["version"] == "2"
    assert promotion["decision"] == "rejected" and not promotion["promoted"]
    failed = {c["name"] for c in promotion["conditions"] if not c["passed"]}
    assert "macro_f1" in failed and "validation" not in failed
    assert (promotion["challenger_metrics"]["macro_f1"]
            < promotion["champion_metrics"]["macro_f1"])
    assert 0.0 <= promotion["p_value"] <= 1.0
    client = client_for(root)
    assert registry.alias_version(NAME, "champion") == "1"
    assert registry.alias_version(NAME, "challenger") == "2"
    recorded = tags_of(client, "2")
    assert recorded["promote.decision"] == "rejected"
    assert recorded["promote.champion_version"] == "1"
    assert "macro-F1" in recorded["promote.reason"]
    # tags hold 6 significant digits
    assert float(recorded["promote.mcnemar_p_value"]) == pytest.approx(promotion["p_value"],
                                                                       rel=1e-5)
    # the champion was re-scored on the same test split as in its own promotion
    assert float(recorded["promote.champion.macro_f1"]) == pytest.approx(
        float(tags_of(client, "1")["promote.challenger.macro_f1"]), rel=1e-5)
    assert "promote.previous_champion" not in recorded  # it replaced nothing
    assert [r["decision"] for r in lineage.decisions(NAME, "2")] == ["rejected"]
    summary, decision = _artifacts_of(client, "2")
    assert "rejected: @champion unchanged" in decision
    assert "Promotion gate: **rejected**" in summary


def test_forced_promotion_then_rollbacks(second):
    root, _ = second
    forced = promote(root=str(root), force=True, reason="operator test")  # the @challenger: 2
    assert forced["challenger"] == "2" and forced["decision"] == "forced"
    client = client_for(root)
    assert registry.alias_version(NAME, "champion") == "2"
    recorded = tags_of(client, "2")
    assert recorded["promote.decision"] == "forced"
    assert recorded["promote.reason"].startswith("forced: operator test; overrode: macro-F1")
    assert recorded["promote.previous_champion"] == "1"
    assert [r["decision"] for r in lineage.decisions(NAME, "2")] == ["rejected", "forced"]
    assert "v2 promoted to @champion (FORCED)" in _artifact("promotion-decision",
                                                           recorded["promote.flow_run_id"])

    back = rollback(root=str(root), reason="v2 is worse")
    assert (back["from_version"], back["to_version"]) == ("2", "1")
    assert registry.alias_version(NAME, "champion") == "1"
    recorded = tags_of(client, "1")
    assert recorded["promote.decision"] == "rollback"
    assert recorded["promote.reason"] == "v2 is worse"
    assert recorded["promote.champion_version"] == "2"
    assert recorded["promote.flow_run_id"] not in ("", "none")
    assert "promote.challenger.macro_f1" not in recorded  # tags describe the latest decision only
    assert recorded["promote.previous_champion"] == "none"  # v1's own predecessor, kept
    assert "promote.rolled_back" in tags_of(client, "2")
    assert [r["decision"] for r in lineage.decisions(NAME, "1")] == ["promoted", "rollback"]
    assert client.get_registered_model(NAME).tags == {}
    with pytest.raises(PromotionError, match="no earlier champion"):
        rollback(root=str(root))
    assert registry.alias_version(NAME, "champion") == "1"


def test_cli_promote_and_rollback_errors(second):
    root, _ = second
    runner = CliRunner()
    no_reason = runner.invoke(app, ["promote", "--force", "--root", str(root)])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    champion = registry.alias_version(NAME, "champion")
    again = runner.invoke(app, ["promote", "--version", champion, "--root", str(root)])
    assert again.exit_code == 1 and "already the champion" in again.output
    no_earlier = runner.invoke(app, ["rollback", "--root", str(root)])
    assert no_earlier.exit_code == 1 and "no earlier champion" in no_earlier.output
    assert registry.alias_version(NAME, "champion") == champion


def test_batch_predict_flow_writes_version_in_every_row(second):
    root, _ = second
    champion = registry.alias_version(NAME, "champion")
    data = root / "data"  # batch prediction reads and writes under serve.batch_dirs only
    source = data / "in.csv"
    pd.DataFrame({"id": [1, 2, 3, 4], "review": [
        "质量很好，物流也快", "太差了，再也不买了", "這個手機很好用", "quality 很差 😡"]}).to_csv(
        source, index=False)
    out = data / "out" / "predictions.csv"
    report = batch_predict(str(source), str(out), root=str(root), text_column="review")
    assert report["rows"] == 4 and report["model_version"] == champion
    result = pd.read_csv(out, dtype={"model_version": str})
    assert list(result.columns) == ["id", "review", "label", "probability", "prob_negative",
                                    "prob_positive", "known_share", "flag", "model_version"]
    assert result["id"].tolist() == [1, 2, 3, 4]
    assert (result["model_version"] == champion).all()
    assert set(result["label"].dropna()) <= {"negative", "positive"}
    # the same through the CLI; a bad row is named, and nothing half-written is reported as done
    runner = CliRunner()
    ok = runner.invoke(app, ["predict", "--input", str(source), "--output",
                             str(data / "cli.csv"), "--text-column", "review",
                             "--root", str(root)])
    assert ok.exit_code == 0 and f"4 rows -> {data / 'cli.csv'}" in ok.output
    assert pd.read_csv(data / "cli.csv")["label"].dropna().tolist() == \
        result["label"].dropna().tolist()
    spelled = runner.invoke(app, ["predict", "--input", str(source), "--output",
                                  str(data / "v02.csv"), "--text-column", "review", "--version",
                                  "02", "--root", str(root)])  # version 2, as MLflow reads it
    assert spelled.exit_code == 0, spelled.output
    assert pd.read_csv(data / "v02.csv", dtype={"model_version": str})[
        "model_version"].eq("2").all()
    bad = data / "bad.csv"
    bad.write_text("text\n质量很好\n\"  \"\n", encoding="utf-8")
    failed = runner.invoke(app, ["predict", "--input", str(bad), "--output",
                                 str(data / "bad_out.csv"), "--root", str(root)])
    assert failed.exit_code == 1 and "row 1: text is empty" in failed.output
    usage = runner.invoke(app, ["predict", "--input", str(source), "--root", str(root)])
    assert usage.exit_code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_senti_serve_answers_over_http_and_survives_bad_input(second):
    root, _ = second
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "senti"), "serve", "--port", str(port), "--root",
         str(root)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "senti serve exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up in 120 s"
                time.sleep(1)
        status, body = _post(port, {"dataframe_records": [{"text": "质量很好，物流也快"},
                                                          {"text": "太差了，再也不买了"}]})
        assert status == 200 and len(body["predictions"]) == 2
        assert set(body["predictions"][0]) == {"label", "probability", "prob_negative",
                                               "prob_positive", "known_share", "flag"}
        status, body = _post(port, {"inputs": ["质量很好"]})
        assert status == 200 and len(body["predictions"]) == 1
        odd = ["x" * 100_000, "😊😊😊", "這個手機很好用", "quality 很差, not recommended"]
        status, body = _post(port, {"dataframe_records": [{"text": t} for t in odd]})
        assert status == 200 and len(body["predictions"]) == 4
        for bad, problem in [("", "empty"), ("   ", "empty"), (None, "null"),
                             (5, "must be a string")]:
            status, body = _post(port, {"dataframe_records": [{"text": bad}]})
            assert status == 400 and problem in body["message"], (bad, body)
        status, _ = _post(port, {"dataframe_records": [{"text": "还在服务吗"}]})
        assert status == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
