"""DVC, and only here: run stages, read dvc.lock, push to and fetch from the remote, read
cache objects, hash data the way DVC does.

Everything else in senti sees plain Python values (stage names, ``path -> md5`` mappings,
file paths of cache objects); nothing else imports ``dvc``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path

import yaml

from senti.io import sha256_bytes

# DVC's "to track the changes with git, run ..." hint after every stage is noise here.
logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"


@contextmanager
def _repo(root: Path | str) -> Iterator:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        yield repo


def stages(root: Path | str) -> list[str]:
    """The pipeline's stage names in dvc.yaml order: the one list of stages."""
    tree = yaml.safe_load((Path(root) / DVC_YAML).read_text(encoding="utf-8")) or {}
    return list(tree.get("stages", {}))


@contextmanager
def _stage_environment(root: Path | str) -> Iterator[None]:
    """DVC resolves stage paths from the working directory, and stage commands
    (``python -m senti.stages...``) must run with this interpreter's environment."""
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved}"
    try:
        with chdir(root):
            yield
    finally:
        os.environ["PATH"] = saved


class StageError(RuntimeError):
    """A stage's command failed (its own output says why)."""


def reproduce(root: Path | str, stage: str) -> bool:
    """``dvc repro --single-item <stage>``: True if it ran, False if DVC skipped it as
    unchanged; :class:`StageError` if its command failed."""
    from dvc.exceptions import ReproductionError

    try:
        with _stage_environment(root), _repo(root) as repo:
            return bool(repo.reproduce(stage, single_item=True))
    except ReproductionError as exc:
        raise StageError(f"stage {stage!r} failed") from exc


def read_lock(root: Path | str) -> dict:
    """The ``stages`` mapping of dvc.lock (empty if the pipeline never ran)."""
    lock = Path(root) / DVC_LOCK
    if not lock.exists():
        return {}
    return (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})


def _hash_of(entry: dict) -> str:
    return str(entry.get("md5") or entry.get("hash") or entry.get("etag") or "")


def stage_hashes(lock: dict) -> dict[str, str]:
    """``<stage>.<deps|outs>.<path>`` -> content hash, for every stage in dvc.lock."""
    return {f"{stage}.{kind}.{entry['path']}": _hash_of(entry)
            for stage, body in lock.items() for kind in ("deps", "outs")
            for entry in body.get(kind, [])}


def output_hash(lock: dict, stage: str) -> str | None:
    """The hash dvc.lock records for the (first) output of ``stage``; None before it ran."""
    outs = lock.get(stage, {}).get("outs") or [{}]
    return outs[0].get("md5")


def inputs_fingerprint(lock: dict, source_stages: tuple[str, ...] = ("ingest",)) -> str:
    """A hash of what the pipeline was given: each stage's command and params, every
    dependency that no stage produces (code, dictionaries), and the outputs of the source
    stages (the raw data, which comes from outside the pipeline).

    Intermediate products are left out: they follow from these inputs, and a saved model
    embeds its save time. Equal fingerprints mean the same training inputs, so a retrain on
    unchanged inputs registers nothing new.
    """
    produced = {o["path"] for body in lock.values() for o in body.get("outs", [])}
    canonical = {
        stage: {
            "cmd": body.get("cmd"),
            "params": body.get("params", {}),
            "deps": sorted((d["path"], _hash_of(d)) for d in body.get("deps", [])
                           if d["path"] not in produced),
            "outs": sorted((o["path"], _hash_of(o)) for o in body.get("outs", []))
            if stage in source_stages else [],
        }
        for stage, body in sorted(lock.items())
    }
    return sha256_bytes(json.dumps(canonical, sort_keys=True, default=str).encode())


def push(root: Path | str) -> int | None:
    """``dvc push`` of every cached output in dvc.lock to the default remote; the number of
    files transferred, or None when the project has no default remote."""
    with _repo(root) as repo:
        if not repo.config["core"].get("remote"):
            return None
        return repo.push()
