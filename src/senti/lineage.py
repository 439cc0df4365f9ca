"""Lineage: what produced a registered model version, recorded when it is registered and read
back later: show the chain, find the versions a data version trained, verify by hashes,
restore a version's inputs, retrain it from them and compare.

Recorded: the git state (run tags) and the training record ``lineage.json``
(:func:`training_record`, logged by :func:`senti.registry.log_retrain`): the sha256 of every
file of the registered model as MLflow stored it (the manifest), of the logged params.yaml and
dvc.lock, of the trained weights, the DVC hash of every cached output, the test metrics and the
commit. Every registration, gate decision and rollback is also appended to the model's ledger
(:mod:`senti.ledger`, in the DVC remote, outside MLflow): the hashes there prove the record.
Read back: only what registration and the promotion gate recorded (the tag schema is
:mod:`senti.tags`: run params, metrics and tags, the run's ``reports/``, ``lineage.json``,
``lineage/params.yaml`` and ``lineage/dvc.lock``, ``promote.*`` version tags and the run's
decisions table) and the ledger, never the current working tree. Data objects come from the
project's DVC cache, fetched from its default remote when the cache lacks them, through
:mod:`senti.versioning`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from math import nan
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from senti import ledger, tags, versioning
from senti.config import PARAMS_FILE, Layout, flatten, load_context
from senti.console import PROGRESS_LOGGER
from senti.io import read_json, sha256_bytes, sha256_file
from senti.stages import ERROR_FILE

RECORD_SCHEMA = 2  # 2: the model manifest, input-file, weights and metrics hashes, the commit
# senti.prepare.clean's steps in order, each with the count of rows it drops.
CLEANING_STEPS = (("not quarantined", "dropped_quarantined"),  # validate.on_bad_rows
                  ("labelled", "dropped_missing_label"), ("non-empty", "dropped_empty_text"),
                  ("de-duplicated", "dropped_duplicates"),
                  ("no label conflicts", "dropped_conflicting_rows"))
# The files a version's run keeps beside its record (restored by checkout): name -> artifact.
INPUT_FILES = {PARAMS_FILE: tags.PARAMS_ARTIFACT, versioning.DVC_LOCK: tags.DVC_LOCK_ARTIFACT}
# MLflow's client writes this file into a model directory whenever it loads the model from a
# models:/ URI (into the store itself when that is a local directory): the name and version it
# was loaded as. Nothing reads it back, so it is no part of the manifest.
LOAD_MARKER = "registered_model_meta"
KERAS_WEIGHTS = "model.weights.h5"  # the weights inside a .keras archive
CODE_DIR = "src"  # where a checkout of the project keeps the senti package
_LOG = logging.getLogger(__name__)
_TERMINAL = logging.getLogger(f"{PROGRESS_LOGGER}.lineage")  # and the log, as every record


class LineageError(LookupError):
    """The version does not exist, lacks what an audit needs, or its records do not agree."""


# ---- recorded at registration -------------------------------------------------------------

class GitState(NamedTuple):
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


def model_files(model_dir: Path) -> dict[str, str]:
    """The manifest of a downloaded model directory: the sha256 of every file, by its POSIX
    path relative to ``model_dir`` (MLflow's :data:`LOAD_MARKER` excepted)."""
    return {path.relative_to(model_dir).as_posix(): sha256_file(path)
            for path in sorted(model_dir.rglob("*"))
            if path.is_file() and path.relative_to(model_dir).as_posix() != LOAD_MARKER}


def manifest_sha256(manifest: dict[str, str]) -> str:
    """One hash for a whole manifest (its canonical JSON)."""
    return sha256_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())


def weights_sha256(model_file: Path) -> str:
    """sha256 of a saved Keras model's weights: every array in the archive's
    ``model.weights.h5``, in name order, with its name, dtype and shape. The archive's own hash
    differs between identical trainings: it embeds the time it was saved."""
    import h5py

    digest = hashlib.sha256()
    with zipfile.ZipFile(model_file) as archive, \
            h5py.File(io.BytesIO(archive.read(KERAS_WEIGHTS)), "r") as weights:
        names: list[str] = []
        weights.visititems(lambda name, node: names.append(name)
                           if isinstance(node, h5py.Dataset) else None)
        for name in sorted(names):
            array = np.ascontiguousarray(weights[name][()])
            digest.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _download(artifact_uri: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))


def _stored_inputs(run_id: str, dst: Path) -> dict[str, Path | None]:
    """The run's copies of params.yaml and dvc.lock (:data:`INPUT_FILES`) downloaded into
    ``dst``, by file name; None for one the run lacks."""
    found: dict[str, Path | None] = {}
    for name, artifact in INPUT_FILES.items():
        try:
            found[name] = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=str(dst)))
        except (MlflowException, OSError):
            found[name] = None
    return found


def training_record(layout: Layout, model_uri: str, run_id: str,
                    git_commit: str | None) -> dict:
    """What a registered version needs for a later audit, taken when it is registered, after
    its run logged the model (``model_uri``) and params.yaml and dvc.lock: hashed as MLflow
    stored them (downloaded back), not as the workspace holds them. The manifest of the model
    directory (every file) and the sha256 of each pyfunc artifact by key; the sha256 of the
    run's params.yaml and dvc.lock; the weights' hash and the test metrics (what a
    reproduction is compared with); the DVC hash of every cached stage output (``path ->
    md5``) and which of them is the raw data; the git commit."""
    root = layout.root
    objects = versioning.cached_objects(root, versioning.read_lock(root))
    raw = layout.raw_csv.relative_to(root).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _download(model_uri, Path(tmp) / "model")
        manifest = model_files(model_dir)
        declared = mlflow.models.Model.load(str(model_dir)).flavors["python_function"]
        inputs = {name: sha256_file(path) for name, path in
                  _stored_inputs(run_id, Path(tmp) / "inputs").items() if path is not None}
    return {
        "schema": RECORD_SCHEMA,
        "model_files": manifest,
        "artifacts_sha256": {key: manifest[spec["path"]]
                             for key, spec in sorted(declared["artifacts"].items())},
        "inputs_sha256": inputs,
        "weights_sha256": weights_sha256(layout.model_file),
        "metrics": read_json(layout.metrics),
        "dvc_objects": dict(sorted(objects.items())),
        "raw_data": {"path": raw, "md5": objects.get(raw)},
        "git_commit": git_commit,
    }


def _ledger_location(model_name: str) -> str:
    """Where the model's ledger lives in the DVC remote: named by the model and its creation
    time in this registry, so projects sharing a remote keep separate ledgers."""
    created = MlflowClient().get_registered_model(model_name).creation_timestamp
    return ledger.location(model_name, str(created))


def record_in_ledger(root: Path | None, model_name: str, facts: dict[str, Any]) -> None:
    """Append ``facts`` to the model's ledger in the DVC remote of the project at ``root``.
    Without a project (None) or a default remote there is no ledger: a warning, and
    ``senti lineage verify --ledger`` reports the entry missing."""
    try:
        if root is None:
            raise versioning.NoRemote("no project given")
        ledger.append(root, _ledger_location(model_name), {"model": model_name, **facts})
    except versioning.NoRemote as exc:
        _LOG.warning("%s %s: no ledger entry written (%s)", model_name, facts.get("kind"), exc)


def record_decision(root: Path | None, model_name: str, facts: dict[str, Any]) -> None:
    """Append a gate decision or rollback (``facts``: :data:`DECISION_FIELDS` and whether it
    made a champion) to the model's ledger. MLflow holds it already and @champion may have
    moved: a ledger that cannot be written (the remote unreachable, full, not writable) leaves
    the decision standing, with a warning naming the entry (on the terminal, and with the
    traceback in the log), which ``senti lineage verify --ledger`` then reports MISSING, as
    in a project without a remote."""
    try:
        record_in_ledger(root, model_name, {"kind": "decision", **facts})
    except Exception as exc:  # a failure here must not fail a decision already made
        _TERMINAL.warning("warning: %s: %s: no ledger entry written (%s: %s); senti lineage "
                          "verify --ledger reports it MISSING", model_name,
                          _decision_label(facts), type(exc).__name__, exc)
        _LOG.info("the ledger write that failed", exc_info=exc)


def record_registration(root: Path, version: ModelVersion) -> None:
    """The ledger entry of a newly registered version: its run, and the hashes of its
    record, its model manifest and its dvc.lock, as MLflow stored them."""
    stored = _record_bytes(version.run_id)
    if stored is None:
        raise LineageError(f"{version.name}/{version.version}: its run has no "
                           f"{tags.LINEAGE_RECORD} to enter in the ledger")
    record = json.loads(stored)
    record_in_ledger(root, version.name, {
        "kind": "register", "version": str(version.version), "run_id": version.run_id,
        "record_sha256": sha256_bytes(stored),
        "manifest_sha256": manifest_sha256(record["model_files"]),
        "dvc_lock_sha256": record["inputs_sha256"].get(versioning.DVC_LOCK),
        "time": datetime.now(UTC).isoformat(timespec="seconds")})


# ---- reading a version back ---------------------------------------------------------------

def resolve(ref: str) -> ModelVersion:
    """``NAME@ALIAS`` or ``NAME/VERSION`` (a ``models:/`` prefix is allowed) -> the version."""
    text = ref.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in text:
            name, _, alias = text.rpartition("@")
            return client.get_model_version_by_alias(name, alias)
        name, _, version = text.rpartition("/")
        if name and version.isdigit():
            return client.get_model_version(name, version)
    except MlflowException as exc:
        raise LineageError(f"no model version {ref}: {exc.message}") from exc
    raise LineageError(f"{ref!r}: expected NAME@ALIAS or NAME/VERSION")


def _load(run_id: str, path: str) -> Any:
    """A JSON artifact of a run; None when the run has none there."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    except (MlflowException, OSError, ValueError):
        return None


def _record_bytes(run_id: str) -> bytes | None:
    """The run's ``lineage.json`` as stored (its hash is in the ledger); None: it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=tags.LINEAGE_RECORD, dst_path=tmp)).read_bytes()
        except (MlflowException, OSError):
            return None


# ---- the chain ----------------------------------------------------------------------------

def _iso(millis: int | None) -> str | None:
    return (datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")
            if millis else None)


def _prefixed(mapping: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix``, prefix removed, sorted by key."""
    return {key.removeprefix(prefix): value for key, value in sorted(mapping.items())
            if key.startswith(prefix)}


def _pick(report: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: report.get(key) for key in keys}


def _logged(layout: Layout, path: Path) -> str:
    """Where the run keeps a file of the pipeline's reports directory (logged whole)."""
    return f"{tags.REPORTS_DIR}/{path.relative_to(layout.reports).as_posix()}"


def rows_after_steps(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Rows left after each cleaning step (from prepare.json's counts), then after sampling."""
    if not counts:  # no prepare report
        return []
    rows, steps = counts["rows_raw"], [{"step": "raw", "rows": counts["rows_raw"]}]
    for step, dropped in CLEANING_STEPS:
        rows -= counts.get(dropped, 0)  # records from before a step existed lack its count
        steps.append({"step": step, "rows": rows})
    return [*steps, {"step": "sampled", "rows": counts["rows_sampled"]}]


def decisions(model_name: str, version: str) -> list[dict[str, Any]]:
    """Every gate decision and rollback recorded on a version, oldest first: the rows its
    run's decisions table gained one by one (empty if none)."""
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    table = _load(run_id, tags.DECISIONS_TABLE) or {"columns": [], "data": []}
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def _promotion(version: ModelVersion) -> dict[str, Any]:
    """The latest gate decision (``promote.*`` version tags) and every decision and rollback
    recorded on the version (:func:`decisions`)."""
    return {"decision": version.tags.get(tags.DECISION), "reason": version.tags.get(tags.REASON),
            "time": version.tags.get(tags.DECIDED_AT),
            "previous_champion": version.tags.get(tags.PREVIOUS_CHAMPION),
            "rolled_back": version.tags.get(tags.ROLLED_BACK),
            "tags": _prefixed(version.tags, tags.PROMOTE_PREFIX),
            "decisions": decisions(version.name, str(version.version))}


def _outcome(checks: list[Check]) -> dict[str, Any]:
    failed = [check.describe() for check in checks if not check.ok]
    return {"ok": bool(checks) and not failed, "checks": len(checks), "failed": failed}


def verification(root: Path, version: ModelVersion) -> dict[str, dict[str, Any]]:
    """Whether the version's ledger entry (:func:`ledger_checks`), its model manifest and its
    inputs (params.yaml, dvc.lock, training data: :func:`verify`) verify: ``ok``, the number
    of checks, and each failed one."""
    checks, _ = verify(root, version)
    try:
        proof = _outcome(ledger_checks(root, version))
    except LineageError as exc:  # no DVC remote: no ledger
        proof = {"ok": False, "checks": 0, "failed": [str(exc)]}
    return {"ledger": proof, "manifest": _outcome([c for c in checks if c.kind == "model"]),
            "inputs": _outcome([c for c in checks if c.kind != "model"])}


def model_lineage(version: ModelVersion, layout: Layout) -> dict[str, Any]:
    """The whole chain of one version as a JSON-able document with stable keys (a missing
    fact is None or empty, never an absent key), with its :func:`verification`. ``layout``:
    where the pipeline writes its reports, hence where the run keeps them."""
    run = MlflowClient().get_run(version.run_id)
    run_tags, params = run.data.tags, run.data.params
    ingest, validation, prepare, segment, vocab, embeddings = (
        _load(version.run_id, _logged(layout, report)) or {} for report in (
            layout.ingest_report, layout.validation_report, layout.prepare_report,
            layout.segment_report, layout.vocab_report, layout.embeddings_report))
    record = _load(version.run_id, tags.LINEAGE_RECORD) or {}
    raw, dvc = record.get("raw_data") or {}, _prefixed(run_tags, tags.DVC_PREFIX)
    counts = prepare.get("counts", {})
    return {
        "model": {"name": version.name, "version": str(version.version),
                  "aliases": sorted(version.aliases or []),
                  "created": _iso(version.creation_timestamp), "status": version.status,
                  "inputs_fingerprint": version.tags.get(tags.FINGERPRINT)},
        "verification": verification(layout.root, version),
        "run": {"id": run.info.run_id, "experiment_id": run.info.experiment_id,
                "status": run.info.status, "start": _iso(run.info.start_time),
                "end": _iso(run.info.end_time), "artifact_uri": run.info.artifact_uri},
        "code": {"git_commit": run_tags.get(tags.GIT_COMMIT),  # git.dirty: "True|False|None"
                 "git_dirty": {"True": True, "False": False}.get(run_tags.get(tags.GIT_DIRTY))},
        "params": dict(sorted(params.items())),
        "metrics": {who: _prefixed(run.data.metrics, f"test.{who}.")
                    for who in ("model", "baseline")},
        "data": {"source": params.get("data.source", ingest.get("source")),
                 "source_sha256": ingest.get("source_sha256"),
                 "raw": {**_pick(raw, "path", "md5"), "sha256": ingest.get("raw_sha256")},
                 "outputs": dict(sorted((key.split(".outs.", 1)[1], value)
                                        for key, value in dvc.items() if ".outs." in key)),
                 "dvc_lock": dvc, "rows": counts, "rows_after_step": rows_after_steps(counts),
                 "splits": prepare.get("splits", {})},
        "validation": {**_pick(validation, "success", "rows", "data_docs"),
                       "outcomes": [_pick(o, "name", "expectation", "success", "observed")
                                    for o in validation.get("outcomes", [])],
                       "data_docs_artifact": f"{run.info.artifact_uri}/"
                                             f"{_logged(layout, layout.data_docs / 'index.html')}"},
        "segmenter": {"jieba_version": run_tags.get(tags.JIEBA_VERSION,
                                                    segment.get("jieba_version")),
                      "user_dict": params.get("segment.user_dict"),
                      "user_dict_sha256": segment.get("user_dict_sha256")},
        "vocab": {"sha256": run_tags.get(tags.VOCAB_SHA256, vocab.get("sha256")),
                  "size": vocab.get("size"), "oov_rate": vocab.get("oov_rate", {})},
        "embeddings": _pick(embeddings, "sha256", "pretrained", "corpus_texts", "corpus_tokens",
                            "extra_corpus", "extra_corpus_sha256", "vocab_coverage"),
        "prefect": {"flow_run_id": run_tags.get(tags.PREFECT_FLOW_RUN),
                    "deployment": run_tags.get(tags.PREFECT_DEPLOYMENT)},
        "artifacts_sha256": record.get("artifacts_sha256", {}),
        "promotion": _promotion(version),
    }


def _verdict(outcome: dict[str, Any]) -> str:
    """ok or FAILED, how many checks pass, and the first failure."""
    failed, total = outcome["failed"], outcome["checks"]
    if not total:  # no record to check against, or no ledger (the reason is ``failed``)
        return f"FAILED: {failed[0] if failed else 'nothing recorded to check'}"
    text = f"{'ok' if outcome['ok'] else 'FAILED'}: {total - len(failed)} of {total} checks pass"
    if failed:
        text += f"; {failed[0]}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1 else "")
    return text


def render(chain: dict[str, Any]) -> str:
    """The chain for people, one section per line group, in the order of the JSON document:
    a section's label in a 12-character column on its first line."""
    m, d, v, promo = (chain[key] for key in ("model", "data", "validation", "promotion"))
    aliases = ", ".join(f"@{a}" for a in m["aliases"]) or "none"
    origin = ", ".join(f"{k} sha256 {val}" for k, val in (d["source_sha256"] or {}).items())
    steps = " -> ".join(f"{step['step']} {step['rows']}" for step in d["rows_after_step"])
    passed = sum(bool(o["success"]) for o in v["outcomes"])
    state = {True: "passed", False: "FAILED", None: "no record"}[v["success"]]
    history = [f"{row.get('decision')} at {row.get('time')} (champion before: "
               f"{row.get('champion_before')}): {row.get('reason')}" for row in promo["decisions"]]
    if not history and promo["decision"]:  # no decisions table: the latest decision's tags
        history = [f"{promo['decision']} at {promo['time']}: {promo['reason']}"]
    sections = [
        ("verified", [f"{part:<9}{_verdict(outcome)}"
                      for part, outcome in chain["verification"].items()]),
        ("run", ["{id}  {status}  {start} -> {end}".format_map(chain["run"])]),
        ("code", ["git {git_commit}  dirty: {git_dirty}".format_map(chain["code"])]),
        ("params", [f"{k} = {val}" for k, val in chain["params"].items()]),
        *(("test", [f"{name:<17} accuracy {chain['metrics'][who].get('accuracy', nan):.4f}"
                    f"  macro-F1 {chain['metrics'][who].get('macro_f1', nan):.4f}"])
          for who, name in (("model", "BiLSTM+attention"), ("baseline", "TF-IDF baseline"))),
        ("data", [f"source {d['source']}  ({origin or 'no ingest report'})",
                  "raw {path}  md5 {md5}".format_map(d["raw"]),
                  *(f"out {path}  md5 {md5}" for path, md5 in d["outputs"].items()),
                  *([f"rows {steps}"] if steps else []),
                  *(f"split {split}: {counts}" for split, counts in d["splits"].items())]),
        ("validation", [f"{state}: {passed}/{len(v['outcomes'])} expectations on {v['rows']} "
                        f"rows; Data Docs {v['data_docs']} ({v['data_docs_artifact']})",
                        *(f"{'ok  ' if o['success'] else 'FAIL'} {o['name']}: {o['observed']}"
                          for o in v["outcomes"])]),
        ("segmenter", ["jieba {jieba_version}, user dict {user_dict} (sha256 {user_dict_sha256})"
                       .format_map(chain["segmenter"])]),
        ("vocabulary", ["sha256 {sha256}, size {size}, OOV rate {oov_rate}"
                        .format_map(chain["vocab"])]),
        ("embeddings", ["sha256 {sha256}, pretrained {pretrained} on {corpus_tokens} tokens "
                        "(extra corpus {extra_corpus}, sha256 {extra_corpus_sha256}), "
                        "vocabulary coverage {vocab_coverage}".format_map(chain["embeddings"])]),
        ("prefect", [f"flow run {chain['prefect']['flow_run_id']}, "
                     f"deployment {chain['prefect']['deployment'] or '-'}"]),
        *(("artifact", [f"{key}  sha256 {digest}"])
          for key, digest in chain["artifacts_sha256"].items()),
        ("promotion", [*(history or ["no decision recorded"]), *(
            [f"rolled back (no longer champion) at {promo['rolled_back']}"]
            if promo["rolled_back"] else [])]),
    ]
    lines = [f"{m['name']} version {m['version']}  (aliases: {aliases}; registered {m['created']})"]
    for label, body in sections:
        lines += [f"{'' if i else label:<12}{text}" for i, text in enumerate(body)]
    return "\n".join(lines)


# ---- data -> models -----------------------------------------------------------------------

def trained_on(md5: str) -> list[dict[str, Any]]:
    """Every registered version (any model) whose run recorded ``md5`` for a DVC dependency or
    output, oldest first, with the ``<stage>.<deps|outs>.<path>`` entries that matched."""
    client, wanted, found = MlflowClient(), md5.removesuffix(".dir"), []
    for version in client.search_model_versions(max_results=10_000):
        dvc = _prefixed(client.get_run(version.run_id).data.tags, tags.DVC_PREFIX)
        matched = [key for key, value in dvc.items() if value.removesuffix(".dir") == wanted]
        if matched:
            found.append({"model": version.name, "version": str(version.version),
                          "aliases": sorted(version.aliases or []), "run_id": version.run_id,
                          "created": _iso(version.creation_timestamp), "matched": matched})
    return sorted(found, key=lambda f: (f["model"], int(f["version"])))


# ---- verify -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One recomputed fact against the recorded one (``actual`` None: not found)."""

    kind: str  # "model" | "input" | "data" | "record" | "ledger" | "reproduce" | "metric"
    name: str
    expected: str | None  # None: nothing was recorded for what was found
    actual: str | None
    group: str | None = None  # the directory (or set) the checked entry belongs to

    @property
    def ok(self) -> bool:
        return self.expected is not None and self.actual == self.expected

    def describe(self) -> str:
        if self.ok:
            return f"ok        {self.kind} {self.name}"
        if self.actual is None:
            return f"MISSING   {self.kind} {self.name}: expected {self.expected}, not found"
        if self.expected is None:
            return f"ADDED     {self.kind} {self.name}: not recorded, found {self.actual}"
        return f"MISMATCH  {self.kind} {self.name}: expected {self.expected}, got {self.actual}"


def summarize(checks: list[Check]) -> list[str]:
    """One line per check; the checks of a group (consecutive, ``group`` its name: a directory
    output, the model's files, the metrics) as one line, plus one per failed member."""
    lines = []
    for group, members in groupby(checks, key=lambda check: check.group):
        members = list(members)
        lines += [check.describe() for check in members if group is None or not check.ok]
        if group is not None:
            matching = sum(check.ok for check in members)
            lines.append(f"{'ok' if matching == len(members) else 'partly':<9} "
                         f"{members[0].kind} {group} ({matching} of {len(members)} entries "
                         "match)")
    return lines


def verify_model(version: ModelVersion, record: dict) -> list[Check]:
    """Every file of the registered model directory (downloaded as loading it does) against
    the record's manifest: a changed, missing or added file fails, named."""
    expected = record.get("model_files")
    if expected is None:  # schema 1: registered before manifests were recorded
        return [Check("model", "manifest", "recorded", None)]
    uri = f"models:/{version.name}/{version.version}"
    with tempfile.TemporaryDirectory() as tmp:
        actual = model_files(_download(uri, Path(tmp)))
    return [Check("model", f"{uri}/{path}", expected.get(path), actual.get(path), f"{uri}/")
            for path in sorted(set(expected) | set(actual))]


def verify_inputs(version: ModelVersion, record: dict) -> list[Check]:
    """The run's params.yaml and dvc.lock against the record's hashes."""
    expected = record.get("inputs_sha256", {})
    with tempfile.TemporaryDirectory() as tmp:
        found = _stored_inputs(version.run_id, Path(tmp))
        return [Check("input", INPUT_FILES[name], expected.get(name),
                      None if path is None else sha256_file(path))
                for name, path in found.items()]


NOT_AN_OBJECT_ID = "not a DVC object id"  # what a recorded hash that names no object gets


def _recomputed(root: Path, oids: list[str]) -> dict[str, str | None]:
    """Each object's hash recomputed from the project's DVC cache (None: not cached); a
    recorded id that is no object id is never looked up."""
    files = versioning.cache_files(root, oids)
    return {oid: versioning.object_hash(files[oid], oid) if oid in files
            else None if versioning.is_object_id(oid) else NOT_AN_OBJECT_ID for oid in oids}


def verify_data(root: Path, record: dict) -> list[Check]:
    """The DVC hash of each recorded output, recomputed from the project's cache; a
    directory output is checked as its manifest and, when that matches, every file it lists."""
    objects = record["dvc_objects"]
    actual = _recomputed(root, list(objects.values()))
    listed = {path: versioning.dir_entries(root, oid) for path, oid in objects.items()
              if oid.endswith(".dir") and actual[oid] == oid}
    found = _recomputed(root, [entry for entries in listed.values() for _, entry in entries])
    checks = []
    for path, oid in objects.items():
        group = f"{path}/" if oid.endswith(".dir") else None
        checks.append(Check("data", f"{path}/ (manifest)" if group else path, oid, actual[oid],
                            group))
        checks += [Check("data", f"{path}/{relpath}", entry, found[entry], group)
                   for relpath, entry in listed.get(path, [])]
    return checks


def verify(root: Path, version: ModelVersion) -> tuple[list[Check], int]:
    """Every check of a version against its record: the registered model's files, the run's
    params.yaml and dvc.lock, and its training data (fetched first from the DVC remote where
    the cache lacks it); and how many objects were fetched. The record itself is proved only
    by the ledger (:func:`ledger_checks`)."""
    record = _load(version.run_id, tags.LINEAGE_RECORD)
    if record is None:
        return [Check("record", tags.LINEAGE_RECORD, "present", None)], 0
    objects = record.get("dvc_objects")
    if not isinstance(objects, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in objects.items()):
        return [Check("record", f"{tags.LINEAGE_RECORD} dvc_objects", "path -> DVC hash",
                      "malformed")], 0
    fetched = versioning.fetch(root, objects.values())
    return (verify_model(version, record) + verify_inputs(version, record)
            + verify_data(root, record), len(fetched))


# ---- the ledger, against the registry -------------------------------------------------------

DECISION_FIELDS = ("version", "decision", "time", "champion_before", "reason")


def _ledger_of(root: Path, model_name: str) -> tuple[str, ledger.Ledger | None]:
    """The model's ledger location and content (None: there is none yet)."""
    relpath = _ledger_location(model_name)
    try:
        return relpath, ledger.read(root, relpath)
    except versioning.NoRemote as exc:
        raise LineageError(f"{exc}: the project keeps no ledger") from exc


def _chain_checks(relpath: str, book: ledger.Ledger | None) -> list[Check]:
    if book is None:
        return [Check("ledger", relpath, "present", None)]
    head = book.head.sha256 if book.head else "none"
    return [Check("ledger", f"{book.where}: chain of {len(book.entries)}, head {head}", "intact",
                  "broken" if book.breaks else "intact"),
            *(Check("ledger", f"{book.where} line {b.line}", b.expected, b.found)
              for b in book.breaks)]


def _registrations(book: ledger.Ledger, version: str) -> list[ledger.Entry]:
    return [entry for entry in book.entries if entry.facts.get("kind") == "register"
            and str(entry.facts.get("version")) == version]


def _entry_checks(book: ledger.Ledger, version: ModelVersion) -> list[Check]:
    """The version's register entry against what MLflow holds now: its run, and the hashes of
    its record, the record's model manifest and its dvc.lock."""
    label = f"version {version.version}"
    found = _registrations(book, str(version.version))
    if len(found) != 1:
        return [Check("ledger", label, "one register entry",
                      f"{len(found)} register entries" if found else None)]
    entry = found[0].facts
    stored = _record_bytes(version.run_id)
    record = json.loads(stored) if stored else {}
    with tempfile.TemporaryDirectory() as tmp:
        lock = _stored_inputs(version.run_id, Path(tmp))[versioning.DVC_LOCK]
        lock_sha256 = None if lock is None else sha256_file(lock)
    return [
        Check("ledger", f"{label} run", entry.get("run_id"), version.run_id),
        Check("ledger", f"{label} {tags.LINEAGE_RECORD}", entry.get("record_sha256"),
              stored and sha256_bytes(stored)),
        Check("ledger", f"{label} model manifest", entry.get("manifest_sha256"),
              manifest_sha256(record["model_files"]) if "model_files" in record else None),
        Check("ledger", f"{label} {tags.DVC_LOCK_ARTIFACT}", entry.get("dvc_lock_sha256"),
              lock_sha256),
    ]


def ledger_checks(root: Path, version: ModelVersion) -> list[Check]:
    """Whether the version's ledger entry proves its record: the chain unbroken, and its one
    register entry matching the record, manifest and dvc.lock MLflow holds now."""
    relpath, book = _ledger_of(root, version.name)
    return _chain_checks(relpath, book) + ([] if book is None else _entry_checks(book, version))


def _decision_key(facts: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(facts.get(field)) for field in DECISION_FIELDS)


def _decision_label(facts: dict[str, Any]) -> str:
    """How ``verify --ledger`` names a decision or rollback."""
    return "decision {decision} on version {version} at {time}".format_map(facts)


def _decision_checks(book: ledger.Ledger, model_name: str,
                     versions: list[ModelVersion]) -> list[Check]:
    """Every decision and rollback in the versions' decisions tables is in the ledger, and
    every one in the ledger is in a table; the last that made a champion names @champion."""
    def label(key: tuple[str, ...]) -> str:
        return _decision_label(dict(zip(DECISION_FIELDS, key, strict=True)))

    logged = [_decision_key(row) for v in versions for row in decisions(model_name, str(v.version))]
    chained = {_decision_key(e.facts): e for e in book.entries
               if e.facts.get("kind") == "decision"}
    checks = [Check("ledger", label(key), "in the ledger",
                    "in the ledger" if key in chained else None, "decisions")
              for key in logged]
    checks += [Check("ledger", f"{label(key)} (line {entry.seq})", "in MLflow", None)
               for key, entry in chained.items() if key not in logged]
    made = [e.facts["version"] for e in chained.values() if e.facts.get("champion")]
    try:
        champion = str(MlflowClient().get_model_version_by_alias(model_name,
                                                                  tags.CHAMPION).version)
    except MlflowException:
        champion = tags.NONE
    return [*checks, Check("ledger", f"@{tags.CHAMPION}", str(made[-1]) if made else tags.NONE,
                           champion)]


def verify_ledger(root: Path, model_name: str, head: str | None = None) -> list[Check]:
    """The model's whole ledger against the registry: the chain unbroken; every registered
    version has exactly one register entry matching its record, manifest and dvc.lock, and
    every register entry a version; every decision and rollback is on both sides; @champion is
    who the last champion-making entry says. ``head``: an entry hash kept elsewhere, which
    must still be in the chain (against a rewrite of the whole file)."""
    relpath, book = _ledger_of(root, model_name)
    checks = _chain_checks(relpath, book)
    if book is None:
        return checks
    versions = sorted(MlflowClient().search_model_versions(f"name = '{model_name}'"),
                      key=lambda v: int(v.version))
    registered = {str(v.version) for v in versions}
    checks += [check for version in versions for check in _entry_checks(book, version)]
    checks += [Check("ledger", f"version {e.facts.get('version')} (line {e.seq})", "registered",
                     None) for e in book.entries if e.facts.get("kind") == "register"
               and str(e.facts.get("version")) not in registered]
    checks += _decision_checks(book, model_name, versions)
    if head is not None:
        checks.append(Check("ledger", f"head {head}", "in the chain", "in the chain" if any(
            entry.sha256 == head for entry in book.entries) else None))
    return checks


# ---- checkout -----------------------------------------------------------------------------

def _inside(dest: Path, relpath: str) -> Path:
    """Where a recorded relative path lands in ``dest``; a path that could land elsewhere is
    refused naming it: absolute, with a ``..``, ``.`` or empty part, a backslash or a NUL, or
    passing through a symlink in ``dest`` (symlinks are never followed). So is one that
    cannot be written as a file: a file where it needs a directory, or a directory at its end."""
    parts = relpath.split("/")
    if not relpath or any(part in ("", ".", "..") for part in parts) or \
            "\\" in relpath or "\0" in relpath:
        raise LineageError(f"recorded path {relpath!r} is not a plain relative path: refused, "
                           f"it could write outside {dest}")
    target = dest
    for number, part in enumerate(parts, 1):
        target = target / part
        if target.is_symlink():
            raise LineageError(f"recorded path {relpath!r}: {target} is a symlink: refused, "
                               "it could write outside the directory")
        last = number == len(parts)
        if (target.is_dir() if last else target.exists() and not target.is_dir()):
            raise LineageError(f"recorded path {relpath!r}: {target} is a "
                               f"{'directory' if last else 'file'}: refused, it cannot be "
                               "written there")
    return target


def _usable_dir(dest: Path, force: bool, option: str = "") -> None:
    """Refuse a ``dest`` that is no directory, or is not empty unless ``force``; ``option``:
    how the caller's user would force it."""
    if dest.exists() and not dest.is_dir():
        raise LineageError(f"{dest} is not a directory")
    if not force and dest.is_dir() and any(dest.iterdir()):
        raise LineageError(f"{dest} is not empty: give a new or empty directory{option}")


def _trusted_record(root: Path, version: ModelVersion, dest: Path) -> tuple[dict, bytes]:
    """The version's record, parsed and as stored. Refused when a path it records could write
    outside ``dest`` (:func:`_inside`), and unless its ledger entry holds its hash (whoever can
    change MLflow could have changed the record with what it describes)."""
    label = f"{version.name}/{version.version}"
    stored = _record_bytes(version.run_id)
    if stored is None:
        raise LineageError(f"{label} has no {tags.LINEAGE_RECORD}: it was registered before "
                           "lineage records were kept")
    record = json.loads(stored)
    if record.get("schema") != RECORD_SCHEMA:
        raise LineageError(f"{label}: its {tags.LINEAGE_RECORD} has schema "
                           f"{record.get('schema')}, not {RECORD_SCHEMA}: it records no hashes "
                           "of params.yaml and dvc.lock to restore them by")
    for path in (record["raw_data"]["path"], *INPUT_FILES, tags.LINEAGE_RECORD):
        _inside(dest, path)
    relpath, book = _ledger_of(root, version.name)
    found = [] if book is None else _registrations(book, str(version.version))
    recorded = [entry.facts.get("record_sha256") for entry in found]
    if recorded != [sha256_bytes(stored)]:
        raise LineageError(f"{label}: its {tags.LINEAGE_RECORD} (sha256 {sha256_bytes(stored)}) "
                           f"is not what the ledger {book.where if book else relpath} recorded "
                           f"({', '.join(map(str, recorded)) or 'no entry'}): refused")
    return record, stored


def _raw_copy(root: Path, label: str, raw: dict, dst: Path) -> Path:
    """A copy of the raw data (by its recorded DVC hash, from the project's cache or its
    remote) in ``dst``, checked against that hash."""
    md5 = raw["md5"]
    if not md5:  # the raw data is not in the DVC cache (``cache: false`` in dvc.yaml)
        raise LineageError(f"{label}: no raw data hash recorded")
    if not versioning.is_object_id(md5):
        raise LineageError(f"{label}: the recorded raw data hash {md5!r} is {NOT_AN_OBJECT_ID}: "
                           "refused")
    versioning.fetch(root, [md5])
    found = versioning.cache_files(root, [md5]).get(md5)
    if found is None:
        raise LineageError(f"raw data {raw['path']} (md5 {md5}) is in no DVC cache or "
                           "remote: it cannot be restored")
    copy = dst / "raw_data"
    shutil.copyfile(found, copy)  # content only: the copy is writable
    actual = versioning.object_hash(copy, md5)
    if actual != md5:
        raise LineageError(f"raw data {raw['path']} in {found}: md5 {actual}, "
                           f"recorded {md5} (the cache copy is corrupt)")
    return copy


def _write_inside(dest: Path, relpath: str, source: Path) -> None:
    """Copy ``source`` to ``relpath`` in ``dest``, never through a symlink."""
    target = _inside(dest, relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, source.open("rb") as data:
        shutil.copyfileobj(data, out)


def checkout(root: Path, version: ModelVersion, dest: Path, *,
             force: bool = False) -> dict[str, Any]:
    """Restore into ``dest`` (new or empty unless ``force``) the raw data (by its recorded
    DVC hash, from the project's cache or its remote), the params.yaml and dvc.lock that
    produced ``version`` and its training record: the record only when its ledger entry holds
    its hash, every other file only when it has the hash the record gives it. Every recorded
    path is checked before anything is written (:func:`_inside`); a refusal writes nothing.

    When ``data.source`` (in the restored params.yaml) is a CSV path inside ``dest``, the raw
    data is also written there (ingest copies a CSV source byte for byte), so the directory
    with the code of the recorded commit reproduces the same inputs (:func:`reproduce`).
    """
    label = f"{version.name}/{version.version}"
    _usable_dir(dest, force, ", or --force to overwrite the files restored there")
    record, stored = _trusted_record(root, version, dest)
    raw = record["raw_data"]
    with tempfile.TemporaryDirectory() as tmp:
        staged = {}
        for name, path in _stored_inputs(version.run_id, Path(tmp)).items():
            actual = None if path is None else sha256_file(path)
            if actual != record["inputs_sha256"].get(name):
                raise LineageError(f"{label}: {INPUT_FILES[name]} has sha256 {actual}, its record "
                                   f"says {record['inputs_sha256'].get(name)}: refused")
            staged[name] = path
        staged[raw["path"]] = _raw_copy(root, label, raw, Path(tmp))
        source = str((yaml.safe_load(staged[PARAMS_FILE].read_text(encoding="utf-8"))
                      .get("data") or {}).get("source", ""))
        notes = []
        if source.endswith(".csv") and source != raw["path"]:
            try:
                _inside(dest, source)
                staged[source] = staged[raw["path"]]
            except LineageError as exc:
                notes.append(f"data.source {source} is not restored there ({exc}); its bytes "
                             f"are {raw['path']}")
        staged[tags.LINEAGE_RECORD] = Path(tmp) / tags.LINEAGE_RECORD
        staged[tags.LINEAGE_RECORD].write_bytes(stored)
        for relpath, path in staged.items():
            _write_inside(dest, relpath, path)
        files = {relpath: sha256_file(dest / relpath) for relpath in staged}
    return {"version": label, "dir": str(dest), "files": files, "notes": notes,
            "git_commit": record["git_commit"]}


# ---- reproduce ----------------------------------------------------------------------------

@contextmanager
def _code_of(src: Path) -> Iterator[None]:
    """Stage processes started in the block import ``senti`` from ``src`` (the recorded
    commit's code), not from the installed package."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _clone(root: Path, commit: str, workdir: Path) -> Path:
    """``workdir`` (new or empty) made a clone of the project's git repository at ``commit``;
    returns the project's directory in it (the same place relative to the repository's top).
    When the commit cannot be checked out, ``workdir`` is left as it was."""
    def git(where: Path, *args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(where), *args], capture_output=True,
                                  text=True, check=True, timeout=600).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            detail = str(getattr(exc, "stderr", None) or exc).strip()
            raise LineageError(f"git {args[0]} of commit {commit} from {root} failed: "
                               f"{detail}") from exc

    prefix = git(root, "rev-parse", "--show-prefix")
    git(root, "cat-file", "-e", f"{commit}^{{commit}}")  # before anything is written
    existed = workdir.exists()
    git(root, "clone", "--quiet", "--no-checkout", ".", str(workdir.resolve()))
    try:
        git(workdir, "checkout", "--quiet", "--detach", commit)
    except LineageError:  # in the repository, but on no branch or tag: not cloned
        shutil.rmtree(workdir)
        if existed:
            workdir.mkdir()
        raise
    return workdir / prefix


def reproduce(root: Path, version: ModelVersion, workdir: Path,
              progress: Callable[[str], None] = lambda line: None) -> list[Check]:
    """Retrain ``version`` from its recorded inputs in ``workdir`` (new or empty; kept): a
    clone of the project's git repository at the recorded commit, the version's raw data,
    params.yaml and dvc.lock restored into it (:func:`checkout`), every stage run by DVC with
    that commit's code (dvc.lock removed first, so none is skipped). Nothing is registered.

    Returns one check per compared fact, recorded against reproduced: the inputs fingerprint
    (code, params, raw data: :func:`senti.versioning.inputs_fingerprint`), the weights' hash
    and every test metric. ``progress`` gets one line per stage."""
    label = f"{version.name}/{version.version}"
    _usable_dir(workdir, force=False)
    record, _ = _trusted_record(root, version, workdir)
    project = _clone(root, str(record["git_commit"]), workdir)
    checkout(root, version, project, force=True)
    recorded_lock = versioning.read_lock(project)
    (project / versioning.DVC_LOCK).unlink()
    _, layout = load_context(project)
    stages = versioning.stages(project)
    with _code_of(project / CODE_DIR):
        for number, stage in enumerate(stages, 1):
            progress(f"[{number}/{len(stages)}] {stage}")
            try:
                versioning.reproduce(project, stage)
            except versioning.StageError as exc:
                cause = project / ERROR_FILE
                raise LineageError(f"reproducing {label} in {project}: " + (
                    cause.read_text(encoding="utf-8").strip() if cause.exists()
                    else f"stage {stage} failed")) from exc
    recorded = flatten(record["metrics"])
    found = flatten(read_json(layout.metrics))
    return [
        Check("reproduce", "inputs fingerprint", versioning.inputs_fingerprint(recorded_lock),
              versioning.inputs_fingerprint(versioning.read_lock(project))),
        Check("reproduce", "weights sha256", record["weights_sha256"],
              weights_sha256(layout.model_file)),
        *(Check("metric", key, str(value), str(found[key]) if key in found else None,
                "test metrics") for key, value in recorded.items()),
    ]
