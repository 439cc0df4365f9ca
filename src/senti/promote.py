"""Promotion gate: decide whether a challenger version replaces the champion (pure logic).

The gate re-evaluates the challenger and the current champion on the same data, the current
test split (raw ``text`` of ``tokens.parquet`` rows with ``split == "test"``), each through
its own registered pyfunc model (so each uses its own vocabulary), and promotes only if:

1. ``validation``: the challenger's training data passed validation (version tag
   :data:`senti.tags.VALIDATION`);
2. ``macro_f1``: its macro-F1 >= the champion's + ``promote.min_delta``;
3. ``mcnemar``: it is not significantly worse: McNemar's exact test on the two models'
   per-example correctness, rejecting when the challenger is wrong more often with
   ``p < promote.alpha``;
4. ``baseline``: its run's test macro-F1 beats the run's TF-IDF baseline (both measured by
   the evaluate stage on that run's data; off with ``promote.require_beat_baseline: false``);
5. ``behaviour``: it passes the behavioural suite (:mod:`senti.behaviour`) at
   >= ``promote.min_behaviour_pass_rate``.

With no champion, 1, 4 and 5 decide. This module decides and describes; it reads no
registry. :mod:`senti.registry` loads the models, passes their ``predict`` in
(:func:`judge`) and records what is decided here: the ``promote.*`` version tags
(:func:`decision_tags`, :func:`rollback_tags`), one row per decision in the run's decisions
table (the history), the ``gate.*``/``behaviour.*`` run metrics (:func:`decision_metrics`).

The champion history is a chain: a promoted version's ``promote.previous_champion`` tag
names the champion it replaced, and a rollback restores that version, which keeps its own
``previous_champion``, so repeated rollbacks walk back (:func:`rollback_target`). A version
promoted a second time records the champion it replaced that time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from senti import tags
from senti.behaviour import BehaviourResult, load_cases, run_suite
from senti.config import Layout, PromoteParams
from senti.io import read_json

# a loaded model's predict: a frame with a ``text`` column in, ``label`` and
# ``prob_<label>`` columns out (a pyfunc model's, or :meth:`senti.serve.Predictor.predict`)
Predict = Callable[[pd.DataFrame], pd.DataFrame]
# the decisions that make a champion
CHAMPION_DECISIONS = ("promoted", "forced", "policy-overridden", "rollback")
# the decisions table's score columns: GateDecision.scores with "_" for "." (None in a
# rollback's row)
SCORE_COLUMNS = ("challenger_macro_f1", "champion_macro_f1", "mcnemar_p_value",
                 "behaviour_pass_rate")
# the decisions-table columns that a version's ``promote.*`` tags repeat for its latest decision
TAGGED_COLUMNS = {"decision": tags.DECISION, "reason": tags.REASON, "time": tags.DECIDED_AT,
                  "flow_run_id": tags.DECISION_FLOW_RUN, "champion_before": tags.CHAMPION_VERSION}


class PromotionError(RuntimeError):
    """The gate cannot run (no challenger, already champion, nothing to roll back to...)."""


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
    name: str  # validation | champion | macro_f1 | mcnemar | baseline | behaviour
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on ``challenger`` against ``champion`` (None: there was none)."""

    challenger: str
    champion: str | None
    promoted: bool
    # "promoted" | "rejected" | "forced" (a rejection overridden by an operator) |
    # "policy-overridden" (promoted under a per-run policy looser than the checked-in one)
    decision: str
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
        return {**asdict(self), "reason": self.reason, "behaviour": {
            "pass_rate": self.behaviour.pass_rate, "by_check": self.behaviour.by_check}}

    def scores(self) -> dict[str, float | None]:
        """Its numbers as the ``promote.*`` tags name them (None: not measured)."""
        champion = self.champion_metrics or {}
        return {**{f"challenger.{key}": value for key, value in self.challenger_metrics.items()},
                **{f"champion.{key}": champion.get(key) for key in self.challenger_metrics},
                "mcnemar_p_value": self.p_value, "behaviour_pass_rate": self.behaviour.pass_rate}

    def table_row(self, flow_run_id: str | None) -> dict[str, Any]:
        """This decision's row in the challenger run's decisions table."""
        return _table_row(self, self.decision, self.challenger, self.champion, flow_run_id,
                          **{key.replace(".", "_"): value for key, value in self.scores().items()})


@dataclass(frozen=True)
class Rollback:
    from_version: str
    to_version: str
    reason: str
    time: str = field(default_factory=now_utc)

    def table_row(self, flow_run_id: str | None) -> dict[str, Any]:
        """This rollback's row in the restored version's run's decisions table."""
        return _table_row(self, "rollback", self.to_version, self.from_version, flow_run_id)


def _table_row(record: GateDecision | Rollback, decision: str, version: str,
               champion: str | None, flow_run_id: str | None, **scores: float | None) -> dict:
    return {"time": record.time, "decision": decision, "version": version,
            "champion_before": champion or tags.NONE, "reason": record.reason,
            **{column: scores.get(column) for column in SCORE_COLUMNS},
            "flow_run_id": flow_run_id or tags.NONE}


def score_predictions(version: str, predictions: pd.DataFrame, y_true: Sequence[str],
                      labels: list[str]) -> ModelScore:
    """Score a pyfunc/Predictor output frame (``prob_<label>`` columns) against true labels."""
    missing = [label for label in labels if f"prob_{label}" not in predictions.columns]
    if missing:
        raise PromotionError(f"version {version} has no output for label(s) {missing}: "
                             "it was trained on another label set")
    y = np.array([labels.index(label) for label in y_true], dtype=int)
    proba = predictions[[f"prob_{label}" for label in labels]].to_numpy(dtype=float)
    from senti.evaluate import classification_metrics  # sklearn: only when the gate runs

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
    test: dict[str, Any] = {}  # McNemar's, with a champion
    if champion is None:
        conditions.append(Condition("champion", True, "no champion yet"))
    else:
        needed = champion.macro_f1 + params.min_delta
        from senti.evaluate import mcnemar_test  # scipy: only when the gate runs

        test = mcnemar_test(champion.correct, challenger.correct)
        worse = test["b10"] > test["b01"] and test["p_value"] < params.alpha
        conditions += [
            Condition("macro_f1", challenger.macro_f1 >= needed,
                      f"macro-F1 {challenger.macro_f1:.4f} vs champion v{champion.version} "
                      f"{champion.macro_f1:.4f} (needs >= {needed:.4f})"),
            Condition("mcnemar", not worse,
                      f"McNemar p={test['p_value']:.4g} (alpha {params.alpha}): challenger "
                      f"right where champion wrong on {test['b01']}, wrong where champion right "
                      f"on {test['b10']}" + (" (significantly worse)" if worse else ""))]
    required = params.require_beat_baseline
    model_f1, baseline_f1 = (run_metrics.get(f"test.{who}.macro_f1")
                             for who in ("model", "baseline"))
    measured = model_f1 is not None and baseline_f1 is not None
    conditions.append(Condition(
        "baseline", not required or (measured and model_f1 > baseline_f1),
        "baseline not required (promote.require_beat_baseline)" if not required else
        f"run macro-F1 {model_f1:.4f} vs its baseline {baseline_f1:.4f}" if measured else
        "its run has no test macro-F1 metrics for the model and baseline"))
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
        p_value=test.get("p_value"), behaviour=behaviour, time=now or now_utc())


def force(decision: GateDecision, reason: str) -> GateDecision:
    """An operator's override of a rejection; a passed gate is left as it is."""
    if not reason.strip():
        raise PromotionError("a forced promotion needs a reason")
    if decision.promoted:
        return decision
    return replace(decision, promoted=True, decision="forced",
                   reasons=[f"forced: {reason.strip()}",
                            *(f"overrode: {r}" for r in decision.reasons)])


def policy_overridden(decision: GateDecision, overrides: Mapping[str, Any],
                      reason: str) -> GateDecision:
    """A promotion decided under a per-run policy looser than the checked-in one
    (``overrides``: ``section.key -> [checked-in, effective]``) is recorded as such; a
    rejection stays a rejection."""
    if not decision.promoted:
        return decision
    changed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in overrides.items())
    return replace(decision, decision="policy-overridden",
                   reasons=[f"policy overridden for this run ({reason}): {changed}",
                            *decision.reasons])


def require_test_split(layout: Layout) -> None:
    """Refuse to judge in a checkout without the pipeline's outputs the gate reads (the
    test split and the label order), naming the missing file and how to get it."""
    for path in (layout.tokens, layout.labels):
        if not path.is_file():
            raise PromotionError(f"{path} is missing: the gate scores the test split of this "
                                 "checkout; run senti retrain (or dvc pull) first")


def judge(layout: Layout, params: PromoteParams, challenger: tuple[str, Predict],
          champion: tuple[str, Predict] | None, *, validation_passed: bool,
          run_metrics: dict[str, float]) -> GateDecision:
    """Score the challenger and the champion (``(version, predict)`` pairs) on the current
    test split, run the behavioural suite on the challenger, and :func:`decide`."""
    require_test_split(layout)
    tokens = pd.read_parquet(layout.tokens, columns=["text", "label", "split"])
    test = tokens[tokens["split"] == "test"]
    if test.empty:
        raise PromotionError(f"{layout.tokens} has no test rows: run senti retrain first")
    texts, y_true = test["text"].tolist(), test["label"].astype(str).tolist()
    labels = read_json(layout.labels)

    def score(version: str, predict: Predict) -> ModelScore:
        return score_predictions(version, predict(pd.DataFrame({"text": texts})), y_true, labels)

    behaviour = run_suite(
        load_cases(), lambda t: challenger[1](pd.DataFrame({"text": t}))["label"].tolist(), labels)
    return decide(score(*challenger), None if champion is None else score(*champion),
                  params=params, validation_passed=validation_passed, run_metrics=run_metrics,
                  behaviour=behaviour)


# ---- what is recorded ------------------------------------------------------------------

def decision_tags(decision: GateDecision, flow_run_id: str | None) -> dict[str, str]:
    """The ``promote.*`` version tags recording a decision; a promotion also records the
    champion it replaces (:data:`senti.tags.PREVIOUS_CHAMPION`)."""
    recorded = {tags.PROMOTE_PREFIX + key: tags.NONE if value is None else f"{value:.6g}"
                for key, value in decision.scores().items()}  # 6 significant digits
    recorded[tags.PROMOTE_PREFIX + "conditions"] = json.dumps(
        {c.name: c.passed for c in decision.conditions})
    recorded.update(_latest_tags(decision.table_row(flow_run_id)))
    if decision.promoted:
        recorded[tags.PREVIOUS_CHAMPION] = decision.champion or tags.NONE
    return recorded


def rollback_tags(record: Rollback, flow_run_id: str | None) -> dict[str, str]:
    """The ``promote.*`` tags of the restored version (its ``previous_champion`` stays)."""
    return _latest_tags(record.table_row(flow_run_id))


def _latest_tags(row: dict[str, Any]) -> dict[str, str]:
    return {tag: row[column] for column, tag in TAGGED_COLUMNS.items()}


def decision_metrics(decision: GateDecision) -> dict[str, float]:
    """The ``gate.*`` and ``behaviour.*`` metrics logged on the challenger's run."""
    values = {"gate.promoted": decision.promoted,
              "gate.challenger.macro_f1": decision.challenger_metrics["macro_f1"],
              "gate.champion.macro_f1": (decision.champion_metrics or {}).get("macro_f1"),
              "gate.mcnemar_p_value": decision.p_value,
              "behaviour.pass_rate": decision.behaviour.pass_rate,
              **{f"behaviour.{check}.pass_rate": rate
                 for check, rate in decision.behaviour.by_check.items()}}
    return {key: float(value) for key, value in values.items() if value is not None}


def rollback_target(model_name: str, champion: str | None,
                    champion_tags: Mapping[str, str]) -> str:
    """The version a rollback restores: the one the current champion replaced.

    ``champion_tags`` are the champion's version tags. It must have been made champion by
    senti (a promotion, a forced promotion or a rollback), else its recorded predecessor
    cannot be trusted; a predecessor that is the champion itself is refused too.
    """
    if champion is None:
        raise PromotionError(f"{model_name} has no @{tags.CHAMPION}: nothing to roll back")
    previous = champion_tags.get(tags.PREVIOUS_CHAMPION)
    if champion_tags.get(tags.DECISION) not in CHAMPION_DECISIONS or previous is None:
        raise PromotionError(
            f"@{tags.CHAMPION} is version {champion}, which has no recorded promotion (the "
            "alias was moved outside senti, or by a senti that did not record the champion "
            f"it replaced); use senti promote --version N --force --reason ... to make the "
            "right version champion")
    if previous == tags.NONE:
        raise PromotionError(f"version {champion} is the first recorded champion: there is "
                             "no earlier champion to roll back to")
    if previous == champion:
        raise PromotionError(
            f"version {champion} records itself as the champion it replaced (a gate that "
            "judged it against itself): its chain is broken; use senti promote --version N "
            "--force --reason ... to make the right version champion")
    return previous


# ---- reports -------------------------------------------------------------------------

def decision_markdown(decision: GateDecision, model_name: str) -> str:
    """A Markdown report of a decision (for a Prefect artifact or a terminal)."""
    verdict = {"promoted": "promoted to @champion", "forced": "promoted to @champion (FORCED)",
               "policy-overridden": "promoted to @champion (POLICY OVERRIDDEN)",
               "rejected": "rejected: @champion unchanged"}[decision.decision]
    scores = ", ".join(f"{key} {value:.4g}" for key, value in decision.scores().items()
                       if value is not None)
    checks = ", ".join(f"{check} {rate:.3f}" for check, rate in decision.behaviour.by_check.items())
    lines = [f"# Promotion gate: {model_name} v{decision.challenger} {verdict}", "",
             f"Champion before: {('v' + decision.champion) if decision.champion else 'none'}; "
             f"decided {decision.time}.", "", "| condition | passed | detail |", "|---|---|---|",
             *(f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |"
               for c in decision.conditions),
             "", f"Scores: {scores}.", "", f"Behavioural checks passed, by check: "
             f"{checks or 'none applicable'}.", "", f"Reason: {decision.reason}"]
    return "\n".join(lines) + "\n"


def rollback_markdown(record: Rollback, model_name: str) -> str:
    return (f"# Rollback: {model_name} @champion v{record.from_version} -> "
            f"v{record.to_version}\n\nAt {record.time}. Reason: {record.reason}\n")
