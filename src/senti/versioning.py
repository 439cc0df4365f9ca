"""DVC, and only here: run stages, read dvc.lock, push to and fetch from the remote, read
cache objects, hash data the way DVC does, read and write a file beside the data in the
remote (the lineage ledger, :mod:`senti.ledger`).

Everything else in senti sees plain Python values (stage names, ``path -> md5`` mappings,
file paths of cache objects); nothing else imports ``dvc``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from contextlib import chdir
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from senti.io import sha256_bytes

if TYPE_CHECKING:
    from dvc.fs import FileSystem
    from dvc.repo import Repo
    from dvc_data.hashfile.db import HashFileDB


def _import_dvc() -> None:
    """Import DVC and undo what its import sets up for DVC's own CLI.

    It wraps ``sys.stdout`` and ``sys.stderr`` in colorama's ANSI stripper wherever they are
    not terminals. Streams swapped under a library break its host: absl's log handler
    (TensorFlow's import creates it) closes the stream it holds once that is no longer
    ``sys.stderr``, at the next ``logging.config.dictConfig`` (Prefect's import makes one),
    so a notebook's stderr, or pytest's capture file, was closed. It also gives DVC's loggers
    handlers that print INFO records ("Running stage", "Updating lock file") straight to
    stdout; senti reports stage progress itself, so they go to the log like any library's."""
    streams = sys.stdout, sys.stderr
    import dvc  # noqa: F401

    sys.stdout, sys.stderr = streams
    dvc_logger = logging.getLogger("dvc")
    dvc_logger.handlers.clear()
    dvc_logger.propagate = True
    # DVC's "to track the changes with git, run ..." hint after every stage is noise here.
    logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)


_import_dvc()

DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"


def _repo(root: Path | str) -> Repo:
    from dvc.repo import Repo

    return Repo(str(root))  # a context manager: ``with _repo(root) as repo``


def stages(root: Path | str) -> list[str]:
    """The pipeline's stage names in dvc.yaml order: the one list of stages."""
    tree = yaml.safe_load((Path(root) / DVC_YAML).read_text(encoding="utf-8")) or {}
    return list(tree.get("stages", {}))


def outputs(root: Path | str) -> list[str]:
    """Every output path the pipeline writes (outs, metrics and plots of every stage),
    relative to the project root, in dvc.yaml order."""
    with _repo(root) as repo:
        return [str(out.def_path) for stage in repo.index.stages for out in stage.outs]


def remote_url(root: Path | str) -> str | None:
    """The URL of the project's default DVC remote (None: no default remote)."""
    with _repo(root) as repo:
        name = repo.config["core"].get("remote")
        return repo.config["remote"].get(name, {}).get("url") if name else None


class StageError(RuntimeError):
    """A stage's command failed (its own output says why)."""


def reproduce(root: Path | str, stage: str) -> bool:
    """``dvc repro --single-item <stage>``: True if it ran, False if DVC skipped it as
    unchanged; :class:`StageError` if its command failed.

    DVC resolves stage paths from the working directory, and stage commands
    (``python -m senti.stages...``) must run with this interpreter's environment."""
    from dvc.exceptions import ReproductionError

    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved}"
    try:
        with chdir(root), _repo(root) as repo:
            return bool(repo.reproduce(stage, single_item=True))
    except ReproductionError as exc:
        raise StageError(f"stage {stage!r} failed") from exc
    finally:
        os.environ["PATH"] = saved


def read_lock(root: Path | str) -> dict:
    """The ``stages`` mapping of dvc.lock (empty if the pipeline never ran)."""
    lock = Path(root) / DVC_LOCK
    text = lock.read_text(encoding="utf-8") if lock.exists() else ""
    return (yaml.safe_load(text) or {}).get("stages", {})


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


# ---- the cache and the remote, for lineage ------------------------------------------------
# Object ids are DVC's hashes as dvc.lock records them: ``<md5>``, or ``<md5>.dir`` for the
# manifest listing a directory's files. Where an object lives, how a manifest reads and how
# data hashes are DVC's (dvc_data) business; callers get paths, hashes and lists. An id read
# from a record is untrusted: DVC joins it onto the cache directory, so only well-formed ids
# are looked up (``../..`` would name a file outside the cache).
_OBJECT_ID = re.compile(r"[0-9a-f]{32}(\.dir)?")


def is_object_id(value: object) -> bool:
    """Whether ``value`` is a DVC object id: an md5 in hex, with ``.dir`` for a manifest."""
    return isinstance(value, str) and _OBJECT_ID.fullmatch(value) is not None

def cached_objects(root: Path | str, lock: dict) -> dict[str, str]:
    """``path -> hash`` of every output in ``lock`` (dvc.lock's ``stages``) that DVC keeps in
    its cache: the outs, metrics and plots of dvc.yaml not declared ``cache: false``."""
    with _repo(root) as repo:
        cached = {out.def_path for out in repo.index.outs if out.use_cache}
    return {out["path"]: _hash_of(out) for body in lock.values()
            for out in body.get("outs", []) if out["path"] in cached}


def data_hash(root: Path | str, path: Path | str) -> str:
    """The hash DVC would record for a file or directory (``<md5>`` or ``<md5>.dir``), with
    the project's ``.dvcignore`` applied."""
    from dvc.fs import localfs
    from dvc_data.hashfile.build import build

    with _repo(root) as repo:
        _, _, obj = build(repo.cache.local, str(Path(path).resolve()), localfs, "md5",
                          dry_run=True, ignore=repo.dvcignore)
    return obj.hash_info.value


def object_hash(file: Path | str, oid: str) -> str:
    """DVC's hash of the cache object ``oid`` recomputed from the bytes of ``file`` (a
    manifest's carries ``.dir``). Unlike DVC's own check it leaves a corrupt object in place,
    so an audit can report it."""
    from dvc_data.hashfile.hash import file_md5

    return file_md5(str(file)) + (".dir" if oid.endswith(".dir") else "")


def cache_files(root: Path | str, oids: Iterable[str]) -> dict[str, Path]:
    """The file holding each object in the project's DVC cache; objects it lacks, and ids
    that are not object ids (:func:`is_object_id`), are left out."""
    with _repo(root) as repo:
        cache = repo.cache.local
        return {oid: Path(cache.oid_to_path(oid)) for oid in oids
                if is_object_id(oid) and cache.exists(oid)}


def _entries(cache: HashFileDB, oid: str) -> list[tuple[str, str]]:
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    if not is_object_id(oid):
        return []
    try:
        tree = Tree.load(cache, HashInfo("md5", oid))
    except (FileNotFoundError, ObjectFormatError):
        return []
    return [("/".join(key), entry.value) for key, _, entry in tree if is_object_id(entry.value)]


def dir_entries(root: Path | str, oid: str) -> list[tuple[str, str]]:
    """``(relpath, oid)`` of each file the cached manifest ``oid`` lists (none when the cache
    lacks it or it is not a readable manifest)."""
    with _repo(root) as repo:
        return _entries(repo.cache.local, oid)


def fetch(root: Path | str, oids: Iterable[str]) -> list[str]:
    """Fetch from the default remote into the cache the objects of ``oids`` the cache lacks,
    with the files listed by the directory manifests among them; return the ids fetched.
    Objects the remote lacks too stay missing (an audit reports them), and so do ids that are
    not object ids; without a default remote nothing is fetched. Objects already cached are
    not touched, corrupt or not."""
    from dvc_data.hashfile.hash_info import HashInfo

    wanted = [oid for oid in dict.fromkeys(oids) if is_object_id(oid)]
    with _repo(root) as repo:
        if not repo.config["core"].get("remote"):
            return []
        cache = repo.cache.local

        def pull(ids: Iterable[str]) -> list[str]:
            missing = [HashInfo("md5", oid) for oid in dict.fromkeys(ids) if not cache.exists(oid)]
            if not missing:
                return []
            return sorted(info.value for info in repo.cloud.pull(missing).transferred)

        # the objects, then the files listed by the directory manifests among them
        return pull(wanted) + pull(entry for oid in wanted if oid.endswith(".dir")
                                   for _, entry in _entries(cache, oid))


# ---- files beside the data in the default remote, for the lineage ledger ---------------------
# The remote holds DVC's objects under ``files/md5/``; a file written here lives next to them,
# outside the object store (``dvc gc --cloud`` only prunes objects), with the remote's own
# access control: whoever may write MLflow need not be able to write here.

class NoRemote(LookupError):
    """The project is no DVC repository, or has no default remote."""


def _remote_file(repo: Repo, relpath: str) -> tuple[FileSystem, str]:
    """The default remote's filesystem and the path of ``relpath`` (``/``-separated) in it."""
    if not repo.config["core"].get("remote"):
        raise NoRemote(f"{repo.root_dir} has no default DVC remote (dvc remote add -d)")
    remote = repo.cloud.get_remote()
    return remote.fs, remote.fs.join(remote.path, *relpath.split("/"))


def _remote_repo(root: Path | str) -> Repo:
    from dvc.exceptions import NotDvcRepoError

    try:
        return _repo(root)
    except NotDvcRepoError as exc:
        raise NoRemote(f"{root} is no DVC repository") from exc


def read_remote_file(root: Path | str, relpath: str) -> tuple[str, bytes | None]:
    """Where ``relpath`` lives in the project's default remote (a URL or path, for messages)
    and its content, None when the remote has no such file. :class:`NoRemote` without one."""
    with _remote_repo(root) as repo:
        fs, path = _remote_file(repo, relpath)
        try:
            return fs.unstrip_protocol(path), fs.cat_file(path)
        except FileNotFoundError:
            return fs.unstrip_protocol(path), None


def write_remote_file(root: Path | str, relpath: str, data: bytes) -> None:
    """Replace ``relpath`` in the project's default remote with ``data``: written under a
    temporary name, then moved into place, so a reader sees the old or the new content, never
    a part. :class:`NoRemote` without a default remote."""
    with _remote_repo(root) as repo:
        fs, path = _remote_file(repo, relpath)
        fs.makedirs(fs.parent(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial"
        fs.pipe_file(partial, data)
        fs.mv(partial, path)
