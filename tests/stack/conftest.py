"""The team stack for the tests marked ``stack``: PostgreSQL, moto's S3 server, ``mlflow
server`` and ``prefect server`` as local processes (senti.stack), brought up once per session
with ``senti stack up`` and stopped with ``senti stack down``, after which no process of it
may be left. Every test here runs with the stack's client environment.

Needs PostgreSQL (Debian's ``postgresql`` package; .ci/run installs it); deselect with
``-m "not stack"`` where it is missing. Bringing the stack up takes 15-45 s on 2 cores: every
test here is also marked ``slow``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from senti import stack

SENTI = str(Path(sys.executable).parent / "senti")


def senti(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``senti stack ...`` run in ``home`` (its log goes to ``home/.senti/logs``)."""
    return subprocess.run([SENTI, "stack", *args, "--root", str(home)], cwd=home,
                          capture_output=True, text=True, timeout=300)


def _running(pid: int) -> bool:
    try:  # a zombie has ended; only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory) -> Iterator[Path]:
    """The directory ``senti stack up`` ran in (its record: ``.senti/stack.json``)."""
    home = tmp_path_factory.mktemp("stack")
    started = senti(home, "up")
    if started.returncode:
        pytest.fail(f"senti stack up failed: {started.stdout}{started.stderr}\n"
                    "(deselect the stack tests with -m 'not stack')")
    print(started.stdout.splitlines()[-1])  # "# up in N s; memory: ..."
    running = stack.load(home / ".senti" / "stack.json")
    yield home
    pids = stack.processes(running)
    stopped = senti(home, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in pids if _running(pid)], "stack processes left after down"
    assert not Path(running.base).exists()


@pytest.fixture(scope="session")
def team_stack(stack_home) -> stack.Stack:
    return stack.load(stack_home / ".senti" / "stack.json")


@pytest.fixture
def stack_client_env(team_stack, monkeypatch) -> None:
    """The stack's client environment; tests/code/test_champion_history.py's store is its
    tracking server. Not autouse: a test that builds the session's ``trained_project`` must
    build it on its own embedded store first."""
    for key, value in team_stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SENTI_TEST_TRACKING_URI", team_stack.env["MLFLOW_TRACKING_URI"])
