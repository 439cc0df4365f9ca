"""`senti schedule` and `senti deploy` against a real Prefect API (the session's test server):
the deployments of flows/deployments.py served by a real runner process and triggered on
demand run the real retrain flow; the same deployments registered for a process work pool
are run by a real worker; without an API URL, Prefect's own background server schedules the
nightly runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
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
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.server.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import deployments
from senti import registry, tags, versioning
from senti.config import ParamsError, apply_overrides, load_context, load_params
from tests.conftest import copy_project, free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RETRAIN = "retrain/retrain-nightly"
READY = "Your deployments are being served"


def _env(**extra: str) -> dict[str, str]:
    # the served runner looks for runs every second, not every 10 s as by default
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", **extra}
    # set by an earlier registry.configure() in this process: a child must pick its own store
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class Served:
    """`senti schedule` in a subprocess, its output collected line by line."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            [str(BIN / "senti"), "schedule", "--root", str(root)], cwd=root, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"senti schedule exited:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.2)

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 90 s after {sig.name}:\n{self.output}") \
                from None
        finally:
            if self.process.poll() is None:
                self.process.kill()


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory) -> Path:
    return copy_project(trained_project[0], tmp_path_factory.mktemp("scheduled") / "project")


@pytest.fixture(scope="module")
def served(project, prefect_harness):
    server = Served(project, _env())
    server.wait_for(READY)
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
    params, layout = load_context(project)
    registry.configure(layout, params.registry.experiment)
    return sorted(MlflowClient().search_model_versions("name = 'senti-sentiment'"),
                  key=lambda v: int(v.version))


def _trigger(name: str, **parameters):
    return run_deployment(name, parameters=parameters or None, timeout=600, poll_interval=1)


def test_served_deployments_carry_the_declared_schedule_and_no_root(served, project):
    built = {d.name: d for d in deployments.deployments(project)}
    for name, declared in built.items():
        deployment = _deployment(f"{declared.flow_name}/{name}")
        assert deployment.parameters == declared.parameters
        assert "root" not in deployment.parameters  # fixed when served, not per run
        assert not deployment.paused
    nightly = _deployment(RETRAIN)
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == \
        [(deployments.NIGHTLY_CRON, deployments.TIMEZONE, True)]
    assert nightly.global_concurrency_limit.limit == 1  # one retrain at a time


def test_unchanged_rerun_is_a_noop_that_says_nothing_changed(served, project):
    (before,) = _versions(project)
    run = _trigger(RETRAIN)
    assert run.state.type == StateType.COMPLETED, (run.state.message, served.output)
    (after,) = _versions(project)  # nothing registered
    # the gate was not rerun either: same decision, same time
    assert {k: v for k, v in after.tags.items() if k.startswith(tags.PROMOTE_PREFIX)} == \
        {k: v for k, v in before.tags.items() if k.startswith(tags.PROMOTE_PREFIX)}
    summary = _artifact(run.id)
    assert summary.startswith("# Retrain: nothing changed")
    for stage in versioning.stages(project)[1:]:
        assert f"| {stage} | skipped |" in summary
    lock = versioning.read_lock(project)
    assert "| ingest | re-read the source; output unchanged (md5 " \
        f"`{versioning.output_hash(lock, 'ingest')}`) |" in summary
    assert f"`{versioning.inputs_fingerprint(lock)}`" in summary
    assert f"version **{before.version}**" in summary and "judged already" in summary


def test_triggered_deployment_retrains_and_registers(served, project):
    params_before = (project / "params.yaml").read_text()
    # an evaluate-only param: DVC reruns just that stage, and the new inputs register a version
    run = _trigger(RETRAIN, overrides={"evaluate.baseline_c": 0.5})
    assert run.state.type == StateType.COMPLETED, (run.state.message, served.output)
    version = _versions(project)[-1]
    assert str(version.version) == "2"
    run_tags = MlflowClient().get_run(version.run_id).data.tags
    assert run_tags[tags.PREFECT_FLOW_RUN] == str(run.id)
    assert run_tags[tags.PREFECT_DEPLOYMENT] == RETRAIN.split("/")[-1]
    assert run_tags[tags.GIT_COMMIT]
    assert MlflowClient().get_run(version.run_id).data.params["evaluate.baseline_c"] == "0.5"
    summary = _artifact(run.id)
    assert summary.startswith("# Retrain\n") and "registered new version" in summary
    assert "| train | skipped |" in summary and "| evaluate | ran |" in summary
    assert tags.DECISION in version.tags  # the gate judged it
    assert (project / "params.yaml").read_text() == params_before


def test_deployment_overrides_are_rejected_like_set(served, project):
    params_before = (project / "params.yaml").read_text()
    with pytest.raises(ParamsError) as cli_error:  # what `senti retrain --set` reports
        apply_overrides(load_params(project).raw, {"train.epoch": 3})
    versions = len(_versions(project))
    run = _trigger(RETRAIN, overrides={"train.epoch": 3})
    assert run.state.type == StateType.FAILED
    assert str(cli_error.value) in run.state.message
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert tasks == []  # rejected before any stage
    assert (project / "params.yaml").read_text() == params_before
    assert len(_versions(project)) == versions


def test_a_run_cannot_point_a_deployment_at_another_directory(served, project, tmp_path):
    versions = len(_versions(project))
    run = _trigger(RETRAIN, root=str(tmp_path))
    assert run.state.type == StateType.FAILED
    assert f"this deployment runs the project at {project} only" in run.state.message
    assert len(_versions(project)) == versions


def test_sigint_stops_serving_cleanly_and_a_restart_resumes(served, project):
    assert served.stop(signal.SIGINT) == 0, served.output
    assert served.output.rstrip().endswith("senti schedule stopped.")
    assert _deployment(RETRAIN).paused  # no runs pile up while nothing serves them
    again = Served(project, _env())
    again.wait_for(READY)
    assert not _deployment(RETRAIN).paused  # (PrefectHQ/prefect#16363)
    assert again.stop(signal.SIGTERM) == 0, again.output


def test_deploy_to_a_process_pool_and_a_worker_runs_it(project, prefect_harness, tmp_path):
    def run(*args: str, timeout: float = 180) -> str:
        done = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=project, env=_env(),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("prefect", "work-pool", "create", "--type", "process", deployments.POOL, "--overwrite")
    assert "4 deployment(s) registered" in run("senti", "deploy", "--root", str(project))
    for declared in deployments.deployments(project):
        deployment = _deployment(f"{declared.flow_name}/{declared.name}")
        assert deployment.work_pool_name == deployments.POOL
        assert deployment.entrypoint == declared.entrypoint
        assert deployment.parameters == declared.parameters
    # a worker of the pool runs a deployment (the cheap one: batch prediction)
    texts = project / "data" / "texts.csv"  # the runs may use files under data/ only
    pd.DataFrame({"text": ["质量很好，物流也快", "太差了"]}).to_csv(texts, index=False)
    out = project / "data" / "predicted.csv"
    flow_run = run_deployment("batch-predict/batch-predict", timeout=0, parameters={
        "input_csv": "data/texts.csv", "output_csv": "data/predicted.csv", "version": "1"})
    run("prefect", "worker", "start", "--pool", deployments.POOL, "--run-once", timeout=300)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.type == StateType.COMPLETED, state.message
    assert len(pd.read_csv(out)) == 2


def test_without_an_api_url_a_local_server_schedules_the_cron_runs(project, tmp_path):
    """Prefect's ephemeral API runs no scheduler; the background server senti schedule
    starts does: the nightly runs it inserts are at the declared cron times."""
    port = free_port()
    env = _env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_API_PORT=str(port))
    del env["PREFECT_API_URL"]
    served = Served(project, env)
    api = f"http://127.0.0.1:{port}/api"
    try:
        served.wait_for(READY)
        expected = [t.astimezone(UTC) for t in asyncio.run(CronSchedule(
            cron=deployments.NIGHTLY_CRON, timezone=deployments.TIMEZONE).get_dates(n=3))]
        with temporary_settings({PREFECT_API_URL: api}):
            deployment_id = _deployment(RETRAIN).id
            deadline = time.monotonic() + 60
            while True:  # the scheduler's loop inserts them within seconds
                with get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[deployment_id])))
                if len(runs) >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(1)
        starts = sorted(r.expected_start_time.astimezone(UTC) for r in runs)
        assert starts[:3] == expected, served.output
        assert all(r.parameters == {"overrides": {}} for r in runs)
    finally:
        assert served.stop(signal.SIGINT) == 0, served.output
    assert served.output.rstrip().endswith("senti schedule stopped.")
    with socket.socket() as sock:  # the background server went with it
        assert sock.connect_ex(("127.0.0.1", port)) != 0
