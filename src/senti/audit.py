"""Lineage audit: from a registered version back to its data, code, params and validation,
from a data version to the versions trained on it, proof by hashes, and restoring inputs.

Everything is read from what registration recorded (:func:`senti.registry.log_retrain`):
run params, metrics and tags (``dvc.<stage>.<deps|outs>.<path>``, ``git.*``, ``jieba.version``,
``vocab.sha256``, ``prefect.*``), the run's ``reports/`` and the training record
``lineage.json`` (:func:`senti.lineage.training_record`), version tags (``promote.*``) — never
from the current working tree. Data objects are read from DVC object stores as plain files
(:func:`senti.lineage.find_object`); fetching from a remote is the caller's job
(:mod:`flows.lineage`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from senti import lineage
from senti.config import PARAMS_FILE
from senti.io import read_json, sha256_file

DVC_TAG_PREFIX = "dvc."
PROMOTE_TAG_PREFIX = "promote."          # written by senti.promote
CHAMPION_HISTORY_TAG = "champion.history"  # registered-model tag written by senti.promote
REPORTS = ("ingest", "validation", "prepare", "segment", "vocab",  # reports/<name>.json
           "embeddings")
# senti.prepare.clean's steps in order, each with the count of rows it drops.
CLEANING_STEPS = (("labelled", "dropped_missing_label"), ("non-empty", "dropped_empty_text"),
                  ("de-duplicated", "dropped_duplicates"),
                  ("no label conflicts", "dropped_conflicting_rows"))


class LineageError(LookupError):
    """The version does not exist, or lacks what an audit needs."""


# ---- finding versions ---------------------------------------------------------------------

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


def _download(run_id: str, path: str, dest: Path) -> Path | None:
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(dest)))
    except (MlflowException, OSError):
        return None


def training_record(version: ModelVersion) -> dict:
    """The version's ``lineage.json`` (see :func:`senti.lineage.training_record`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = _download(version.run_id, lineage.RECORD_ARTIFACT, Path(tmp))
        if path is None:
            raise LineageError(f"{version.name}/{version.version} has no {lineage.RECORD_ARTIFACT}"
                               ": it was registered before lineage records were kept")
        return read_json(path)


# ---- the chain ----------------------------------------------------------------------------

def _iso(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def _reports(run_id: str) -> dict[str, dict | None]:
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for name in REPORTS:
            path = _download(run_id, f"reports/{name}.json", Path(tmp))
            found[name] = read_json(path) if path else None
        return found


def _test_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"model": {}, "baseline": {}}
    for key, value in sorted(metrics.items()):
        for who in out:
            if key.startswith(f"test.{who}."):
                out[who][key.removeprefix(f"test.{who}.")] = value
    return out


def rows_after_steps(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Rows left after each cleaning step (from prepare.json's counts), then after sampling."""
    if "rows_raw" not in counts:
        return []
    rows = counts["rows_raw"]
    steps = [{"step": "raw", "rows": rows}]
    for step, dropped in CLEANING_STEPS:
        rows -= counts.get(dropped, 0)
        steps.append({"step": step, "rows": rows})
    if "rows_sampled" in counts:
        steps.append({"step": "sampled", "rows": counts["rows_sampled"]})
    return steps


def _bool(text: str | None) -> bool | None:
    return None if text in (None, "None", "unknown") else text == "True"


def _promotion(version: ModelVersion) -> dict[str, Any]:
    tags = {key.removeprefix(PROMOTE_TAG_PREFIX): value for key, value in
            sorted(version.tags.items()) if key.startswith(PROMOTE_TAG_PREFIX)}
    try:
        model = MlflowClient().get_registered_model(version.name)
        history = json.loads(model.tags.get(CHAMPION_HISTORY_TAG, "[]"))
    except (MlflowException, ValueError):
        history = []
    reigns = [r for r in history if str(r.get("version")) == str(version.version)]
    return {"decision": tags.get("decision"), "reason": tags.get("reason"),
            "time": tags.get("time"), "tags": tags, "champion_reigns": reigns}


def model_lineage(version: ModelVersion) -> dict[str, Any]:
    """The whole chain of one version as a JSON-able document with stable keys (a missing
    fact is None or empty, never an absent key)."""
    run = MlflowClient().get_run(version.run_id)
    tags, params = run.data.tags, run.data.params
    reports = _reports(run.info.run_id)
    ingest = reports["ingest"] or {}
    validation = reports["validation"] or {}
    prepare = reports["prepare"] or {}
    segment = reports["segment"] or {}
    vocab = reports["vocab"] or {}
    embeddings = reports["embeddings"] or {}
    try:
        record = training_record(version)
    except LineageError:
        record = {}
    dvc = {key.removeprefix(DVC_TAG_PREFIX): value for key, value in sorted(tags.items())
           if key.startswith(DVC_TAG_PREFIX)}
    outputs = dict(sorted((key.split(".outs.", 1)[1], value) for key, value in dvc.items()
                          if ".outs." in key))
    raw = record.get("raw_data") or {}
    return {
        "model": {"name": version.name, "version": str(version.version),
                  "aliases": sorted(version.aliases or []),
                  "created": _iso(version.creation_timestamp), "status": version.status,
                  "inputs_fingerprint": version.tags.get("senti.inputs_fingerprint")},
        "run": {"id": run.info.run_id, "experiment_id": run.info.experiment_id,
                "status": run.info.status, "start": _iso(run.info.start_time),
                "end": _iso(run.info.end_time), "artifact_uri": run.info.artifact_uri},
        "code": {"git_commit": tags.get("git.commit"), "git_dirty": _bool(tags.get("git.dirty"))},
        "params": dict(sorted(params.items())),
        "metrics": _test_metrics(run.data.metrics),
        "data": {
            "source": params.get("data.source", ingest.get("source")),
            "source_sha256": ingest.get("source_sha256"),
            "raw": {"path": raw.get("path"), "md5": raw.get("md5"),
                    "sha256": ingest.get("raw_sha256")},
            "outputs": outputs,
            "dvc_lock": dvc,
            "rows": prepare.get("counts", {}),
            "rows_after_step": rows_after_steps(prepare.get("counts", {})),
            "splits": prepare.get("splits", {}),
        },
        "validation": {
            "success": validation.get("success"), "rows": validation.get("rows"),
            "outcomes": [{k: o.get(k) for k in ("name", "expectation", "success", "observed")}
                         for o in validation.get("outcomes", [])],
            "data_docs": validation.get("data_docs"),
            "data_docs_artifact": f"{run.info.artifact_uri}/data_docs/index.html",
        },
        "segmenter": {"jieba_version": tags.get("jieba.version", segment.get("jieba_version")),
                      "user_dict": params.get("segment.user_dict"),
                      "user_dict_sha256": segment.get("user_dict_sha256")},
        "vocab": {"sha256": tags.get("vocab.sha256", vocab.get("sha256")),
                  "size": vocab.get("size"), "oov_rate": vocab.get("oov_rate", {})},
        "embeddings": {key: embeddings.get(key) for key in (
            "sha256", "pretrained", "corpus_texts", "corpus_tokens", "extra_corpus",
            "extra_corpus_sha256", "vocab_coverage")},
        "prefect": {"flow_run_id": tags.get("prefect.flow_run_id"),
                    "deployment": tags.get("prefect.deployment")},
        "artifacts_sha256": record.get("artifacts_sha256", {}),
        "promotion": _promotion(version),
    }


def render(chain: dict[str, Any]) -> str:
    """The chain for people, one section per line group, in the order of the JSON document."""
    m, r, d, v = chain["model"], chain["run"], chain["data"], chain["validation"]
    aliases = ", ".join(f"@{a}" for a in m["aliases"]) or "none"
    lines = [f"{m['name']} version {m['version']}  (aliases: {aliases}; registered {m['created']})",
             f"run         {r['id']}  {r['status']}  {r['start']} -> {r['end']}",
             f"code        git {chain['code']['git_commit']}  dirty: {chain['code']['git_dirty']}",
             "params      " + "\n            ".join(f"{k} = {val}"
                                                   for k, val in chain["params"].items())]
    for who, name in (("model", "BiLSTM+attention"), ("baseline", "TF-IDF baseline")):
        scores = chain["metrics"][who]
        lines.append(f"test        {name:<17} accuracy {scores.get('accuracy', float('nan')):.4f}"
                     f"  macro-F1 {scores.get('macro_f1', float('nan')):.4f}")
    origin = ", ".join(f"{k} sha256 {val}" for k, val in (d["source_sha256"] or {}).items())
    lines.append(f"data        source {d['source']}  ({origin or 'no ingest report'})")
    lines.append(f"            raw {d['raw']['path']}  md5 {d['raw']['md5']}")
    lines += [f"            out {path}  md5 {md5}" for path, md5 in d["outputs"].items()]
    if d["rows_after_step"]:
        steps = " -> ".join(f"{s['step']} {s['rows']}" for s in d["rows_after_step"])
        lines.append(f"            rows {steps}")
    for split, counts in d["splits"].items():
        lines.append(f"            split {split}: {counts}")
    outcomes = v["outcomes"]
    passed = sum(bool(o["success"]) for o in outcomes)
    state = {True: "passed", False: "FAILED", None: "no record"}[v["success"]]
    lines.append(f"validation  {state}: {passed}/{len(outcomes)} expectations on {v['rows']} rows;"
                 f" Data Docs {v['data_docs']} ({v['data_docs_artifact']})")
    lines += [f"            {'ok  ' if o['success'] else 'FAIL'} {o['name']}: {o['observed']}"
              for o in outcomes]
    s, voc = chain["segmenter"], chain["vocab"]
    lines.append(f"segmenter   jieba {s['jieba_version']}, user dict {s['user_dict']} "
                 f"(sha256 {s['user_dict_sha256']})")
    lines.append(f"vocabulary  sha256 {voc['sha256']}, size {voc['size']}, "
                 f"OOV rate {voc['oov_rate']}")
    e = chain["embeddings"]
    lines.append(f"embeddings  sha256 {e['sha256']}, pretrained {e['pretrained']} on "
                 f"{e['corpus_tokens']} tokens (extra corpus {e['extra_corpus']}, sha256 "
                 f"{e['extra_corpus_sha256']}), vocabulary coverage {e['vocab_coverage']}")
    p = chain["prefect"]
    lines.append(f"prefect     flow run {p['flow_run_id']}, deployment {p['deployment'] or '-'}")
    lines += [f"artifact    {key}  sha256 {digest}"
              for key, digest in chain["artifacts_sha256"].items()]
    promo = chain["promotion"]
    lines.append(f"promotion   {promo['decision'] or 'no decision recorded'}"
                 + (f" at {promo['time']}: {promo['reason']}" if promo["decision"] else ""))
    lines += [f"            champion {reign.get('since')} -> {reign.get('until') or 'now'} "
              f"({reign.get('how')}: {reign.get('reason')})" for reign in promo["champion_reigns"]]
    return "\n".join(lines)


# ---- data -> models -----------------------------------------------------------------------

def trained_on(md5: str) -> list[dict[str, Any]]:
    """Every registered version (any model) whose run recorded ``md5`` for a DVC dependency or
    output, oldest first, with the ``<stage>.<deps|outs>.<path>`` entries that matched."""
    client = MlflowClient()
    wanted = {md5, md5.removesuffix(".dir")}
    found = []
    for version in client.search_model_versions(max_results=10_000):
        tags = client.get_run(version.run_id).data.tags
        matched = sorted(key.removeprefix(DVC_TAG_PREFIX) for key, value in tags.items()
                         if key.startswith(DVC_TAG_PREFIX)
                         and value.removesuffix(".dir") in wanted)
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
    """One line per failed check; matching files of a directory output as one line."""
    lines, seen = [], set()
    for check in checks:
        if check.group is None:
            lines.append(check.describe())
        elif check.group not in seen:
            seen.add(check.group)
            group = [c for c in checks if c.group == check.group]
            lines += [c.describe() for c in group if not c.ok]
            matching = sum(c.ok for c in group)
            lines.append(f"{'ok' if matching == len(group) else 'partly':<9} {check.kind} "
                         f"{check.group}/ ({matching} of {len(group)} entries match, "
                         "manifest included)")
    return lines


def _model_artifacts(version: ModelVersion, dest: Path) -> dict[str, Path]:
    """Download the registered model; its pyfunc artifacts as ``key -> local path``."""
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(dest)))
    model = mlflow.models.Model.load(str(local))
    declared = model.flavors.get("python_function", {}).get("artifacts", {})
    return {key: local / spec["path"] for key, spec in declared.items()}


def verify_artifacts(version: ModelVersion, record: dict) -> list[Check]:
    """sha256 of each artifact of the registered model against the training record; an
    artifact the record does not know (or the other way round) is a failure too."""
    expected = record.get("artifacts_sha256", {})
    with tempfile.TemporaryDirectory() as tmp:
        files = _model_artifacts(version, Path(tmp))
        return [Check("artifact", key, expected.get(key),
                      sha256_file(files[key]) if key in files and files[key].is_file()
                      else None)
                for key in sorted(set(expected) | set(files))]


def verify_data(record: dict, objects_dirs: list[Path]) -> list[Check]:
    """md5 of each recorded DVC output, read from the first object store holding it; a
    directory output is checked as its manifest and every file the manifest lists."""
    checks = []
    for path, md5 in record.get("dvc_objects", {}).items():
        found = lineage.find_object(md5, objects_dirs)
        if not md5.endswith(".dir"):
            checks.append(Check("data", path, md5, lineage.md5_file(found) if found else None))
            continue
        actual = lineage.md5_file(found) + ".dir" if found else None
        checks.append(Check("data", f"{path}/ (manifest)", md5, actual, group=path))
        if actual != md5 or found is None:
            continue
        for relpath, entry_md5 in lineage.dir_entries(found):
            entry = lineage.find_object(entry_md5, objects_dirs)
            checks.append(Check("data", f"{path}/{relpath}", entry_md5,
                                lineage.md5_file(entry) if entry else None, group=path))
    return checks


def verify(version: ModelVersion, objects_dirs: list[Path]) -> list[Check]:
    """Every check of a version: its model artifacts and its training data."""
    try:
        record = training_record(version)
    except LineageError:
        return [Check("record", lineage.RECORD_ARTIFACT, "present", None)]
    return verify_artifacts(version, record) + verify_data(record, objects_dirs)


def recorded_objects(version: ModelVersion) -> list[str]:
    """The DVC hashes a version's audit reads (for fetching them from a remote first)."""
    return sorted(set(training_record(version).get("dvc_objects", {}).values()))


# ---- checkout -----------------------------------------------------------------------------

def checkout(version: ModelVersion, objects_dirs: list[Path], dest: Path) -> dict[str, Any]:
    """Restore into ``dest`` the raw data (by its recorded DVC hash) and the params.yaml that
    produced ``version``, plus its dvc.lock and training record.

    When ``data.source`` was a relative CSV path the raw data is also written there (ingest
    copies a CSV source byte for byte), so ``senti retrain --root`` on a checkout of the
    recorded git commit with these files reproduces the same inputs.
    """
    record = training_record(version)
    raw = record.get("raw_data") or {}
    if not raw.get("md5"):
        raise LineageError(f"{version.name}/{version.version}: no raw data hash recorded")
    found = lineage.find_object(raw["md5"], objects_dirs)
    if found is None:
        raise LineageError(f"raw data {raw['path']} (md5 {raw['md5']}) is in no DVC cache or "
                           "remote: it cannot be restored")
    actual = lineage.md5_file(found)
    if actual != raw["md5"]:
        raise LineageError(f"raw data {raw['path']} in {found}: md5 {actual}, "
                           f"recorded {raw['md5']} (the cache copy is corrupt)")
    dest.mkdir(parents=True, exist_ok=True)
    written = {raw["path"]: found}
    with tempfile.TemporaryDirectory() as tmp:
        params_file = _download(version.run_id, record["params_file"], Path(tmp))
        if params_file is None:
            raise LineageError(f"{version.name}/{version.version} has no logged params.yaml")
        shutil.copyfile(params_file, dest / PARAMS_FILE)
        lock = _download(version.run_id, "reports/dvc.lock", Path(tmp))
        if lock is not None:
            shutil.copyfile(lock, dest / "dvc.lock")
    run = MlflowClient().get_run(version.run_id)
    source = run.data.params.get("data.source", "")
    if source.endswith(".csv") and not Path(source).is_absolute() and ".." not in source:
        written[source] = found
    for relpath, origin in written.items():
        (dest / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, dest / relpath)  # content only: the copy is writable
    (dest / lineage.RECORD_ARTIFACT).write_text(json.dumps(record, indent=2, sort_keys=True)
                                                + "\n", encoding="utf-8")
    return {"version": f"{version.name}/{version.version}", "dir": str(dest),
            "files": {relpath: raw["md5"] for relpath in written},
            "params": PARAMS_FILE, "git_commit": run.data.tags.get("git.commit")}
