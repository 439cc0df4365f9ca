"""The project lock and the workspace journal (senti.workspace), on real files and processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from senti import workspace

OUTPUTS = ["data/raw/corpus.csv", "models/bilstm", "reports/metrics.json"]


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (the journal's own dir excluded)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".senti" not in p.parts}


def _project(root: Path) -> Path:
    for rel, text in {"params.yaml": "train:\n  epochs: 12\n", "dvc.lock": "schema: '2.0'\n",
                      "data/raw/corpus.csv": "text,label\n好,positive\n",
                      "models/bilstm/model.keras": "weights"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _run_changes(root: Path) -> None:
    """What a run does: edit params and the lock, replace and add outputs, delete one."""
    (root / "params.yaml").write_text("train:\n  epochs: 1\n")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "data/raw/corpus.csv").write_text("text,label\nbad,bad\n")
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/metrics.json").write_text("{}")  # did not exist before
    (root / "models/bilstm/model.keras").unlink()
    (root / "models/bilstm/other.bin").write_bytes(b"\0")


def test_restore_puts_back_every_byte_and_removes_what_the_run_created(tmp_path):
    root = _project(tmp_path)
    before = _tree(root)
    workspace.begin(root, OUTPUTS)
    _run_changes(root)
    changed = workspace.restore(root)
    assert _tree(root) == before
    assert set(changed) == {"params.yaml", "dvc.lock", *OUTPUTS}
    assert not (root / ".senti/journal").exists()


def test_commit_keeps_the_run_and_recover_has_nothing_to_do(tmp_path):
    root = _project(tmp_path)
    workspace.begin(root, OUTPUTS)
    _run_changes(root)
    after = _tree(root)
    workspace.commit(root)
    assert workspace.recover(root) == []
    assert _tree(root) == after


def test_a_restore_interrupted_half_way_completes_when_run_again(tmp_path):
    root = _project(tmp_path)
    before = _tree(root)
    workspace.begin(root, OUTPUTS)
    _run_changes(root)
    journal = root / ".senti/journal"
    # as if killed after moving params.yaml back: its saved copy is gone, the rest is not
    (root / "params.yaml").unlink()
    (journal / "files/params.yaml").replace(root / "params.yaml")
    assert workspace.recover(root)  # the next run finishes the job
    assert _tree(root) == before


# A commit killed after its first N deletions (rmtree deletes with os.unlink).
KILLED_COMMIT = """
import os, signal, sys
from senti import workspace
left, unlink = int(sys.argv[2]), os.unlink
def dying_unlink(*args, **kwargs):
    global left
    if left == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    left -= 1
    unlink(*args, **kwargs)
os.unlink = dying_unlink
workspace.commit(sys.argv[1])
"""


def test_a_commit_killed_at_any_point_leaves_the_old_or_the_new_workspace(tmp_path):
    journaled = 5  # params.yaml, dvc.lock, the corpus, the model file and the manifest
    for deletions in range(4 * journaled):  # until a commit runs to its end
        root = _project(tmp_path / str(deletions))
        before = _tree(root)
        workspace.begin(root, OUTPUTS)
        assert sum(p.is_file() for p in (root / ".senti/journal").rglob("*")) == journaled
        _run_changes(root)
        after = _tree(root)
        killed = subprocess.run([sys.executable, "-c", KILLED_COMMIT, str(root),
                                 str(deletions)])
        workspace.recover(root)  # the next run
        assert _tree(root) in (before, after), f"killed after {deletions} deletions"
        assert list((root / ".senti").iterdir()) == []  # no journal left behind
        if killed.returncode == 0:
            break
        assert killed.returncode == -signal.SIGKILL
    assert deletions >= journaled  # a kill cut short the deletion of every journaled file


def test_begin_refuses_to_overwrite_an_unrecovered_journal(tmp_path):
    root = _project(tmp_path)
    workspace.begin(root, OUTPUTS)
    with pytest.raises(RuntimeError, match="recover"):
        workspace.begin(root, OUTPUTS)


# A stage killed in the middle of its atomic writes: a file and a directory.
KILLED_WRITES = """
import os, signal, sys
from senti.io import atomic_dir, atomic_path
with atomic_path(sys.argv[1]) as tmp, atomic_dir(sys.argv[2]) as tree:
    tmp.write_text("half a file")
    (tree / "model.keras").write_text("half a model")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_recovery_removes_the_temporaries_of_writes_a_kill_cut_short(tmp_path):
    root = _project(tmp_path)
    foreign = root / "data/raw/.corpus.csv.tmp.notours"  # not a name senti.io makes
    foreign.write_text("someone else's")
    before = _tree(root)
    workspace.begin(root, OUTPUTS)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITES, str(root / OUTPUTS[0]),
                             str(root / OUTPUTS[1])])
    assert killed.returncode == -signal.SIGKILL
    left = {p.relative_to(root).as_posix() for p in (*(root / "data/raw").iterdir(),
                                                      *(root / "models").iterdir())}
    assert len(left - set(before) - {"models/bilstm"}) == 2  # the file's and the directory's
    assert workspace.recover(root)
    assert _tree(root) == before
    assert sorted(p.name for p in (root / "models").iterdir()) == ["bilstm"]


HOLD = """
import sys, time
from senti import workspace
with workspace.project_lock(sys.argv[1], run="holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_holder_fails_fast_naming_the_first_then_waits(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(workspace.LockBusy, match=rf"pid {proc.pid} on .* \(holder\)"), \
                workspace.project_lock(tmp_path):
            pass
        started = time.monotonic()
        with pytest.raises(workspace.LockBusy, match=r"waited 1 s"), \
                workspace.project_lock(tmp_path, wait_s=1):
            pass
        assert time.monotonic() - started >= 1
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_and_noted(tmp_path):
    proc = _holder(tmp_path)
    proc.kill()  # SIGKILL: no cleanup ran; the kernel released the flock
    proc.wait()
    notes: list[str] = []
    with workspace.project_lock(tmp_path, run="next", notes=notes):
        record = json.loads((tmp_path / ".senti/retrain.lock").read_text())
        assert record["pid"] == os.getpid() and record["run"] == "next"
    assert len(notes) == 1 and notes[0].startswith("cleared the lock of a retrain that died")
    assert f"pid {proc.pid}" in notes[0]
    assert (tmp_path / ".senti/retrain.lock").read_text() == ""  # released cleanly


def test_a_refused_run_is_told_which_command_holds_the_lock(tmp_path):
    busy = rf"^another promote of this project is running: pid {os.getpid()} .*\(flow run 7\)"
    with workspace.project_lock(tmp_path, command="promote", run="flow run 7"), \
            pytest.raises(workspace.LockBusy, match=busy), \
            workspace.project_lock(tmp_path):  # a second open file: refused, even in-process
        pass
