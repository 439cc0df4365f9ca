"""Lineage facts recorded with every model: git state, DVC stage hashes, input fingerprint.

Reads ``dvc.lock`` as YAML (no DVC import): it is the record DVC wrote of every stage's
command, parameters, and the content hash of each dependency and output.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from senti.io import sha256_bytes


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool | None


def git_state(root: Path) -> GitState:
    """HEAD commit and whether tracked files differ from it (None outside a git repo)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return GitState(commit, None if status is None else bool(status))


def read_lock(lock_file: Path) -> dict:
    """The ``stages`` mapping of dvc.lock (empty if the pipeline never ran)."""
    if not lock_file.exists():
        return {}
    return (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {})


def _hash_of(entry: dict) -> str:
    return str(entry.get("md5") or entry.get("hash") or entry.get("etag") or "")


def stage_hashes(lock: dict) -> dict[str, str]:
    """``<stage>.<deps|outs>.<path>`` -> content hash, for every stage in dvc.lock."""
    hashes = {}
    for stage, body in lock.items():
        for kind in ("deps", "outs"):
            for entry in body.get(kind, []):
                hashes[f"{stage}.{kind}.{entry['path']}"] = _hash_of(entry)
    return hashes


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
