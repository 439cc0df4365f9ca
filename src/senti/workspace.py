"""The project workspace under unattended runs: one retrain (or promote, or rollback) at a
time, and a workspace that a refused, failed, killed or per-run-overridden retrain leaves
exactly as it found it.

Two pieces, both plain files under the project's private state directory ``.senti/``:

* :func:`project_lock` is an exclusive ``flock`` on ``.senti/retrain.lock``, held for a whole
  retrain, promote or rollback. The kernel releases it when its holder dies (``kill -9``
  included), so a lock is never left stale; the file also names its holder (command, pid,
  host, start time, run) so a refused second run can say who holds it, and the next holder
  notes a holder that died.
* a **journal** (``.senti/journal/``): before a retrain changes anything, :func:`begin` copies
  ``params.yaml``, ``dvc.lock`` and every pipeline output aside. :func:`commit` drops the copy
  (the run's outputs are the new workspace); :func:`restore` puts every file back byte for
  byte and removes what the run created. A journal still present when the lock is next taken
  belongs to a run that was killed: :func:`recover` restores it before anything else runs.
  A journal is dropped by renaming it away first, so a kill while it is being deleted never
  leaves part of it to be restored.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from senti.config import PARAMS_FILE, STATE_DIR
from senti.io import stale_siblings, write_json

LOCK_FILE = "retrain.lock"
JOURNAL_DIR = "journal"
DROPPED_DIR = "journal.dropped"  # a journal being deleted: never restored
MANIFEST = "manifest.json"
# Files of the project itself that a run may change (params.yaml: per-run overrides).
PROJECT_FILES = (PARAMS_FILE, "dvc.lock")
FAILED_DIR = "failed-run"  # the reports of the last refused or failed run


class LockBusy(RuntimeError):
    """Another retrain, promote or rollback of this project holds the lock."""


def state_dir(root: Path | str) -> Path:
    """``.senti/`` of the project (created, private to its owner)."""
    path = Path(root) / STATE_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _holder(text: str) -> tuple[str, str]:
    """The command that wrote a lock record (``retrain`` when it does not say) and who it
    was."""
    try:
        who = json.loads(text)
        return who.get("command", "retrain"), (
            f"pid {who['pid']} on {who['host']} since {who['started']}"
            + (f" ({who['run']})" if who.get("run") else ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "retrain", "an unknown process"


@contextmanager
def project_lock(root: Path | str, *, command: str = "retrain", run: str = "",
                 wait_s: float = 0.0, notes: list[str] | None = None) -> Iterator[None]:
    """Hold the project's lock for the block, as ``command`` (what a refused run is told).

    Waits up to ``wait_s`` seconds for a holder to finish, then raises :class:`LockBusy`
    naming the holder. A holder record left by a process that died is noted in ``notes``.
    Not reentrant: a process that holds the lock must not take it again.
    """
    path = state_dir(root) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    busy, holder = _holder(path.read_text(encoding="utf-8"))
                    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                    raise LockBusy(f"another {busy} of this project is running: {holder}"
                                   f"{waited}; lock file {path}") from None
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        stale = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if stale.strip() and notes is not None:
            died, holder = _holder(stale)
            notes.append(f"cleared the lock of a {died} that died: {holder}")
        record = json.dumps({"command": command, "pid": os.getpid(),
                             "host": socket.gethostname(), "run": run,
                             "started": datetime.now(UTC).isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _journal(root: Path) -> Path:
    return Path(root) / STATE_DIR / JOURNAL_DIR


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _drop(journal: Path) -> None:
    """Delete the journal: renamed aside in one step, then removed, so it is whole or gone
    (:func:`recover` finishes the removal of one a kill cut short)."""
    dropped = journal.with_name(DROPPED_DIR)
    _remove(dropped)
    if journal.exists():
        journal.replace(dropped)
    _remove(dropped)


def begin(root: Path | str, outputs: Iterable[Path | str]) -> None:
    """Copy ``params.yaml``, ``dvc.lock`` and ``outputs`` (paths relative to ``root``) into
    the journal, and record which of them existed."""
    root = Path(root)
    journal = _journal(root)
    if journal.exists():
        raise RuntimeError(f"{journal} exists: recover() it first")
    staging = journal.with_name(f"{JOURNAL_DIR}.new")
    _remove(staging)
    staging.mkdir(parents=True)
    existed = {}
    for rel in dict.fromkeys([*PROJECT_FILES, *(Path(p).as_posix() for p in outputs)]):
        source, copy = root / rel, staging / "files" / rel
        existed[rel] = source.exists()
        if source.is_dir():
            shutil.copytree(source, copy, symlinks=True)
        elif source.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
    write_json(staging / MANIFEST, existed)
    staging.replace(journal)  # the journal exists whole or not at all


def commit(root: Path | str) -> None:
    """Keep the run's workspace: drop the journal."""
    _drop(_journal(Path(root)))


def restore(root: Path | str) -> list[str]:
    """Put every journaled path back as it was (removing what did not exist, and the
    temporary siblings a killed run's atomic writes left next to it); drop the journal.
    Idempotent: a restore interrupted half-way completes when called again.
    Returns the paths that were changed back."""
    root = Path(root)
    journal = _journal(root)
    manifest = journal / MANIFEST
    if not manifest.exists():
        _drop(journal)
        return []
    changed = []
    for rel, existed in json.loads(manifest.read_text(encoding="utf-8")).items():
        target, saved = root / rel, journal / "files" / rel
        for litter in stale_siblings(target):  # a killed run's half-written temporaries
            _remove(litter)
        if saved.exists() or saved.is_symlink():
            _remove(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            saved.replace(target)
            changed.append(rel)
        elif not existed and (target.exists() or target.is_symlink()):
            _remove(target)
            changed.append(rel)
    _drop(journal)
    return changed


def keep_failed(root: Path | str, paths: Iterable[Path]) -> Path:
    """Copy ``paths`` (e.g. the reports of a refused run, before :func:`restore` puts the
    previous ones back) to ``.senti/failed-run/``, replacing the last failed run's."""
    kept = state_dir(root) / FAILED_DIR
    _remove(kept)
    for path in paths:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
        if path.is_dir():
            shutil.copytree(path, kept / rel, symlinks=True)
        elif path.exists():
            (kept / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, kept / rel)
    return kept


def recover(root: Path | str) -> list[str]:
    """Restore the journal of a run that was killed, if one is there (call with the lock
    held), and finish deleting one a kill cut short. Returns the restored paths; empty when
    there was nothing to recover."""
    journal = _journal(Path(root))
    if not journal.exists():
        _drop(journal)
        return []
    return restore(root)
