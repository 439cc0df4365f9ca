"""Prefect flows ``promote`` and ``rollback``: the promotion gate and its undo, and
``gate-new-version``, the gate at the end of a retrain.

The gate's logic is :mod:`senti.promote`, its MLflow reads and writes
:mod:`senti.registry`; these flows run it, record the decision (version tags, run table,
metrics, @champion) and post it as a Prefect markdown artifact. ``promote`` and ``rollback``
hold the project lock (:func:`senti.workspace.project_lock`) as a retrain does;
``gate-new-version`` runs inside a retrain, under its lock.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from senti import notify, registry, tags, workspace
from senti import promote as gate
from senti.config import load_context, project_root

ARTIFACT_KEY = "promotion-decision"


def _model_name(root: Path) -> str:
    """Point MLflow at the project's store; the registered model's name."""
    params, layout = load_context(root)
    registry.configure(layout, params.registry.experiment)
    return params.registry.model_name


def _run_label() -> str:
    """This flow run, as the project lock names its holder."""
    return f"flow run {flow_run.get_id()}"


evaluate = task(registry.evaluate_gate, name="evaluate-gate", cache_policy=NONE)
record = task(registry.record_decision, name="record-decision", cache_policy=NONE)


class Judged(NamedTuple):
    """A decision not recorded yet, and where it goes."""

    root: Path  # the project, whose ledger gets the decision
    model_name: str
    decision: gate.GateDecision
    webhook: str  # notify.webhook_url ("" = none)


def _judge(project: Path, version: str | None, forced_for: str | None = None) -> Judged:
    """Everything the gate does before it records anything: read the project, check the
    webhook URL (a malformed SENTI_WEBHOOK_URL fails here, not after @champion moved), judge
    ``version`` (default: @challenger), and force the decision when ``forced_for`` gives the
    reason."""
    params, layout = load_context(project)
    webhook = notify.webhook_url(params.notify.webhook_url)
    decision = evaluate(layout, params, version)
    if forced_for is not None:
        decision = gate.force(decision, forced_for)
    return Judged(layout.root, params.registry.model_name, decision, webhook)


def _record(judged: Judged) -> dict[str, Any]:
    """Record the decision (version tags, run table, metrics, @champion, ledger), post it to
    the webhook and as a Prefect artifact."""
    name, decision = judged.model_name, judged.decision
    record(judged.root, name, decision, flow_run.get_id())
    notify.post(judged.webhook, "promotion.decision",
                f"{name} v{decision.challenger}: {decision.decision}: {decision.reason}",
                model=name, decision=decision.to_dict())
    create_markdown_artifact(gate.decision_markdown(decision, name), key=ARTIFACT_KEY,
                             description=f"{name} v{decision.challenger}: {decision.decision}")
    get_run_logger().info("v%s %s: %s", decision.challenger, decision.decision, decision.reason)
    return decision.to_dict()


@flow(name="promote", log_prints=True)
def promote(root: str | None = None, version: str | None = None, force: bool = False,
            reason: str | None = None) -> dict[str, Any]:
    """Run the gate on ``version`` (default: @challenger) and promote it if it passes.

    ``force`` promotes despite a rejection; it needs a ``reason``, recorded with the gate's.
    Holds the project lock: while a retrain (or another promote or rollback) runs, it fails
    at once naming the holder (:class:`senti.workspace.LockBusy`).
    """
    if force and not (reason and reason.strip()):
        raise gate.PromotionError("--force needs --reason: say why the gate is overridden")
    project = project_root(root)
    with workspace.project_lock(project, command="promote", run=_run_label()):
        return _record(_judge(project, version, reason if force else None))


@flow(name="rollback", log_prints=True)
def rollback(root: str | None = None, reason: str = "manual rollback") -> dict[str, Any]:
    """Make the champion the current one replaced the champion again. Holds the project lock,
    like :func:`promote`."""
    project = project_root(root)
    with workspace.project_lock(project, command="rollback", run=_run_label()):
        params, layout = load_context(project)
        webhook = notify.webhook_url(params.notify.webhook_url)  # before anything changes
        registry.configure(layout, params.registry.experiment)
        name = params.registry.model_name
        restored = registry.rollback(project, name, reason, flow_run.get_id())
    notify.post(webhook, "promotion.rollback",
                f"{name} @champion rolled back v{restored.from_version} -> "
                f"v{restored.to_version}: {reason}", model=name, rollback=asdict(restored))
    create_markdown_artifact(gate.rollback_markdown(restored, name), key=ARTIFACT_KEY,
                             description=f"{name} rollback to v{restored.to_version}")
    return asdict(restored)


@flow(name="gate-new-version")
def gate_new_version(root: str, version: str) -> dict[str, Any]:
    """The end of a retrain, which holds the project lock (so this takes none): the gate on
    its version, unless that is the champion already. A gate that cannot run (a new label
    set, a model that cannot be loaded, the registry unreachable, a malformed
    SENTI_WEBHOOK_URL, ...) records nothing, leaves the champion and says why."""
    project = project_root(root)
    try:
        if registry.alias_version(_model_name(project), tags.CHAMPION) == version:
            return {"challenger": version, "champion": version, "promoted": False,
                    "decision": "unchanged",
                    "reason": f"version {version} is already the champion"}
        judged = _judge(project, version)
    except Exception as exc:  # nothing is recorded yet: whatever failed, the champion stays
        get_run_logger().warning("promotion gate could not run: %s", exc, exc_info=True)
        return {"challenger": version, "promoted": False, "decision": "error",
                "reason": f"gate could not run: {str(exc) or type(exc).__name__}"}
    return _record(judged)
