"""Prefect flow ``retrain``: the DVC pipeline stage by stage, then MLflow registration and
the promotion gate.

Each stage runs through DVC (:func:`senti.versioning.reproduce`), so a stage whose
dependencies and params are unchanged is skipped and dvc.lock records every hash. The stage
list is dvc.yaml's. Works with the ephemeral Prefect API (no server configured) and against
a server when ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run

from flows.promote import gate_new_version
from senti import lineage, registry, tags, versioning
from senti.config import Layout, load_context, write_overrides
from senti.io import read_json
from senti.segment import jieba_version


class StageFailed(RuntimeError):
    """A pipeline stage exited with an error; nothing downstream of it ran."""


@dataclass
class RetrainResult:
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped"
    version: str | None = None
    model_uri: str | None = None
    registered: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] = field(default_factory=dict)  # the gate's decision (flows.promote)
    pushed: int | None = None  # files `dvc push` sent to the default remote; None: no remote
    fingerprint: str | None = None  # inputs fingerprint of this run's dvc.lock
    # no stage but ingest ran, ingest's output is unchanged and no version was registered
    nothing_changed: bool = False


def _failure_detail(layout: Layout, stage: str) -> str:
    if stage == "validate" and layout.validation_report.exists():
        report = read_json(layout.validation_report)
        failed = [o for o in report.get("outcomes", []) if not o.get("success")]
        lines = [f"  - {o['name']} ({o['expectation']}): {o['observed']}" for o in failed]
        docs = report.get("data_docs")
        return "\n".join(["failed expectations:", *lines] + ([f"Data Docs: {docs}"] if docs
                                                               else []))
    return "see the stage output above"


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(root: str, stage: str) -> str:
    """``dvc repro --single-item <stage>``; returns "ran" or "skipped"."""
    started = time.perf_counter()
    try:
        ran = versioning.reproduce(root, stage)
    except versioning.StageError as exc:
        _, layout = load_context(root)
        raise StageFailed(f"stage {stage!r} failed; downstream stages not run.\n"
                          f"{_failure_detail(layout, stage)}") from exc
    status = "ran" if ran else "skipped"
    get_run_logger().info("stage %s %s (%.1fs)", stage, status, time.perf_counter() - started)
    return status


@task(name="dvc-push", retries=2, retry_delay_seconds=[5, 30], cache_policy=NONE)
def push_data(root: str) -> int | None:
    """``dvc push`` to the default remote, so every data version a registered model points
    to can be fetched later (``senti lineage verify|checkout``). Runs before registration: a
    version is registered only once its data is in the remote."""
    pushed = versioning.push(root)
    if pushed is None:
        get_run_logger().warning("no default DVC remote: data not pushed (see docs/lineage.md)")
    else:
        get_run_logger().info("dvc push: %d file(s) sent to the default remote", pushed)
    return pushed


@task(name="register-model")
def register(root: str, flow_run_id: str | None) -> tuple[registry.RegisteredVersion,
                                                           str | None]:
    """Log the run to MLflow and register the model, unless these inputs already were.
    Returns the version and, for an existing one, the gate decision recorded on it."""
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    lock = versioning.read_lock(root)
    fingerprint = versioning.inputs_fingerprint(lock)
    found = registry.find_version(params.registry.model_name, fingerprint)
    if found is not None:
        get_run_logger().info("inputs unchanged: version %s already has them", found.version)
        judged = found.tags.get(tags.DECISION)
        when = found.tags.get(tags.DECIDED_AT, "time unknown")
        return registry.existing(found), judged and f"{judged}, {when}"
    git = lineage.git_state(layout.root)
    run_tags = {f"{tags.DVC_PREFIX}{key}": value
                for key, value in versioning.stage_hashes(lock).items()}
    run_tags.update({
        tags.GIT_COMMIT: git.commit or "unknown",
        tags.GIT_DIRTY: str(git.dirty),
        tags.JIEBA_VERSION: jieba_version(),
        tags.VOCAB_SHA256: read_json(layout.vocab_report)["sha256"],
        tags.PREFECT_FLOW_RUN: flow_run_id or tags.NONE,
        tags.PREFECT_DEPLOYMENT: deployment.name or tags.NONE,  # none: run from the CLI
    })
    return registry.log_retrain(layout, params, run_tags, fingerprint), None


def _summary_markdown(result: RetrainResult, ingest_md5: str | None) -> str:
    rows = "\n".join(
        f"| {stage} | " + (f"re-read the source; output unchanged (md5 `{ingest_md5}`)"
                           if result.nothing_changed and stage == "ingest" else state) + " |"
        for stage, state in result.stages.items())  # ingest is always_changed: DVC reruns it
    table = f"| stage | status |\n|---|---|\n{rows}"
    gate = (f"Promotion gate: **{result.promotion.get('decision', 'not run')}**: "
            f"{result.promotion.get('reason', '')}\n")
    if result.nothing_changed:
        return (f"# Retrain: nothing changed\n\nData and params are unchanged since version "
                f"**{result.version}** (`{result.model_uri}`): no new version was registered."
                f"\n\n## What was checked\n\n{table}\n\n- inputs fingerprint (dvc.lock: "
                "every stage's command and params, the source dependencies, the raw data "
                f"hash): `{result.fingerprint}`\n- registered version with this fingerprint: "
                f"**{result.version}**\n- {gate}")
    scores = "\n".join(f"| {name} | {m.get('accuracy', 0):.4f} | {m.get('macro_f1', 0):.4f} |"
                       for name, m in (("BiLSTM", result.metrics.get("model", {})),
                                       ("baseline", result.metrics.get("baseline", {}))))
    registered = ("registered new version" if result.registered
                  else "nothing changed: no new version")
    return (f"# Retrain\n\n{table}\n\nModel `{result.model_uri}` ({registered}).\n\n"
            f"| | accuracy | macro-F1 |\n|---|---|---|\n{scores}\n\n{gate}")


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every pipeline stage through DVC, push the data to the default DVC remote, track
    and register the model, then run the promotion gate on it (the champion changes only if
    the gate passes).

    ``overrides`` maps ``section.key`` to a value for this run only (the CLI's
    ``--set key=value``); params.yaml is restored afterwards, whatever happens.
    """
    root = str(Path(root).resolve())
    _, layout = load_context(root)
    # checked against params.yaml like `senti retrain --set` before anything runs, so a
    # deployment run with parameters={"overrides": {...}} fails the same way
    original = write_overrides(root, overrides) if overrides else None
    result = RetrainResult()
    ingest_before = versioning.output_hash(versioning.read_lock(root), "ingest")
    try:
        for stage in versioning.stages(root):
            result.stages[stage] = run_stage(root, stage)
        lock = versioning.read_lock(root)
        result.pushed = push_data(root)
        version, judged = register(root, flow_run.get_id())
        # a version judged before (inputs unchanged) is not judged again: that would only
        # repeat the decision, or undo a rollback
        result.promotion = gate_new_version(root, version.version) if not judged else {
            "challenger": version.version, "promoted": False, "decision": "unchanged",
            "reason": f"inputs unchanged; version {version.version} was judged already "
                      f"({judged}): `senti promote --version {version.version}` reruns the gate"}
    finally:
        if original is not None:
            (Path(root) / "params.yaml").write_text(original, encoding="utf-8")
    ingest_after = versioning.output_hash(lock, "ingest")
    result.version, result.model_uri = version.version, version.model_uri
    result.registered = version.created
    result.metrics = read_json(layout.metrics)
    result.fingerprint = versioning.inputs_fingerprint(lock)
    result.nothing_changed = (
        not version.created and ingest_before is not None and ingest_after == ingest_before
        and all(status == "skipped" for stage, status in result.stages.items()
                if stage != "ingest"))
    create_markdown_artifact(
        _summary_markdown(result, ingest_after), key="retrain-summary",
        description=(f"nothing changed: every stage skipped, version {result.version} already "
                     "has these inputs") if result.nothing_changed
        else "stages run or skipped, model version, test metrics")
    return asdict(result)
