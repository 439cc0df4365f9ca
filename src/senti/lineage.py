"""Lineage facts recorded with every model: git state, DVC stage hashes, input fingerprint,
and the training record (``lineage.json``) that :mod:`senti.audit` verifies later.

Reads ``dvc.lock`` as YAML and the DVC cache as files (no DVC import): dvc.lock is the record
DVC wrote of every stage's command, parameters, and the content hash of each dependency and
output; a DVC 3 cache (or local remote) keeps each object at ``files/md5/<2 hex>/<rest>``.
"""

from __future__ import annotations

import hashlib
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


# ---- recorded at registration, read back by senti.audit ---------------------------------

RECORD_ARTIFACT = "lineage.json"         # run artifact: what `senti lineage verify` checks
PARAMS_ARTIFACT_DIR = "lineage"          # run artifact dir holding the params.yaml that trained
DVC_OBJECTS = Path(".dvc/cache/files/md5")  # DVC 3 default cache objects, relative to the root
RECORD_SCHEMA = 1


def md5_file(path: Path | str) -> str:
    """DVC 3's content hash of a file (plain md5 of its bytes)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def md5_dir(path: Path | str) -> str:
    """DVC 3's hash of a directory: the md5 of its manifest (every file's relative POSIX path
    and md5, sorted by path, as sorted-key JSON) with ``.dir`` appended."""
    root = Path(path)
    entries = sorted(({"md5": md5_file(file), "relpath": file.relative_to(root).as_posix()}
                      for file in root.rglob("*") if file.is_file()),
                     key=lambda entry: entry["relpath"].split("/"))
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def md5_path(path: Path | str) -> str:
    """DVC 3's hash of a file or a directory."""
    return md5_dir(path) if Path(path).is_dir() else md5_file(path)


def cached_outputs(dvc_yaml: Path) -> set[str]:
    """Paths of stage outputs (outs, metrics, plots) that DVC stores in its cache: every one
    not declared with ``cache: false``."""
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    cached = set()
    for body in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                if isinstance(entry, str):
                    cached.add(entry)
                    continue
                cached.update(path for path, opts in entry.items()
                              if (opts or {}).get("cache", True))
    return cached


def object_path(objects_dir: Path, md5: str) -> Path:
    """Where a DVC 3 object store (cache or local remote) keeps the object ``md5``:
    ``<dir>/<2 hex>/<rest>`` (a directory's manifest keeps its ``.dir`` suffix)."""
    return Path(objects_dir) / md5[:2] / md5[2:]


def find_object(md5: str, objects_dirs: list[Path]) -> Path | None:
    """The first store that holds ``md5``, as a file path; None when none does."""
    for objects_dir in objects_dirs:
        path = object_path(objects_dir, md5)
        if path.is_file():
            return path
    return None


def dir_entries(manifest: Path) -> list[tuple[str, str]]:
    """``(relpath, md5)`` of every file of a directory output, from its ``.dir`` manifest."""
    return [(entry["relpath"], entry["md5"])
            for entry in json.loads(manifest.read_text(encoding="utf-8"))]


def training_record(root: Path, lock: dict, raw_data: str,
                    artifacts_sha256: dict[str, str]) -> dict:
    """What a registered version needs for a later audit, taken when it is registered:
    sha256 of each model artifact (by pyfunc artifact key), the DVC hash of every cached stage
    output (``path -> md5``, per ``dvc.yaml``'s cache settings), and which of them is the raw
    data (``raw_data``, relative to ``root``)."""
    cached = cached_outputs(root / "dvc.yaml")
    objects = {out["path"]: _hash_of(out) for body in lock.values()
               for out in body.get("outs", []) if out["path"] in cached}
    return {
        "schema": RECORD_SCHEMA,
        "artifacts_sha256": dict(sorted(artifacts_sha256.items())),
        "dvc_objects": dict(sorted(objects.items())),
        "raw_data": {"path": raw_data, "md5": objects.get(raw_data)},
        "params_file": f"{PARAMS_ARTIFACT_DIR}/params.yaml",
    }
