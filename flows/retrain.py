"""Prefect flow ``retrain``: the DVC pipeline stage by stage, then MLflow registration and
the promotion gate.

Each stage runs through DVC (:func:`senti.versioning.reproduce`), so a stage whose
dependencies and params are unchanged is skipped and dvc.lock records every hash. The stage
list is dvc.yaml's. Works with the ephemeral Prefect API (no server configured) and against
a server when ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run

from flows.promote import gate_new_version
from senti import drift, lineage, notify, registry, tags, versioning, workspace
from senti.config import (
    STATE_DIR,
    Layout,
    apply_overrides,
    load_context,
    loosened,
    parse_params,
    project_root,
    write_overrides,
)
from senti.console import PROGRESS_LOGGER
from senti.io import read_json
from senti.segment import jieba_version
from senti.stages import ERROR_FILE, OWNER_ENV


class StageFailed(RuntimeError):
    """A pipeline stage exited with an error; nothing downstream of it ran."""


class RetrainRefused(RuntimeError):
    """The run was refused (policy, label set); the workspace is as it was before."""


PROGRESS = logging.getLogger(PROGRESS_LOGGER)  # one line per step, for the terminal


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
    # per-run overrides: the run was registered, and the workspace put back to params.yaml's
    workspace_restored: bool = False
    notes: list[str] = field(default_factory=list)  # e.g. a killed run's workspace restored
    drift: dict[str, Any] | None = None  # the data-drift report against the champion's data


def _failure_detail(layout: Layout, stage: str) -> str:
    """The one-line cause of a failed stage: the stage's own message, or for validation the
    unmet expectations (its Data Docs are kept in .senti/failed-run/)."""
    if stage == "validate" and layout.validation_report.exists():
        report = read_json(layout.validation_report)
        failed = "; ".join(f"{o['name']} ({o['observed']})"
                           for o in report.get("outcomes", []) if not o.get("success"))
        docs = layout.root / STATE_DIR / workspace.FAILED_DIR / layout.paths.data_docs
        return f"data validation failed: {failed}; Data Docs: {docs / 'index.html'}"
    cause = layout.root / ERROR_FILE
    if cause.exists():
        return cause.read_text(encoding="utf-8").strip()
    return f"stage {stage} failed (its output is in the log)"


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(root: str, stage: str, position: str) -> str:
    """``dvc repro --single-item <stage>``; returns "ran" or "skipped"."""
    started = time.perf_counter()
    PROGRESS.info("[%s] %s ...", position, stage)
    (Path(root) / ERROR_FILE).unlink(missing_ok=True)
    try:
        ran = versioning.reproduce(root, stage)
    except versioning.StageError as exc:
        _, layout = load_context(root)
        raise StageFailed(_failure_detail(layout, stage)) from exc
    status = "ran" if ran else "skipped"
    seconds = time.perf_counter() - started
    PROGRESS.info("[%s] %s %s (%.0f s)", position, stage, status, seconds)
    get_run_logger().info("stage %s %s (%.1fs)", stage, status, seconds)
    return status


@task(name="check-label-set", cache_policy=NONE)
def check_label_set(root: str) -> None:
    """Refuse data whose label set differs from the champion's: its version could never be
    judged against the champion. A new label set needs its own registered model."""
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    champion = registry.champion_labels(params.registry.model_name)
    labels = read_json(layout.labels)
    if champion is not None and champion[1] != labels:
        raise RetrainRefused(
            f"the data's labels {labels} differ from those of {params.registry.model_name} "
            f"v{champion[0]} (@champion) {champion[1]}: a new label set needs its own model "
            f"name (--set registry.model_name=NEW_NAME)")


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
def register(root: str, flow_run_id: str | None,
             policy_tags: dict[str, str]) -> tuple[registry.RegisteredVersion, str | None]:
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
        **policy_tags,
    })
    return registry.log_retrain(layout, params, run_tags, fingerprint), None


@task(name="data-drift", cache_policy=NONE)
def data_drift(root: str, run_id: str) -> dict[str, Any] | None:
    """Compare this run's data with the champion's (senti.drift); log the report to the run
    (artifacts, ``drift.*`` metrics, the ``senti.drift`` tag) and as a Prefect artifact.
    None when there is nothing to compare with (no champion, or one without a profile)."""
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    try:
        reference = registry.drift_reference(params)
    except drift.NoReference as exc:
        get_run_logger().warning("no drift report: %s", exc)
        return None
    report = drift.compare(reference, drift.version_profile(layout, params.drift).data,
                           params.drift, current="retrain data")
    registry.log_drift_report(run_id, report)
    create_markdown_artifact(drift.render_markdown(report), key="data-drift",
                             description=report.headline())
    return report.to_dict()


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


def _policy_tags(root: Path, overrides: dict[str, Any], force: bool,
                 reason: str | None) -> dict[str, str]:
    """Check per-run overrides against the checked-in params; a loosened validation or
    promotion policy needs ``force`` and a ``reason``, and is recorded (run and version tags)."""
    checked_in, _ = load_context(root)
    effective = parse_params(apply_overrides(checked_in.raw, overrides))
    policy = loosened(checked_in, effective)
    if not policy:
        return {}
    changes = ", ".join(f"{key}={new!r} (checked in: {old!r})"
                        for key, (old, new) in policy.items())
    if not (force and reason and reason.strip()):
        raise RetrainRefused(f"--set {changes} loosens the checked-in policy: rerun with "
                             "--force --reason \"...\" (recorded as policy-overridden)")
    return {tags.POLICY_OVERRIDES: json.dumps({k: list(v) for k, v in policy.items()}),
            tags.POLICY_REASON: reason.strip()}


def _pipeline(root: Path, overrides: dict[str, Any], policy_tags: dict[str, str],
              result: RetrainResult) -> None:
    """Every stage, the data push, registration and the gate; fills ``result``."""
    _, layout = load_context(root)
    if overrides:
        write_overrides(root, overrides)  # journaled: restored whatever happens
    ingest_before = versioning.output_hash(versioning.read_lock(root), "ingest")
    names = versioning.stages(root)
    for number, stage in enumerate(names, 1):
        result.stages[stage] = run_stage(str(root), stage, f"{number}/{len(names)}")
        if stage == "prepare":
            check_label_set(str(root))
    lock = versioning.read_lock(root)
    PROGRESS.info("registering the model ...")
    result.pushed = push_data(str(root))
    version, judged = register(str(root), flow_run.get_id(), policy_tags)
    if version.created:  # before the gate, which may make this version the champion
        result.drift = data_drift(str(root), version.run_id)
    # a version judged before (inputs unchanged) is not judged again: that would only repeat
    # the decision, or undo a rollback
    PROGRESS.info("promotion gate on version %s ...", version.version)
    result.promotion = gate_new_version(str(root), version.version) if not judged else {
        "challenger": version.version, "promoted": False, "decision": "unchanged",
        "reason": f"inputs unchanged; version {version.version} was judged already "
                  f"({judged}): `senti promote --version {version.version}` reruns the gate"}
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


def _notify_failure(flow: Any, run: Any, state: Any) -> None:
    """on_failure hook: tell the team (notify.webhook_url / SENTI_WEBHOOK_URL)."""
    project = project_root(run.parameters.get("root"))
    params, _ = load_context(project)
    notify.post(notify.webhook_url(params.notify.webhook_url), "retrain.failed",
                f"senti retrain failed in {project}: {state.message}",
                project=str(project), flow_run=str(run.id), flow_run_name=run.name)


@flow(name="retrain", log_prints=True, on_failure=[_notify_failure])
def retrain(root: str | None = None, overrides: dict[str, Any] | None = None,
            force: bool = False, reason: str | None = None,
            wait_s: float = 0.0) -> dict[str, Any]:
    """Run every pipeline stage through DVC, push the data to the default DVC remote, track
    and register the model, then run the promotion gate on it (the champion changes only if
    the gate passes).

    One retrain per project at a time: a second waits up to ``wait_s`` seconds for the
    project lock, then fails naming the holder. ``overrides`` maps ``section.key`` to a value
    for this run only (the CLI's ``--set key=value``); one that loosens the validation or
    promotion policy needs ``force`` and a ``reason``. A run that fails, is refused or has
    overrides leaves params.yaml, dvc.lock and every pipeline output byte-identical to before
    (an override run's model is registered; its data is in the DVC cache and remote).
    """
    project = project_root(root)
    overrides = overrides or {}
    policy_tags = _policy_tags(project, overrides, force, reason)  # before anything changes
    result = RetrainResult()
    with workspace.project_lock(project, run=f"flow run {flow_run.get_id()}", wait_s=wait_s,
                                notes=result.notes):
        if restored := workspace.recover(project):
            result.notes.append(f"a killed run's changes were undone: {', '.join(restored)}")
        for note in result.notes:
            PROGRESS.warning("note: %s", note)
            get_run_logger().warning(note)
        _, layout = load_context(project)
        workspace.begin(project, versioning.outputs(project))
        saved_owner = os.environ.get(OWNER_ENV)
        os.environ[OWNER_ENV] = str(os.getpid())  # stages stop if this process dies
        keep = False
        try:
            _pipeline(project, overrides, policy_tags, result)
            keep = not overrides
        except BaseException:
            workspace.keep_failed(project, [layout.reports])
            raise
        finally:
            if saved_owner is None:
                os.environ.pop(OWNER_ENV, None)
            else:
                os.environ[OWNER_ENV] = saved_owner
            if keep:
                workspace.commit(project)
            else:
                result.workspace_restored = bool(workspace.restore(project))
    return asdict(result)
