"""`senti schedule` and `prefect deploy --all` against a real Prefect API (the session's test
server): the deployments of prefect.yaml served by a real runner process and triggered on
demand run a real retrain (tiny params); the unchanged rerun is a no-op that registers nothing
and says so in a Prefect artifact; the same file deploys to a process work pool whose worker
runs a flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import schedule
from senti import lineage, registry
from senti.config import Layout, ParamsError, apply_overrides, load_params
from tests.conftest import REPO, make_project

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SPECS = {spec.name: spec for spec in schedule.load_deployments(REPO / "prefect.yaml")}
RETRAIN = "retrain/retrain-nightly"


def _env() -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    # set by an earlier registry.configure() in this process: a child must pick its own store
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class Served:
    """`senti schedule` in a subprocess, its output collected line by line."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [str(BIN / "senti"), "schedule", "--root", str(root), "--prefect-yaml",
             str(REPO / "prefect.yaml")], cwd=root, env=env or _env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"senti schedule exited:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.2)

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("scheduled"))


@pytest.fixture(scope="module")
def served(project, prefect_harness):
    server = Served(project)
    server.wait_for("Ctrl-C stops serving")
    yield server
    if server.process.poll() is None:
        server.stop(signal.SIGTERM)


def _deployment(name: str):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _artifact(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            key=ArtifactFilterKey(any_=["retrain-summary"])))
    return artifact.data


def _versions(project: Path) -> list:
    registry.configure(Layout(project), "senti")
    return MlflowClient().search_model_versions("name = 'senti-sentiment'")


def _trigger(name: str, **parameters):
    return run_deployment(name, parameters=parameters or None, timeout=600, poll_interval=1)


def test_served_deployments_are_prefect_yamls(served, project):
    for spec in SPECS.values():
        flow_name = schedule.resolve_flow(spec, REPO).name
        deployment = _deployment(f"{flow_name}/{spec.name}")
        assert [(s.schedule.cron, s.schedule.timezone, s.active)
                for s in deployment.schedules] == [(c.cron, c.timezone, c.active)
                                                   for c in spec.schedules]
        assert deployment.parameters == {**spec.parameters, "root": str(project)}
        assert not deployment.paused
    (cron,) = SPECS["retrain-nightly"].schedules
    first = schedule.next_runs(cron)[0].strftime("%Y-%m-%d %H:%M %Z")
    assert f"cron {cron.cron!r} ({cron.timezone}); next runs: {first}" in served.output


def test_triggered_deployment_retrains_and_registers(served, project):
    run = _trigger(RETRAIN)
    assert run.state.type == StateType.COMPLETED, (run.state.message, served.output)
    (version,) = _versions(project)
    run_tags = MlflowClient().get_run(version.run_id).data.tags
    assert run_tags["prefect.flow_run_id"] == str(run.id)
    assert run_tags["prefect.deployment"] == RETRAIN.split("/")[-1]
    assert run_tags["git.commit"]
    summary = _artifact(run.id)
    assert summary.startswith("# Retrain\n") and "registered new version" in summary
    assert "promote.decision" in version.tags  # the gate judged it


def test_unchanged_rerun_is_a_noop_that_says_nothing_changed(served, project):
    (before,) = _versions(project)
    experiment = MlflowClient().get_run(before.run_id).info.experiment_id
    runs_before = len(MlflowClient().search_runs([experiment]))
    run = _trigger(RETRAIN)
    assert run.state.type == StateType.COMPLETED, (run.state.message, served.output)
    (after,) = _versions(project)  # nothing registered
    assert after.version == before.version
    # the gate was not rerun either: same decision, same time, no new MLflow run
    assert {k: v for k, v in after.tags.items() if k.startswith("promote.")} == \
        {k: v for k, v in before.tags.items() if k.startswith("promote.")}
    assert len(MlflowClient().search_runs([experiment])) == runs_before
    summary = _artifact(run.id)
    assert summary.startswith("# Retrain: nothing changed")
    for stage in ("validate", "prepare", "segment", "vocab", "embeddings", "train", "evaluate"):
        assert f"| {stage} | skipped |" in summary
    lock = lineage.read_lock(project / "dvc.lock")
    assert "| ingest | re-read the source; output unchanged (md5 " \
        f"`{lock['ingest']['outs'][0]['md5']}`) |" in summary
    assert f"`{lineage.inputs_fingerprint(lock)}`" in summary
    assert f"version **{before.version}**" in summary and "judged already" in summary


def test_deployment_overrides_are_rejected_like_set(served, project):
    params_before = (project / "params.yaml").read_text()
    with pytest.raises(ParamsError) as cli_error:  # what `senti retrain --set` reports
        apply_overrides(load_params(project).raw, {"train.epoch": 3})
    run = _trigger(RETRAIN, overrides={"train.epoch": 3})
    assert run.state.type == StateType.FAILED
    assert str(cli_error.value) in run.state.message
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert tasks == []  # rejected before any stage
    assert (project / "params.yaml").read_text() == params_before
    assert len(_versions(project)) == 1


def test_sigint_stops_serving_cleanly_and_a_restart_resumes(served, project):
    assert served.stop(signal.SIGINT) == 0, served.output
    assert "SIGINT received: stopping..." in served.output
    assert served.output.rstrip().endswith("senti schedule stopped.")
    assert _deployment(RETRAIN).paused  # no runs pile up while nothing serves them
    again = Served(project)
    again.wait_for("Ctrl-C stops serving")
    assert not _deployment(RETRAIN).paused  # (PrefectHQ/prefect#16363)
    assert again.stop(signal.SIGTERM) == 0, again.output
    assert "SIGTERM received: stopping..." in again.output


def test_prefect_deploy_all_to_a_process_pool_and_a_worker_runs_it(served, project,
                                                                   tmp_path):
    def prefect(*args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    pool = SPECS["retrain-nightly"].work_pool
    prefect("work-pool", "create", "--type", "process", pool, "--overwrite")
    prefect("--no-prompt", "deploy", "--all")
    for spec in SPECS.values():
        deployment = _deployment(f"{schedule.resolve_flow(spec, REPO).name}/{spec.name}")
        assert deployment.work_pool_name == pool
        assert deployment.entrypoint == spec.entrypoint
        assert deployment.parameters == spec.parameters
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == \
            [(c.cron, c.timezone) for c in spec.schedules]
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                          {"directory": str(REPO)}}]
    # a worker of the pool runs a deployment (the cheap one: batch prediction)
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["质量很好，物流也快", "太差了"]}).to_csv(texts, index=False)
    out = tmp_path / "predicted.csv"
    run = run_deployment("batch-predict/batch-predict", timeout=0, parameters={
        "root": str(project), "input_csv": str(texts), "output_csv": str(out),
        "version": "1"})  # the tiny model need not have passed the gate
    prefect("worker", "start", "--pool", pool, "--run-once", timeout=300)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.type == StateType.COMPLETED, state.message
    assert len(pd.read_csv(out)) == 2


def test_without_an_api_url_a_local_server_schedules_the_cron_runs(project, tmp_path):
    """Prefect's ephemeral API runs no scheduler; the server senti schedule starts does: the
    nightly runs it inserts are at the cron times senti schedule printed."""
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    served = Served(project, env)
    try:
        served.wait_for("Ctrl-C stops serving")
        api = served.output.split("Prefect API: ")[1].split()[0]
        (cron,) = SPECS["retrain-nightly"].schedules
        expected = [t.astimezone(UTC) for t in schedule.next_runs(cron, n=3)]
        with temporary_settings({PREFECT_API_URL: api}):
            deployment_id = _deployment(RETRAIN).id
            deadline = time.monotonic() + 60
            while True:  # the scheduler's loop inserts them within seconds
                with get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            id=DeploymentFilterId(any_=[deployment_id])),
                        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                if runs or time.monotonic() > deadline:
                    break
                time.sleep(1)
        starts = sorted(r.expected_start_time.astimezone(UTC) for r in runs)
        assert starts[:3] == expected, served.output
        assert all(r.parameters["root"] == str(project) for r in runs)
    finally:
        assert served.stop(signal.SIGINT) == 0, served.output
    assert served.output.rstrip().endswith("senti schedule stopped.")
    port = int(api.rsplit(":", 1)[1].split("/")[0])
    assert schedule._port_free(port)  # the local server went with it
