"""`senti serve` and `senti schedule` as a process manager runs them: SIGTERM to the main
process alone stops every process it started; the server's answers carry the out-of-domain
flags and its request limits hold; a @champion no recorded gate decision made is not served
unasked."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from senti import registry, tags
from senti.config import load_context
from tests.conftest import REPO, free_port, make_project

BIN = Path(sys.executable).parent
LABELS = {"negative", "positive"}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _request(port: int, body: bytes, declared: int | None = None) -> tuple[int, dict]:
    """POST ``body`` to /invocations, announcing ``declared`` bytes (default: its size)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body) if declared is None else declared))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _post(port: int, payload: object) -> tuple[int, dict]:
    return _request(port, json.dumps(payload).encode())


class Started:
    """A senti command in its own session (so a failed test can still clean up all of it)."""

    def __init__(self, args: list[str], cwd: Path, **env: str) -> None:
        env = {**os.environ, **env}
        env.pop("MLFLOW_TRACKING_URI", None)  # an earlier test's store: each finds its own
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen([str(BIN / "senti"), *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)

    def wait_until(self, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, self.process.stdout.read()
            assert time.monotonic() < deadline, f"not ready in {timeout} s"
            time.sleep(0.5)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def terminate_main_only(self) -> list[psutil.Process]:
        """SIGTERM to the main process alone, as a process manager sends it; wait for it to
        exit. Returns the processes it had started that are still alive 30 s later."""
        started = self.descendants()
        os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=90)
        return psutil.wait_procs(started, timeout=30)[1]

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its session's process group


@pytest.mark.slow
def test_senti_serve_flags_bounds_requests_and_stops_whole_on_sigterm(trained_project,
                                                                     tmp_path):
    port = free_port()
    server = Started(["serve", "--port", str(port), "--workers", "2", "--root",
                      str(trained_project[0])], cwd=tmp_path)  # its log in tmp_path/.senti
    try:
        server.wait_until(lambda: _listening(port) and _post(port, {"inputs": ["好"]})[0] == 200,
                          timeout=240)
        status, body = _post(port, {"dataframe_records": [{"text": "质量很好，物流也快"},
                                                          {"text": "hello world 😀"}]})
        assert status == 200, body
        known, foreign = body["predictions"]
        assert known["label"] in LABELS and known["flag"] in ("ok", "low_coverage")
        assert 0 < known["known_share"] <= 1
        assert foreign["label"] is None and foreign["probability"] is None
        assert foreign["flag"] == "no_chinese" and foreign["known_share"] == 0

        texts = ["质量很好，物流也快", "太差了，再也不买了", "一般般吧", "还行"]
        alone = {t: _post(port, {"inputs": [t]})[1]["predictions"][0] for t in texts}
        with ThreadPoolExecutor(8) as clients:  # both workers, requests merged in each
            together = list(clients.map(lambda t: (t, _post(port, {"inputs": [t]})), texts * 4))
        for text, (status, body) in together:
            assert status == 200, body
            answer, expected = body["predictions"][0], alone[text]
            assert (answer["label"], answer["flag"]) == (expected["label"], expected["flag"])
            assert answer["prob_positive"] == pytest.approx(expected["prob_positive"], abs=1e-5)

        status, body = _post(port, {"inputs": ["好"] * 1001})
        assert status == 400 and (
            "1001 rows in one request; the limit is 1000 (serve.max_rows_per_request): split "
            "the request") in body["message"]
        status, body = _request(port, b"{", declared=2_000_000)  # refused before it is sent
        assert status == 413 and body["message"].startswith(
            "request body is 2000000 bytes; the limit is 1048576 bytes (serve.max_body_bytes)")
        assert _post(port, {"inputs": ["还在服务吗"]})[0] == 200

        assert len(server.descendants()) >= 2  # the two workers
        assert server.terminate_main_only() == []
        assert not _listening(port)
    finally:
        server.kill_all()


@pytest.mark.slow
def test_senti_schedule_stops_its_prefect_server_on_sigterm_while_starting(tmp_path):
    """A stop that arrives while the local Prefect server starts (before Prefect's runner
    handles signals) still stops the server: it is senti's child, and nothing outlives it."""
    project = make_project(tmp_path / "project")
    port = free_port()
    scheduler = Started(["schedule", "--root", str(project)], cwd=tmp_path,
                        PREFECT_HOME=str(tmp_path / "prefect-home"),
                        PREFECT_SERVER_API_PORT=str(port))
    try:
        scheduler.wait_until(lambda: _listening(port), timeout=180)
        assert any("prefect" in " ".join(p.cmdline()) for p in scheduler.descendants())
        assert scheduler.terminate_main_only() == []
        assert not _listening(port)
        output = scheduler.process.stdout.read()
        assert scheduler.process.returncode == 0, output
        assert output.rstrip().endswith("senti schedule stopped."), output
    finally:
        scheduler.kill_all()


@pytest.fixture
def unrecorded(tmp_path) -> tuple[Path, str]:
    """A project whose registry has one version, made @champion by moving the alias by hand
    (no model behind it: serving must stop before it is loaded); its port is taken."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    client = MlflowClient()
    client.create_registered_model(params.registry.model_name)
    version = client.create_model_version(params.registry.model_name, "file:///nowhere").version
    client.set_registered_model_alias(params.registry.model_name, tags.CHAMPION, version)
    return root, str(version)


def test_only_a_recorded_decision_makes_a_servable_champion(unrecorded):
    root, version = unrecorded
    name = load_context(root)[0].registry.model_name
    assert registry.champion_decision(name) == (version, None)
    for decision, recorded in (("rejected", None), ("promoted", "promoted"),
                               ("rollback", "rollback")):
        MlflowClient().set_model_version_tag(name, version, tags.DECISION, decision)
        assert registry.champion_decision(name) == (version, recorded)
    MlflowClient().delete_registered_model_alias(name, tags.CHAMPION)
    with pytest.raises(LookupError, match=f"{name} has no @champion"):
        registry.champion_decision(name)


def _last_line(done: subprocess.CompletedProcess) -> str:
    return [line for line in done.stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_serve_refuses_an_unrecorded_champion_unless_told(unrecorded):
    root, version = unrecorded
    name = load_context(root)[0].registry.model_name
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        def serve(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "senti"), "serve", "--port", port, *args,
                                   "--root", str(root)], cwd=root.parent, env=env,
                                  capture_output=True, text=True, timeout=300)
        done = serve()
        assert done.returncode == 1 and _last_line(done).startswith(
            f"@champion is {name} v{version}, but no recorded gate decision made it champion "
            "(its alias was moved outside senti): make a version champion with senti promote, "
            "or serve this one with --allow-unrecorded"), done.stderr
        done = serve("--allow-unrecorded")  # served, with a warning: it gets to the port
        assert done.returncode == 1 and "WARNING: @champion is" in done.stdout
        assert _last_line(done).startswith(f"cannot listen on 127.0.0.1:{port}: "), done.stderr
