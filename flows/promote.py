"""Prefect flows ``promote`` and ``rollback``: the promotion gate and its undo, and
``gate-new-version``, the gate at the end of a retrain.

The gate's logic is :mod:`senti.promote`, its MLflow reads and writes
:mod:`senti.registry`; these flows run it, record the decision (version tags, run table,
metrics, @champion) and post it as a Prefect markdown artifact.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from senti import notify, registry, tags
from senti import promote as gate
from senti.config import load_context, project_root

ARTIFACT_KEY = "promotion-decision"


def _model_name(root: str | None) -> str:
    """Point MLflow at the project's store; the registered model's name."""
    params, layout = load_context(project_root(root))
    registry.configure(layout, params.registry.experiment)
    return params.registry.model_name


evaluate = task(registry.evaluate_gate, name="evaluate-gate", cache_policy=NONE)
record = task(registry.record_decision, name="record-decision", cache_policy=NONE)


@flow(name="promote", log_prints=True)
def promote(root: str | None = None, version: str | None = None, force: bool = False,
            reason: str | None = None) -> dict[str, Any]:
    """Run the gate on ``version`` (default: @challenger) and promote it if it passes.

    ``force`` promotes despite a rejection; it needs a ``reason``, recorded with the gate's.
    """
    if force and not (reason and reason.strip()):
        raise gate.PromotionError("--force needs --reason: say why the gate is overridden")
    params, layout = load_context(project_root(root))
    decision = evaluate(layout, params, version)
    if force:
        decision = gate.force(decision, reason or "")
    name = params.registry.model_name
    record(layout.root, name, decision, flow_run.get_id())
    notify.post(notify.webhook_url(params.notify.webhook_url), "promotion.decision",
                f"{name} v{decision.challenger}: {decision.decision}: {decision.reason}",
                model=name, decision=decision.to_dict())
    create_markdown_artifact(gate.decision_markdown(decision, name), key=ARTIFACT_KEY,
                             description=f"{name} v{decision.challenger}: {decision.decision}")
    get_run_logger().info("v%s %s: %s", decision.challenger, decision.decision, decision.reason)
    return decision.to_dict()


@flow(name="rollback", log_prints=True)
def rollback(root: str | None = None, reason: str = "manual rollback") -> dict[str, Any]:
    """Make the champion the current one replaced the champion again."""
    params, layout = load_context(project_root(root))
    registry.configure(layout, params.registry.experiment)
    name = params.registry.model_name
    restored = registry.rollback(layout.root, name, reason, flow_run.get_id())
    notify.post(notify.webhook_url(params.notify.webhook_url), "promotion.rollback",
                f"{name} @champion rolled back v{restored.from_version} -> "
                f"v{restored.to_version}: {reason}", model=name, rollback=asdict(restored))
    create_markdown_artifact(gate.rollback_markdown(restored, name), key=ARTIFACT_KEY,
                             description=f"{name} rollback to v{restored.to_version}")
    return asdict(restored)


@flow(name="gate-new-version")
def gate_new_version(root: str, version: str) -> dict[str, Any]:
    """The end of a retrain: the gate on its version, unless that is the champion already;
    a gate that cannot run (e.g. a new label set) leaves the champion and says why."""
    if registry.alias_version(_model_name(root), tags.CHAMPION) == version:
        return {"challenger": version, "champion": version, "promoted": False,
                "decision": "unchanged", "reason": f"version {version} is already the champion"}
    try:
        return promote(root=root, version=version)
    except gate.PromotionError as exc:
        get_run_logger().warning("promotion gate could not run: %s", exc)
        return {"challenger": version, "promoted": False, "decision": "error",
                "reason": f"gate could not run: {exc}"}
