"""Promotion gate: decide whether a challenger version replaces the champion, and record it.

The gate re-evaluates the challenger and the current champion on the same data, the current
test split (raw ``text`` of ``tokens.parquet`` rows with ``split == "test"``), each through
its own registered pyfunc model (so each uses its own vocabulary), and promotes only if:

1. ``validation``: the challenger's training data passed validation (tag
   :data:`senti.registry.VALIDATION_TAG`, else the run's ``reports/validation.json``);
2. ``macro_f1``: its macro-F1 >= the champion's + ``promote.min_delta``;
3. ``mcnemar``: it is not significantly worse: McNemar's exact test on the two models'
   per-example correctness, rejecting when the challenger is wrong more often with
   ``p < promote.alpha``;
4. ``baseline``: its run's test macro-F1 beats the run's TF-IDF baseline (both measured by
   the evaluate stage on that run's data; off with ``promote.require_beat_baseline: false``);
5. ``behaviour``: it passes the behavioural suite (:mod:`senti.behaviour`) at
   >= ``promote.min_behaviour_pass_rate``.

With no champion, 1, 4 and 5 decide. Every decision is recorded: ``promote.*`` tags on the
challenger version, a row in its run's table ``promotion/decisions.json`` (and the suite's
per-case results in ``promotion/behaviour.json``), metrics on its run. The champion history
is a JSON list of reigns in the registered-model tag :data:`HISTORY_TAG`; each reign
remembers the one it replaced, so :func:`rollback` restores the previous champion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from senti import registry
from senti.behaviour import BehaviourResult, load_cases, run_suite
from senti.config import Layout, Params, PromoteParams
from senti.evaluate import classification_metrics, mcnemar_test
from senti.io import read_json
from senti.registry import CHALLENGER, CHAMPION, VALIDATION_TAG

TAG_PREFIX = "promote."
HISTORY_TAG = "champion.history"
DECISIONS_TABLE = "promotion/decisions.json"
BEHAVIOUR_TABLE = "promotion/behaviour.json"
NONE = "none"


class PromotionError(RuntimeError):
    """The gate cannot run (no challenger, already champion, no history to roll back...)."""


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelScore:
    """One version's results on the gate's test data."""

    version: str
    accuracy: float
    macro_f1: float
    correct: np.ndarray = field(repr=False, compare=False)  # per-example, in test-split order

    def metrics(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1}


@dataclass(frozen=True)
class Condition:
    name: str  # validation | macro_f1 | mcnemar | baseline | behaviour
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on ``challenger`` against ``champion`` (None: there was none)."""

    challenger: str
    champion: str | None
    promoted: bool
    decision: str  # "promoted" | "rejected" | "forced" (a rejection overridden by an operator)
    reasons: list[str]  # the failed conditions when rejected, every condition when promoted
    conditions: list[Condition]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    p_value: float | None  # McNemar, None without a champion
    behaviour: BehaviourResult = field(repr=False)
    time: str = field(default_factory=now_utc)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able summary (behaviour as pass rates, not per case)."""
        out = asdict(self)
        out["behaviour"] = {"pass_rate": self.behaviour.pass_rate,
                            "by_check": self.behaviour.by_check}
        out["reason"] = self.reason
        return out


def score_predictions(version: str, predictions: pd.DataFrame, y_true: Sequence[str],
                      labels: list[str]) -> ModelScore:
    """Score a pyfunc/Predictor output frame (``prob_<label>`` columns) against true labels."""
    missing = [label for label in labels if f"prob_{label}" not in predictions.columns]
    if missing:
        raise PromotionError(f"version {version} has no output for label(s) {missing}: "
                             "it was trained on another label set")
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in y_true], dtype=int)
    proba = predictions[[f"prob_{label}" for label in labels]].to_numpy(dtype=float)
    metrics = classification_metrics(y, proba, labels)
    return ModelScore(version, metrics["accuracy"], metrics["macro_f1"], proba.argmax(1) == y)


def decide(challenger: ModelScore, champion: ModelScore | None, *, params: PromoteParams,
           validation_passed: bool, run_metrics: dict[str, float],
           behaviour: BehaviourResult, now: str | None = None) -> GateDecision:
    """Apply the gate's conditions (see the module docstring); pure, no I/O.

    ``run_metrics`` holds the challenger run's ``test.model.macro_f1`` and
    ``test.baseline.macro_f1`` (as logged by :func:`senti.registry.log_retrain`).
    """
    conditions = [Condition("validation", validation_passed,
                            "training data passed validation" if validation_passed else
                            "training data did not pass validation (or has no record of it)")]
    p_value = None
    if champion is not None:
        needed = champion.macro_f1 + params.min_delta
        conditions.append(Condition(
            "macro_f1", challenger.macro_f1 >= needed,
            f"macro-F1 {challenger.macro_f1:.4f} vs champion v{champion.version} "
            f"{champion.macro_f1:.4f} (needs >= {needed:.4f})"))
        test = mcnemar_test(champion.correct, challenger.correct)
        p_value = test["p_value"]
        worse = test["b10"] > test["b01"] and p_value < params.alpha
        conditions.append(Condition(
            "mcnemar", not worse,
            f"McNemar p={p_value:.4g} (alpha {params.alpha}): challenger right where champion "
            f"wrong on {test['b01']}, wrong where champion right on {test['b10']}"
            + (" (significantly worse)" if worse else "")))
    else:
        conditions.append(Condition("champion", True, "no champion yet"))
    model_f1 = run_metrics.get("test.model.macro_f1")
    baseline_f1 = run_metrics.get("test.baseline.macro_f1")
    if not params.require_beat_baseline:
        conditions.append(Condition("baseline", True,
                                    "baseline not required (promote.require_beat_baseline)"))
    elif model_f1 is None or baseline_f1 is None:
        conditions.append(Condition("baseline", False, "its run has no test macro-F1 metrics "
                                    "for the model and baseline"))
    else:
        conditions.append(Condition(
            "baseline", model_f1 > baseline_f1,
            f"run macro-F1 {model_f1:.4f} vs its baseline {baseline_f1:.4f}"))
    rate, floor = behaviour.pass_rate, params.min_behaviour_pass_rate
    conditions.append(Condition(
        "behaviour", rate is None or rate >= floor,
        "no applicable behavioural checks" if rate is None else
        f"behavioural checks pass rate {rate:.3f} (needs >= {floor:.3f})"))
    failed = [c for c in conditions if not c.passed]
    return GateDecision(
        challenger=challenger.version, champion=None if champion is None else champion.version,
        promoted=not failed, decision="rejected" if failed else "promoted",
        reasons=[c.detail for c in (failed or conditions)], conditions=conditions,
        challenger_metrics=challenger.metrics(),
        champion_metrics=None if champion is None else champion.metrics(),
        p_value=p_value, behaviour=behaviour, time=now or now_utc())


def force(decision: GateDecision, reason: str) -> GateDecision:
    """An operator's override of a rejection; a passed gate is left as it is."""
    if not reason.strip():
        raise PromotionError("a forced promotion needs a reason")
    if decision.promoted:
        return decision
    return replace(decision, promoted=True, decision="forced",
                   reasons=[f"forced: {reason.strip()}",
                            *(f"overrode: {r}" for r in decision.reasons)])


# ---- the champion history (pure) --------------------------------------------------------

def push_champion(history: list[dict], version: str, how: str, reason: str,
                  now: str) -> list[dict]:
    """A new reign for ``version``; the current one (the last) ends and becomes its previous."""
    new = [dict(entry) for entry in history]
    previous = None
    if new:
        new[-1]["until"] = new[-1]["until"] or now
        previous = new[-1]["n"]
    new.append({"n": new[-1]["n"] + 1 if new else 1, "version": version, "how": how,
                "reason": reason, "since": now, "until": None, "previous": previous})
    return new


def rollback_history(history: list[dict], reason: str, now: str) -> tuple[list[dict], str]:
    """End the current reign and restore the one it replaced; return (history, version).

    The restored reign inherits its original predecessor, so repeated rollbacks walk back
    through past champions rather than toggling between two versions.
    """
    if not history:
        raise PromotionError("no champion history recorded: nothing to roll back to")
    current = history[-1]
    by_n = {entry["n"]: entry for entry in history}
    previous = by_n.get(current["previous"])
    if previous is None:
        raise PromotionError(f"version {current['version']} is the first recorded champion: "
                             "there is no earlier champion to roll back to")
    new = [dict(entry) for entry in history]
    new[-1]["until"] = now
    new.append({"n": current["n"] + 1, "version": previous["version"], "how": "rollback",
                "reason": reason, "since": now, "until": None,
                "previous": previous["previous"]})
    return new, previous["version"]


# ---- evaluation against the registry ----------------------------------------------------

def load_test_split(layout: Layout) -> tuple[list[str], list[str]]:
    """Raw texts and labels of the current test split."""
    tokens = pd.read_parquet(layout.tokens, columns=["text", "label", "split"])
    test = tokens[tokens["split"] == "test"]
    if test.empty:
        raise PromotionError(f"{layout.tokens} has no test rows: run senti retrain first")
    return test["text"].tolist(), test["label"].astype(str).tolist()


def _validation_passed(client: MlflowClient, version) -> bool:
    tag = version.tags.get(VALIDATION_TAG)
    if tag is not None:
        return tag == "passed"
    try:  # versions registered before the tag existed: the run's validation report
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id,
                                                   artifact_path="reports/validation.json")
    except (MlflowException, OSError):
        return False
    return bool(read_json(path).get("success"))


def evaluate_gate(layout: Layout, params: Params, version: str | None = None) -> GateDecision:
    """Re-evaluate ``version`` (default: the challenger) and the champion; decide."""
    name = params.registry.model_name
    registry.configure(layout, params.registry.experiment)
    client = MlflowClient()
    challenger = version or registry.alias_version(name, CHALLENGER)
    if challenger is None:
        raise PromotionError(f"{name} has no @{CHALLENGER}: run senti retrain, or give --version")
    try:
        model_version = client.get_model_version(name, challenger)
    except MlflowException as exc:
        raise PromotionError(f"{name} has no version {challenger}") from exc
    champion = registry.alias_version(name, CHAMPION)
    if champion == str(challenger):
        raise PromotionError(f"version {challenger} is already the champion")
    texts, y_true = load_test_split(layout)
    labels = read_json(layout.labels)
    frame = pd.DataFrame({"text": texts})

    model = mlflow.pyfunc.load_model(f"models:/{name}/{challenger}")
    challenger_score = score_predictions(str(challenger), model.predict(frame), y_true, labels)
    behaviour = run_suite(
        load_cases(), lambda t: model.predict(pd.DataFrame({"text": t}))["label"].tolist(),
        labels)
    champion_score = None
    if champion is not None:
        champion_model = mlflow.pyfunc.load_model(f"models:/{name}/{champion}")
        champion_score = score_predictions(champion, champion_model.predict(frame), y_true,
                                           labels)
    return decide(challenger_score, champion_score, params=params.promote,
                  validation_passed=_validation_passed(client, model_version),
                  run_metrics=client.get_run(model_version.run_id).data.metrics,
                  behaviour=behaviour)


# ---- records -------------------------------------------------------------------------

def _fmt(value: float | None) -> str:
    return NONE if value is None else f"{value:.6g}"


def decision_tags(decision: GateDecision, flow_run_id: str | None) -> dict[str, str]:
    """The ``promote.*`` model-version tags recording a decision."""
    champion = decision.champion_metrics or {}
    return {f"{TAG_PREFIX}{key}": value for key, value in {
        "decision": decision.decision,
        "reason": decision.reason,
        "time": decision.time,
        "flow_run_id": flow_run_id or NONE,
        "champion_version": decision.champion or NONE,
        "challenger.macro_f1": _fmt(decision.challenger_metrics["macro_f1"]),
        "challenger.accuracy": _fmt(decision.challenger_metrics["accuracy"]),
        "champion.macro_f1": _fmt(champion.get("macro_f1")),
        "champion.accuracy": _fmt(champion.get("accuracy")),
        "mcnemar_p_value": _fmt(decision.p_value),
        "behaviour_pass_rate": _fmt(decision.behaviour.pass_rate),
        "conditions": json.dumps({c.name: c.passed for c in decision.conditions}),
    }.items()}


def _table_row(*, time: str, decision: str, version: str, champion: str | None, reason: str,
               flow_run_id: str | None, decision_obj: GateDecision | None = None) -> dict:
    metrics = decision_obj.challenger_metrics if decision_obj else {}
    champion_metrics = (decision_obj.champion_metrics or {}) if decision_obj else {}
    return {"time": time, "decision": decision, "version": version,
            "champion_before": champion or NONE, "reason": reason,
            "challenger_macro_f1": metrics.get("macro_f1"),
            "champion_macro_f1": champion_metrics.get("macro_f1"),
            "mcnemar_p_value": decision_obj.p_value if decision_obj else None,
            "behaviour_pass_rate": decision_obj.behaviour.pass_rate if decision_obj else None,
            "flow_run_id": flow_run_id or NONE}


def champion_history(model_name: str) -> list[dict]:
    """Past and present champions, oldest first (see :func:`push_champion`)."""
    model = MlflowClient().get_registered_model(model_name)
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def _set_champion(model_name: str, version: str, history: list[dict]) -> None:
    client = MlflowClient()
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if registry.alias_version(model_name, CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)


def _replace_decision_tags(model_name: str, version: str, tags: dict[str, str]) -> None:
    """Set ``promote.*`` tags to exactly ``tags``: they describe the latest decision only
    (earlier ones stay in the run's decisions table)."""
    client = MlflowClient()
    for key in client.get_model_version(model_name, version).tags:
        if key.startswith(TAG_PREFIX) and key not in tags:
            client.delete_model_version_tag(model_name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def record_decision(model_name: str, decision: GateDecision, flow_run_id: str | None) -> None:
    """Tag the version, append to its run's tables and metrics; move @champion if promoted."""
    client = MlflowClient()
    _replace_decision_tags(model_name, decision.challenger,
                           decision_tags(decision, flow_run_id))
    run_id = client.get_model_version(model_name, decision.challenger).run_id
    mlflow.log_table(pd.DataFrame([_table_row(
        time=decision.time, decision=decision.decision, version=decision.challenger,
        champion=decision.champion, reason=decision.reason, flow_run_id=flow_run_id,
        decision_obj=decision)]), DECISIONS_TABLE, run_id=run_id)
    if decision.behaviour.cases:
        cases = pd.DataFrame(decision.behaviour.cases).assign(time=decision.time)
        mlflow.log_table(cases, BEHAVIOUR_TABLE, run_id=run_id)
    stamp = int(datetime.fromisoformat(decision.time).timestamp() * 1000)
    values = {"gate.promoted": float(decision.promoted),
              "gate.challenger.macro_f1": decision.challenger_metrics["macro_f1"]}
    if decision.champion_metrics:
        values["gate.champion.macro_f1"] = decision.champion_metrics["macro_f1"]
    if decision.p_value is not None:
        values["gate.mcnemar_p_value"] = decision.p_value
    if decision.behaviour.pass_rate is not None:
        values["behaviour.pass_rate"] = decision.behaviour.pass_rate
    values.update({f"behaviour.{check}.pass_rate": rate
                   for check, rate in decision.behaviour.by_check.items()})
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in values.items()])
    if decision.promoted:
        history = push_champion(champion_history(model_name), decision.challenger,
                                decision.decision, decision.reason, decision.time)
        _set_champion(model_name, decision.challenger, history)


@dataclass(frozen=True)
class Rollback:
    from_version: str
    to_version: str
    reason: str
    time: str


def rollback(model_name: str, reason: str, flow_run_id: str | None,
             now: str | None = None) -> Rollback:
    """Make the previous champion the champion again, recorded like a gate decision."""
    now = now or now_utc()
    current = registry.alias_version(model_name, CHAMPION)
    if current is None:
        raise PromotionError(f"{model_name} has no @{CHAMPION}: nothing to roll back")
    history = champion_history(model_name)
    if history and history[-1]["version"] != current:
        raise PromotionError(
            f"@{CHAMPION} is version {current} but the recorded history ends with version "
            f"{history[-1]['version']}: the alias was moved outside senti; "
            "use senti promote --version N --force --reason ...")
    history, restored = rollback_history(history, reason, now)
    _set_champion(model_name, restored, history)
    client = MlflowClient()
    tags = {"decision": "rollback", "reason": reason, "time": now,
            "flow_run_id": flow_run_id or NONE, "champion_version": current}
    _replace_decision_tags(model_name, restored,
                           {f"{TAG_PREFIX}{key}": value for key, value in tags.items()})
    client.set_model_version_tag(model_name, current, f"{TAG_PREFIX}rolled_back", now)
    run_id = client.get_model_version(model_name, restored).run_id
    mlflow.log_table(pd.DataFrame([_table_row(
        time=now, decision="rollback", version=restored, champion=current, reason=reason,
        flow_run_id=flow_run_id)]), DECISIONS_TABLE, run_id=run_id)
    return Rollback(current, restored, reason, now)


# ---- reports -------------------------------------------------------------------------

def decision_markdown(decision: GateDecision, model_name: str) -> str:
    """A Markdown report of a decision (for a Prefect artifact or a terminal)."""
    verdict = {"promoted": "promoted to @champion", "forced": "promoted to @champion (FORCED)",
               "rejected": "rejected: @champion unchanged"}[decision.decision]
    champion = decision.champion_metrics or {}
    lines = [f"# Promotion gate: {model_name} v{decision.challenger} {verdict}", "",
             f"Champion before: {('v' + decision.champion) if decision.champion else 'none'}; "
             f"decided {decision.time}.", "", "| condition | passed | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |"
              for c in decision.conditions]
    lines += ["", "| | challenger | champion |", "|---|---:|---:|"]
    for key in ("accuracy", "macro_f1"):
        other = champion.get(key)
        lines.append(f"| {key} | {decision.challenger_metrics[key]:.4f} | "
                     f"{'—' if other is None else f'{other:.4f}'} |")
    if decision.behaviour.by_check:
        lines += ["", "| behavioural check | pass rate |", "|---|---:|"]
        lines += [f"| {check} | {rate:.3f} |"
                  for check, rate in decision.behaviour.by_check.items()]
    lines += ["", "Reason: " + decision.reason]
    return "\n".join(lines) + "\n"


def rollback_markdown(record: Rollback, model_name: str) -> str:
    return (f"# Rollback: {model_name} @champion v{record.from_version} -> "
            f"v{record.to_version}\n\nAt {record.time}. Reason: {record.reason}\n")

