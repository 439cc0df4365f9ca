"""The deployments on the team stack's Prefect server, run by a worker of a process work pool:
`senti deploy --pool`, `prefect worker start`, two runs of retrain-nightly started together.
The deployment's concurrency limit (1) makes the second wait until the first has finished;
both then complete. The project is a copy of the session's trained one, so DVC skips every
stage but ingest: what is tested is the orchestration, not training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import copy_project

pytestmark = [pytest.mark.stack, pytest.mark.slow]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _run(*command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_worker_runs_the_nightly_retrain_one_run_at_a_time(
        trained_project, team_stack, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    root = copy_project(trained_project[0], tmp_path / "project")
    pool = f"senti-{tmp_path.name}"[:50]
    env = {**os.environ, **team_stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("SENTI_TEST_TRACKING_URI", None)
    _run(str(BIN / "prefect"), "work-pool", "create", "--type", "process", pool, env=env,
         cwd=root)
    deployed = _run(str(BIN / "senti"), "deploy", "--pool", pool, "--root", str(root), env=env,
                    cwd=root)
    assert f"registered for work pool {pool!r}" in deployed
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool],
                              cwd=root, env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    settings = {PREFECT_API_URL: team_stack.env["PREFECT_API_URL"],
                PREFECT_API_AUTH_STRING: team_stack.env["PREFECT_API_AUTH_STRING"]}
    try:
        with temporary_settings(settings), get_client(sync_client=True) as client:
            runs = [run_deployment("retrain/retrain-nightly", timeout=0).id for _ in range(2)]
            deadline = time.monotonic() + 540
            while True:
                states = [client.read_flow_run(run).state for run in runs]
                if all(state and state.type.value in FINAL for state in states):
                    break
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, f"runs not finished: {states}"
                time.sleep(2)
            assert [state.type.value for state in states] == ["COMPLETED", "COMPLETED"], \
                (tmp_path / "worker.log").read_text()
            histories = [sorted(client.read_flow_run_states(run), key=lambda s: s.timestamp)
                         for run in runs]
    finally:
        # Prefect's worker turns SIGTERM into SIGINT for itself. Here, after these two runs,
        # it then idled on for the whole minute this test used to wait, every thread idle
        # (py-spy); on a plain local server, a worker that ran the same two runs stopped in
        # 0.5 s. So 10 s for it, then a second SIGTERM, which Prefect turns into SIGKILL.
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=30)
        worker_log.close()

    def running(history) -> tuple[float, float]:
        """When the run started running and when it reached its final state."""
        start = next(s.timestamp for s in history if s.type.value == "RUNNING")
        return start.timestamp(), history[-1].timestamp.timestamp()

    first, second = sorted(map(running, histories))
    assert first[1] <= second[0], "the two retrains ran at the same time"
    waited = [s.name for history in histories for s in history]
    assert "AwaitingConcurrencySlot" in waited, waited
