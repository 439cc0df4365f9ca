"""Shared fixtures: throw-away senti projects (real git + DVC repos), the Prefect harness, and
one project trained once per session that every slow test starts from."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

# DVC's first import goes through senti's DVC module, which undoes its swap of
# sys.stdout/sys.stderr: test modules import dvc too, and with the swap in place TensorFlow's
# absl handler closed pytest's capture file (0 tests collected, or an INTERNALERROR).
import senti.versioning  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# Files a project needs: the pipeline definition, params, the user dictionary, the code that
# dvc.yaml lists as stage dependencies, and the DVC config with its default remote (a
# directory next to the project).
PROJECT_FILES = ("dvc.yaml", "params.yaml", "config", "src", ".gitignore")

# Small and fast, but the real corpus, real jieba, real TensorFlow.
TINY_PARAMS = {
    "data.sample_size": 1200,
    "model.embed_dim": 16,
    "model.lstm_units": 8,
    "model.maxlen": 48,
    "model.spatial_dropout": 0.1,
    "train.learning_rate": 0.01,  # a tiny model on ~1,000 texts must learn in 2 epochs
    "train.epochs": 2,
    # no adversarial step: it doubles a step and its tracing (~6 s of every tiny training);
    # tests/model trains it through the same train_model, alone and on two replicas
    "train.adversarial_eps": 0.0,
    "train.batch_size": 16,  # ~120 steps in 2 epochs: with fewer, the tiny model stays near chance
    "embeddings.epochs": 10,  # real word2vec on the sample (~1 s); the news corpus is tested alone
    "embeddings.extra_corpus": "",
}
# The shared trained project's gate: on 1,200 texts the TF-IDF baseline beats a 2-epoch tiny
# BiLSTM, and the tiny model passes about half of the behavioural suite. Relaxed so that its
# first version becomes the champion that promotion, lineage and serving tests start from.
SHARED_GATE = {"promote.require_beat_baseline": False, "promote.min_behaviour_pass_rate": 0.5}

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # every test project uses its own SQLite store
# DVC runs `python -m senti.stages...` in a shell: it must be this environment's python.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def set_params(root: Path, values: dict) -> None:
    """Edit params.yaml of a test project (dotted keys)."""
    path = root / "params.yaml"
    tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    for dotted, value in values.items():
        *sections, leaf = dotted.split(".")
        node = tree
        for part in sections:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False), encoding="utf-8")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


def make_project(root: Path, params: dict | None = None) -> Path:
    """A fresh senti project in ``root``: copied pipeline files, git repo, DVC repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    set_params(root, {**TINY_PARAMS, **(params or {})})
    git(root, "init", "-q")
    git(root, "config", "user.email", "tests@senti.invalid")
    git(root, "config", "user.name", "senti tests")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "test project")
    return root


def _group(nodeid: str) -> str:
    """A test's group for the two workers of ``make test`` (pytest-xdist): its module, so the
    module's fixtures are built once, except that the tests on the team stack share one group,
    so the stack is started once."""
    return "tests/stack" if nodeid.startswith("tests/stack/") else nodeid.split("::")[0]


# Fixtures that start a server or a cluster (10-20 s): a group using one is a long one.
STARTUP_FIXTURES = {"prefect_harness", "dask_engine"}


def _groups_using(items: list[pytest.Item], fixtures: set[str]) -> set[str]:
    return {_group(item.nodeid) for item in items
            if fixtures & set(getattr(item, "fixturenames", ()))}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On an xdist worker: the longest groups first, in a collection order the scheduler
    keeps, so that both workers stay busy to the end (with a long group last, one worker
    would finish it alone). The first group is one that needs the :func:`trained_project`
    (that worker trains it); the slow groups that need none come next, so the other worker
    runs them while it trains instead of waiting for it; then the other slow groups; then
    the groups that start a server or a cluster."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow = {_group(item.nodeid) for item in items if item.get_closest_marker("slow")}
        trained = _groups_using(items, {"trained_project"})
        starting = _groups_using(items, STARTUP_FIXTURES)
        first = next((_group(item.nodeid) for item in items
                      if _group(item.nodeid) in slow & trained), None)

        def rank(item: pytest.Item) -> int:
            group = _group(item.nodeid)
            if group == first:
                return 0
            if group in slow:
                return 1 if group not in trained else 2
            return 3 if group in starting else 4

        items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole groups (:func:`_group`) to one worker each. (xdist's own ``--dist loadgroup``
    does not group on pytest 9: it renames the node ids through an attribute pytest 9 no
    longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order of the collection: slow first

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return ByGroup(config, log)


@pytest.fixture(autouse=True)
def _forget_mlflow_artifact_locations():
    """MLflow caches each run's artifact repository by run id for the whole process, whatever
    the store: a copied project's runs have the original's ids, so without this a test
    writing through a copy would write into the original's artifacts."""
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    """A project retrained once with the tiny params (version 1, the champion, its data
    pushed to the project's default DVC remote) and the flow's result. Read it, never change
    it: a test that retrains, promotes or edits files works on :func:`copy_project`.

    Under xdist it is trained once for all workers: the first worker that needs it trains it
    while holding a file lock, and every worker reads its own copy (with its remote), since
    DVC locks a repository even to read it. Its Prefect records are in the Prefect API of the
    worker that trained it (each worker has its own :func:`prefect_harness`): read them only
    from a project's own retrains."""
    from flows.retrain import retrain

    own = tmp_path_factory.getbasetemp() / "shared"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = make_project(own / "project", SHARED_GATE)
        return root, retrain(root=str(root))
    common = tmp_path_factory.getbasetemp().parent / "trained"
    result = common / "result.json"
    with FileLock(common.parent / "trained.lock"):
        if not result.exists():
            root = make_project(common / "project", SHARED_GATE)
            result.write_text(json.dumps(retrain(root=str(root))), encoding="utf-8")
    shutil.copytree(common / "senti-dvc-remote", own / "senti-dvc-remote")
    return (copy_project(common / "project", own / "project"),
            json.loads(result.read_text(encoding="utf-8")))


def copy_project(root: Path, dest: Path) -> Path:
    """A copy of a project (git repo, DVC cache, MLflow store and artifacts) to change freely.

    MLflow records absolute artifact locations, so every text value of the copied SQLite
    store that names the original project is rewritten to name the copy: runs, tables and
    models written through the copy never touch the original's artifacts."""
    from senti.config import load_context

    shutil.copytree(root, dest, symlinks=True)
    old, new = str(root.resolve()), str(dest.resolve())
    with closing(sqlite3.connect(load_context(dest)[1].mlflow_db)) as db, db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column, kind in db.execute(f"SELECT name, type FROM pragma_table_info('{table}')"):
                if kind.upper() in ("TEXT", "VARCHAR") or kind.upper().startswith("VARCHAR"):
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                               f'WHERE instr("{column}", ?) > 0', (old, new, old))
    return dest


class Receiver(HTTPServer):
    """Collects the JSON bodies POSTed to it; answers ``status`` (with a ``Location`` header
    when ``location`` is set). Records the paths it is sent a GET for, and answers 200."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.gets: list[str] = []
        self.status = status
        self.location = ""

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:
                length = int(handler.headers["Content-Length"])
                self.bodies.append(json.loads(handler.rfile.read(length)))
                handler.send_response(self.status)
                if self.location:
                    handler.send_header("Location", self.location)
                handler.end_headers()

            def do_GET(handler) -> None:
                self.gets.append(handler.path)
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
