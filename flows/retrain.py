"""Prefect flow ``retrain``: the DVC pipeline stage by stage, then MLflow registration.

Each stage runs through DVC, so a stage whose dependencies and params are unchanged is
skipped and dvc.lock records every hash. Works with the ephemeral Prefect API (no server
configured) and against a server when ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import chdir, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run

from flows import lineage as lineage_flows
from flows.promote import gate_new_version
from senti import lineage, registry
from senti.config import Layout, load_params, write_overrides
from senti.io import read_json
from senti.segment import jieba_version

# DVC's "to track the changes with git, run ..." hint after every stage is noise here.
logging.getLogger("dvc.repo.scm_context").setLevel(logging.WARNING)

STAGES = ("ingest", "validate", "prepare", "segment", "vocab", "embeddings", "train", "evaluate")


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


@contextmanager
def _stage_environment(root: str):
    """DVC resolves stage paths from the working directory, and stage commands
    (``senti stage ...``) must run with this interpreter's environment."""
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{saved}"
    try:
        with chdir(root):
            yield
    finally:
        os.environ["PATH"] = saved


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
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    logger = get_run_logger()
    started = time.perf_counter()
    try:
        with _stage_environment(root), Repo(root) as repo:
            ran = repo.reproduce(stage, single_item=True)
    except ReproductionError as exc:
        detail = _failure_detail(Layout(Path(root)), stage)
        raise StageFailed(f"stage {stage!r} failed; downstream stages not run.\n{detail}") from exc
    status = "ran" if ran else "skipped"
    logger.info("stage %s %s (%.1fs)", stage, status, time.perf_counter() - started)
    return status


@task(name="dvc-push", retries=2, retry_delay_seconds=[5, 30], cache_policy=NONE)
def push_data(root: str) -> int | None:
    """``dvc push`` to the default remote, so every data version a registered model points
    to can be fetched later (``senti lineage verify|checkout``). Runs before registration: a
    version is registered only once its data is in the remote."""
    pushed = lineage_flows.push(root)
    if pushed is None:
        get_run_logger().warning("no default DVC remote: data not pushed (see docs/lineage.md)")
    else:
        get_run_logger().info("dvc push: %d file(s) sent to the default remote", pushed)
    return pushed


@task(name="register-model")
def register(root: str, flow_run_id: str | None) -> registry.RegisteredVersion:
    """Log the run to MLflow and register the model, unless these inputs already were."""
    layout = Layout(Path(root))
    params = load_params(root)
    registry.configure(layout, params.registry.experiment)
    lock = lineage.read_lock(layout.dvc_lock)
    fingerprint = lineage.inputs_fingerprint(lock)
    found = registry.find_version(params.registry.model_name, fingerprint)
    if found is not None:
        get_run_logger().info("inputs unchanged: version %s already has them", found.version)
        return registry.existing(found)
    git = lineage.git_state(layout.root)
    tags = {f"dvc.{key}": value for key, value in lineage.stage_hashes(lock).items()}
    tags.update({
        "git.commit": git.commit or "unknown",
        "git.dirty": str(git.dirty),
        "jieba.version": jieba_version(),
        "vocab.sha256": read_json(layout.vocab_report)["sha256"],
        "prefect.flow_run_id": flow_run_id or "none",
        "prefect.deployment": deployment.name or "none",  # "none": run from the CLI
    })
    return registry.log_retrain(layout, params, tags, fingerprint)


def _ingest_output(layout: Layout) -> str | None:
    """md5 of the raw copy as dvc.lock records it (None before the first run)."""
    outs = lineage.read_lock(layout.dvc_lock).get("ingest", {}).get("outs") or [{}]
    return outs[0].get("md5")


def _already_judged(root: str, version: str) -> dict[str, Any] | None:
    """The gate's recorded decision on ``version`` as a promotion result, or None if the gate
    never judged it (e.g. the last run stopped after registering). Inputs unchanged since
    then, so rerunning it would only repeat the decision, or undo a rollback."""
    from mlflow import MlflowClient

    from senti.promote import TAG_PREFIX

    params = load_params(root)
    registry.configure(Layout(Path(root)), params.registry.experiment)
    name = params.registry.model_name
    tags = MlflowClient().get_model_version(name, version).tags
    decision = tags.get(f"{TAG_PREFIX}decision")
    if decision is None:
        return None
    return {"challenger": version, "champion": registry.alias_version(name, registry.CHAMPION),
            "promoted": False, "decision": "unchanged",
            "reason": f"inputs unchanged; version {version} was judged already "
                      f"({decision}, {tags.get(f'{TAG_PREFIX}time', 'time unknown')}): "
                      "`senti promote --version " f"{version}` reruns the gate"}


def _nothing_changed_markdown(result: RetrainResult, ingest_md5: str | None) -> str:
    def status(stage: str, state: str) -> str:
        if stage == "ingest":  # always_changed: DVC reruns it to re-read the source
            return f"re-read the source; output unchanged (md5 `{ingest_md5}`)"
        return state
    rows = "\n".join(f"| {s} | {status(s, state)} |" for s, state in result.stages.items())
    return (f"# Retrain: nothing changed\n\n"
            f"Data and params are unchanged since version **{result.version}** "
            f"(`{result.model_uri}`): no new version was registered.\n\n"
            f"## What was checked\n\n| stage | status |\n|---|---|\n{rows}\n\n"
            f"- inputs fingerprint (dvc.lock: every stage's command and params, the source "
            f"dependencies, the raw data hash): `{result.fingerprint}`\n"
            f"- registered version with this fingerprint: **{result.version}**\n"
            f"- promotion gate: **{result.promotion.get('decision', 'not run')}**: "
            f"{result.promotion.get('reason', '')}\n")


def _summary_markdown(result: RetrainResult) -> str:
    rows = "\n".join(f"| {s} | {status} |" for s, status in result.stages.items())
    model, baseline = result.metrics.get("model", {}), result.metrics.get("baseline", {})
    registered = ("registered new version" if result.registered
                  else "nothing changed: no new version")
    return (f"# Retrain\n\n| stage | status |\n|---|---|\n{rows}\n\n"
            f"Model `{result.model_uri}` ({registered}).\n\n"
            f"| | accuracy | macro-F1 |\n|---|---|---|\n"
            f"| BiLSTM | {model.get('accuracy', 0):.4f} | {model.get('macro_f1', 0):.4f} |\n"
            f"| baseline | {baseline.get('accuracy', 0):.4f} | "
            f"{baseline.get('macro_f1', 0):.4f} |\n\n"
            f"Promotion gate: **{result.promotion.get('decision', 'not run')}**: "
            f"{result.promotion.get('reason', '')}\n")


@flow(name="retrain", log_prints=True)
def retrain(root: str = ".", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every pipeline stage through DVC, push the data to the default DVC remote, track
    and register the model, then run the promotion gate on it (the champion changes only if
    the gate passes).

    ``overrides`` maps ``section.key`` to a value for this run only (the CLI's
    ``--set key=value``); params.yaml is restored afterwards, whatever happens.
    """
    root = str(Path(root).resolve())
    layout = Layout(Path(root))
    # checked against params.yaml like `senti retrain --set` before anything runs, so a
    # deployment run with parameters={"overrides": {...}} fails the same way
    original = write_overrides(root, overrides) if overrides else None
    result = RetrainResult()
    ingest_before = _ingest_output(layout)
    try:
        for stage in STAGES:
            result.stages[stage] = run_stage(root, stage)
        ingest_after = _ingest_output(layout)
        result.pushed = push_data(root)
        version = register(root, flow_run.get_id())
        judged = None if version.created else _already_judged(root, version.version)
        result.promotion = judged or gate_new_version(root, version.version)
    finally:
        if original is not None:
            (Path(root) / "params.yaml").write_text(original, encoding="utf-8")
    result.version, result.model_uri = version.version, version.model_uri
    result.registered = version.created
    result.metrics = read_json(layout.metrics)
    result.fingerprint = lineage.inputs_fingerprint(lineage.read_lock(layout.dvc_lock))
    result.nothing_changed = (
        not version.created and ingest_before is not None and ingest_after == ingest_before
        and all(status == "skipped" for stage, status in result.stages.items()
                if stage != "ingest"))
    if result.nothing_changed:
        create_markdown_artifact(
            _nothing_changed_markdown(result, ingest_after), key="retrain-summary",
            description=f"nothing changed: every stage skipped, version {result.version} "
                        "already has these inputs")
    else:
        create_markdown_artifact(_summary_markdown(result), key="retrain-summary",
                                 description="stages run or skipped, model version, test "
                                             "metrics")
    return asdict(result)

