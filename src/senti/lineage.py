"""Lineage: what produced a registered model version, recorded when it is registered and read
back later: show the chain, find the versions a data version trained, verify by hashes,
restore a version's inputs.

Recorded: the git state (run tags) and the training record ``lineage.json``
(:func:`training_record`, logged by :func:`senti.registry.log_retrain`). Read back: only what
registration and the promotion gate recorded (the tag schema is :mod:`senti.tags`: run params,
metrics and tags, the run's ``reports/``, ``lineage.json``, ``lineage/params.yaml`` and
``lineage/dvc.lock``, ``promote.*`` version tags and the run's decisions table), never the
current working tree. Data objects come from the project's DVC cache, fetched from its
default remote when the cache lacks them, through :mod:`senti.versioning`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from math import nan
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from senti import tags, versioning
from senti.config import PARAMS_FILE, Layout
from senti.io import sha256_file, write_json

RECORD_SCHEMA = 1
# senti.prepare.clean's steps in order, each with the count of rows it drops.
CLEANING_STEPS = (("labelled", "dropped_missing_label"), ("non-empty", "dropped_empty_text"),
                  ("de-duplicated", "dropped_duplicates"),
                  ("no label conflicts", "dropped_conflicting_rows"))


class LineageError(LookupError):
    """The version does not exist, or lacks what an audit needs."""


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


def training_record(root: Path, lock: dict, raw_data: str,
                    artifacts_sha256: dict[str, str]) -> dict:
    """What a registered version needs for a later audit, taken when it is registered:
    sha256 of each model artifact (by pyfunc artifact key), the DVC hash of every cached stage
    output (``path -> md5`` from ``lock``, dvc.lock's ``stages``), and which of them is the
    raw data (``raw_data``, relative to ``root``)."""
    objects = versioning.cached_objects(root, lock)
    return {
        "schema": RECORD_SCHEMA,
        "artifacts_sha256": dict(sorted(artifacts_sha256.items())),
        "dvc_objects": dict(sorted(objects.items())),
        "raw_data": {"path": raw_data, "md5": objects.get(raw_data)},
        "params_file": tags.PARAMS_ARTIFACT,
    }


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
        rows -= counts[dropped]
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


def model_lineage(version: ModelVersion, layout: Layout) -> dict[str, Any]:
    """The whole chain of one version as a JSON-able document with stable keys (a missing
    fact is None or empty, never an absent key). ``layout``: where the pipeline writes its
    reports, hence where the run keeps them."""
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
    """One recomputed hash against the recorded one (``actual`` None: nothing to hash)."""

    kind: str  # "artifact" | "data" | "record"
    name: str
    expected: str | None
    actual: str | None
    group: str | None = None  # the directory output a file belongs to

    @property
    def ok(self) -> bool:
        return self.expected is not None and self.actual == self.expected

    def describe(self) -> str:
        if self.ok:
            return f"ok        {self.kind} {self.name}"
        if self.actual is None:
            return f"MISSING   {self.kind} {self.name}: expected {self.expected}, not found"
        return f"MISMATCH  {self.kind} {self.name}: expected {self.expected}, got {self.actual}"


def summarize(checks: list[Check]) -> list[str]:
    """One line per check; the checks of a directory output (consecutive, ``group`` its path)
    as one line, plus one per failed file."""
    lines = []
    for group, members in groupby(checks, key=lambda check: check.group):
        members = list(members)
        lines += [check.describe() for check in members if group is None or not check.ok]
        if group is not None:
            matching = sum(check.ok for check in members)
            lines.append(f"{'ok' if matching == len(members) else 'partly':<9} "
                         f"{members[0].kind} {group}/ ({matching} of {len(members)} entries "
                         "match, manifest included)")
    return lines


def verify_artifacts(version: ModelVersion, record: dict) -> list[Check]:
    """sha256 of each pyfunc artifact of the registered model against the training record; an
    artifact the record does not know (or the other way round) is a failure too."""
    expected = record.get("artifacts_sha256", {})
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}", dst_path=tmp))
        model = mlflow.models.Model.load(str(local))
        declared = model.flavors.get("python_function", {}).get("artifacts", {})
        files = {key: local / spec["path"] for key, spec in declared.items()}
        return [Check("artifact", key, expected.get(key),
                      sha256_file(files[key]) if key in files and files[key].is_file()
                      else None)
                for key in sorted(set(expected) | set(files))]


def _recomputed(root: Path, oids: list[str]) -> dict[str, str | None]:
    """Each object's hash recomputed from the project's DVC cache (None: not cached)."""
    files = versioning.cache_files(root, oids)
    return {oid: versioning.object_hash(files[oid], oid) if oid in files else None
            for oid in oids}


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
        group = path if oid.endswith(".dir") else None
        checks.append(Check("data", f"{path}/ (manifest)" if group else path, oid, actual[oid],
                            group))
        checks += [Check("data", f"{path}/{relpath}", entry, found[entry], group)
                   for relpath, entry in listed.get(path, [])]
    return checks


def verify(root: Path, version: ModelVersion) -> tuple[list[Check], int]:
    """Every check of a version (its model artifacts and its training data, fetched first
    from the DVC remote where the cache lacks it) and how many objects were fetched."""
    record = _load(version.run_id, tags.LINEAGE_RECORD)
    if record is None:
        return [Check("record", tags.LINEAGE_RECORD, "present", None)], 0
    fetched = versioning.fetch(root, record["dvc_objects"].values())
    return verify_artifacts(version, record) + verify_data(root, record), len(fetched)


# ---- checkout -----------------------------------------------------------------------------

def checkout(root: Path, version: ModelVersion, dest: Path) -> dict[str, Any]:
    """Restore into ``dest`` the raw data (by its recorded DVC hash, from the project's cache
    or its remote) and the params.yaml that produced ``version``, plus its dvc.lock and
    training record.

    When ``data.source`` was a relative CSV path the raw data is also written there (ingest
    copies a CSV source byte for byte), so ``senti retrain --root`` on a checkout of the
    recorded git commit with these files reproduces the same inputs.
    """
    record = _load(version.run_id, tags.LINEAGE_RECORD)  # see training_record
    if record is None:
        raise LineageError(f"{version.name}/{version.version} has no {tags.LINEAGE_RECORD}: it "
                           "was registered before lineage records were kept")
    raw, md5 = record["raw_data"], record["raw_data"]["md5"]
    if not md5:  # the raw data is not in the DVC cache (``cache: false`` in dvc.yaml)
        raise LineageError(f"{version.name}/{version.version}: no raw data hash recorded")
    versioning.fetch(root, [md5])
    found = versioning.cache_files(root, [md5]).get(md5)
    if found is None:
        raise LineageError(f"raw data {raw['path']} (md5 {md5}) is in no DVC cache or "
                           "remote: it cannot be restored")
    actual = versioning.object_hash(found, md5)
    if actual != md5:
        raise LineageError(f"raw data {raw['path']} in {found}: md5 {actual}, "
                           f"recorded {md5} (the cache copy is corrupt)")
    run = MlflowClient().get_run(version.run_id)
    written = [raw["path"]]
    source = run.data.params.get("data.source", "")
    if source.endswith(".csv") and not Path(source).is_absolute() and ".." not in source:
        written.append(source)
    for relpath in written:
        (dest / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, dest / relpath)  # content only: the copy is writable
    # registration logs params.yaml and dvc.lock before lineage.json: the record implies them
    with tempfile.TemporaryDirectory() as tmp:
        for artifact, name in ((record["params_file"], PARAMS_FILE),
                               (tags.DVC_LOCK_ARTIFACT, versioning.DVC_LOCK)):
            shutil.copyfile(mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=artifact, dst_path=tmp), dest / name)
    write_json(dest / tags.LINEAGE_RECORD, record)
    return {"version": f"{version.name}/{version.version}", "dir": str(dest),
            "files": dict.fromkeys(written, md5), "params": PARAMS_FILE,
            "git_commit": run.data.tags.get(tags.GIT_COMMIT)}
