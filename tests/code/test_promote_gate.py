"""The promotion gate's pure logic: conditions, McNemar direction, forcing, what a decision
and a rollback record, which version a rollback restores, and the behavioural suite (its
data file and its scoring)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from senti import tags
from senti.behaviour import BehaviourResult, Case, load_cases, run_suite
from senti.config import Layout, PromoteParams, load_params
from senti.promote import (
    ModelScore,
    PromotionError,
    Rollback,
    decide,
    decision_markdown,
    decision_metrics,
    decision_tags,
    force,
    judge,
    rollback_tags,
    rollback_target,
    score_predictions,
)
from tests.conftest import REPO

PARAMS = PromoteParams(min_delta=0.01, alpha=0.05, require_beat_baseline=True,
                       min_behaviour_pass_rate=0.8)
RUN = {"test.model.macro_f1": 0.85, "test.baseline.macro_f1": 0.80}
LENIENT = PromoteParams(min_delta=-1.0, alpha=0.05, require_beat_baseline=False,
                        min_behaviour_pass_rate=0.0)
GOOD_BEHAVIOUR = BehaviourResult(pass_rate=0.9, by_check={"negation": 0.9})


def score(version: str, macro_f1: float, correct: list[bool]) -> ModelScore:
    return ModelScore(version, accuracy=float(np.mean(correct)), macro_f1=macro_f1,
                      correct=np.array(correct))


def failed(decision) -> set[str]:
    return {c.name for c in decision.conditions if not c.passed}


def test_first_model_is_judged_on_validation_baseline_and_behaviour():
    challenger = score("1", 0.85, [True] * 8 + [False] * 2)
    ok = decide(challenger, None, params=PARAMS, validation_passed=True, run_metrics=RUN,
                behaviour=GOOD_BEHAVIOUR)
    assert ok.promoted and ok.decision == "promoted" and ok.p_value is None
    assert ok.champion is None and ok.champion_metrics is None
    bad = decide(challenger, None, params=PARAMS, validation_passed=False,
                 run_metrics={"test.model.macro_f1": 0.7, "test.baseline.macro_f1": 0.8},
                 behaviour=BehaviourResult(pass_rate=0.5, by_check={"negation": 0.5}))
    assert not bad.promoted and bad.decision == "rejected"
    assert failed(bad) == {"validation", "baseline", "behaviour"}
    assert len(bad.reasons) == 3 and "0.500" in bad.reason and "0.7000" in bad.reason


def test_baseline_condition_can_be_switched_off_but_missing_metrics_fail_it():
    challenger = score("1", 0.85, [True] * 10)
    worse_than_baseline = {"test.model.macro_f1": 0.7, "test.baseline.macro_f1": 0.8}
    off = PromoteParams(min_delta=0.0, alpha=0.05, require_beat_baseline=False,
                        min_behaviour_pass_rate=0.8)
    assert decide(challenger, None, params=off, validation_passed=True,
                  run_metrics=worse_than_baseline, behaviour=GOOD_BEHAVIOUR).promoted
    missing = decide(challenger, None, params=PARAMS, validation_passed=True, run_metrics={},
                     behaviour=GOOD_BEHAVIOUR)
    assert failed(missing) == {"baseline"}


def test_challenger_must_reach_champion_plus_min_delta():
    champion = score("1", 0.80, [True] * 8 + [False] * 2)
    equal = score("2", 0.805, [True] * 8 + [False] * 2)  # +0.005 < min_delta 0.01
    better = score("2", 0.81, [True] * 8 + [False] * 2)
    kwargs = {"params": PARAMS, "validation_passed": True, "run_metrics": RUN,
              "behaviour": GOOD_BEHAVIOUR}
    rejected = decide(equal, champion, **kwargs)
    assert failed(rejected) == {"macro_f1"} and "needs >= 0.8100" in rejected.reason
    accepted = decide(better, champion, **kwargs)
    assert accepted.promoted and accepted.champion == "1" and accepted.p_value == 1.0
    assert accepted.champion_metrics == {"accuracy": 0.8, "macro_f1": 0.80}


def test_mcnemar_rejects_only_a_significantly_worse_challenger():
    params = PromoteParams(min_delta=-1.0, alpha=0.05, require_beat_baseline=True,
                           min_behaviour_pass_rate=0.0)
    kwargs = {"params": params, "validation_passed": True, "run_metrics": RUN,
              "behaviour": GOOD_BEHAVIOUR}
    # champion right on 40 examples the challenger gets wrong, never the reverse: p ~ 2e-12
    champion = score("1", 0.9, [True] * 100)
    worse = score("2", 0.6, [False] * 40 + [True] * 60)
    rejected = decide(worse, champion, **kwargs)
    assert failed(rejected) == {"mcnemar"} and rejected.p_value < 1e-6
    assert "significantly worse" in rejected.reason
    # the same disagreement the other way round is a better challenger: not rejected
    swapped = decide(score("2", 0.9, [True] * 100),
                     score("1", 0.6, [False] * 40 + [True] * 60), **kwargs)
    assert swapped.promoted and swapped.p_value < 1e-6
    # a few disagreements: worse, but not significantly
    close = decide(score("2", 0.88, [False] * 3 + [True] * 97), champion, **kwargs)
    assert close.promoted and close.p_value > 0.05


def test_force_overrides_a_rejection_and_keeps_the_gate_reasons():
    rejected = decide(score("2", 0.5, [False] * 10), score("1", 0.9, [True] * 10),
                      params=PARAMS, validation_passed=True, run_metrics=RUN,
                      behaviour=GOOD_BEHAVIOUR)
    forced = force(rejected, "hotfix for the holiday sale")
    assert forced.promoted and forced.decision == "forced"
    assert forced.reasons[0] == "forced: hotfix for the holiday sale"
    assert any(r.startswith("overrode: macro-F1") for r in forced.reasons)
    tags = decision_tags(forced, "run-123")
    assert tags["promote.decision"] == "forced" and tags["promote.flow_run_id"] == "run-123"
    assert tags["promote.champion_version"] == "1"
    assert tags["promote.mcnemar_p_value"] == f"{rejected.p_value:.6g}"
    assert tags["promote.previous_champion"] == "1"
    assert "FORCED" in decision_markdown(forced, "m")
    with pytest.raises(PromotionError, match="reason"):
        force(rejected, "  ")
    passed = decide(score("1", 0.9, [True] * 10), None, params=PARAMS, validation_passed=True,
                    run_metrics=RUN, behaviour=GOOD_BEHAVIOUR)
    assert force(passed, "no need") is passed


def test_a_promotion_records_the_champion_it_replaced_and_a_rejection_does_not():
    kwargs = {"params": PARAMS, "validation_passed": True, "run_metrics": RUN,
              "behaviour": GOOD_BEHAVIOUR}
    first = decide(score("1", 0.85, [True] * 10), None, **kwargs)
    assert decision_tags(first, None)[tags.PREVIOUS_CHAMPION] == "none"
    better = decide(score("2", 0.9, [True] * 10), score("1", 0.85, [True] * 10), **kwargs)
    assert decision_tags(better, None)[tags.PREVIOUS_CHAMPION] == "1"
    worse = decide(score("3", 0.5, [False] * 10), score("2", 0.9, [True] * 10), **kwargs)
    assert tags.PREVIOUS_CHAMPION not in decision_tags(worse, None)
    assert decision_tags(force(worse, "hotfix"), None)[tags.PREVIOUS_CHAMPION] == "2"
    row = worse.table_row("run-1")
    assert row["decision"] == "rejected" and row["champion_before"] == "2"
    assert row["challenger_macro_f1"] == 0.5 and row["champion_macro_f1"] == 0.9
    assert decision_metrics(worse)["gate.promoted"] == 0.0


def test_rollback_restores_the_champion_the_current_one_replaced():
    promoted = {tags.DECISION: "promoted", tags.PREVIOUS_CHAMPION: "2"}
    assert rollback_target("m", "3", promoted) == "2"
    # a restored version keeps its own predecessor, so the next rollback walks on back
    assert rollback_target("m", "2", {tags.DECISION: "rollback",
                                      tags.PREVIOUS_CHAMPION: "1"}) == "1"
    with pytest.raises(PromotionError, match="first recorded champion: there is no earlier"):
        rollback_target("m", "1", {tags.DECISION: "promoted", tags.PREVIOUS_CHAMPION: "none"})
    with pytest.raises(PromotionError, match="no @champion"):
        rollback_target("m", None, {})
    with pytest.raises(PromotionError, match="records itself as the champion it replaced"):
        rollback_target("m", "3", {tags.DECISION: "promoted", tags.PREVIOUS_CHAMPION: "3"})
    for moved in ({}, {tags.DECISION: "rejected", tags.PREVIOUS_CHAMPION: "1"}):
        with pytest.raises(PromotionError, match="moved outside senti"):
            rollback_target("m", "4", moved)
    record = Rollback("3", "2", "3 is broken", "t4")
    assert rollback_tags(record, None) == {
        tags.DECISION: "rollback", tags.REASON: "3 is broken", tags.DECIDED_AT: "t4",
        tags.DECISION_FLOW_RUN: "none", tags.CHAMPION_VERSION: "3"}
    row = record.table_row("run-9")
    assert (row["decision"], row["version"], row["champion_before"]) == ("rollback", "2", "3")
    assert row["challenger_macro_f1"] is None and row["flow_run_id"] == "run-9"


def test_judge_scores_both_versions_on_the_test_split_and_the_suite_on_the_challenger(
        tmp_path):
    layout = Layout(tmp_path, load_params(REPO).paths)
    layout.tokens.parent.mkdir(parents=True)
    pd.DataFrame({"text": ["很好", "不好", "好", "差"], "label": ["positive", "negative"] * 2,
                  "split": ["test", "test", "test", "train"]}).to_parquet(layout.tokens)
    layout.labels.write_text(json.dumps(["negative", "positive"]), encoding="utf-8")
    seen = []

    def keyword_model(frame):  # negative iff the text contains 不
        seen.append(frame["text"].tolist())
        negative = frame["text"].str.contains("不").to_numpy(dtype=float)
        return pd.DataFrame({"label": np.where(negative, "negative", "positive"),
                             "prob_negative": negative, "prob_positive": 1 - negative})

    def always_positive(frame):
        return pd.DataFrame({"label": "positive", "prob_negative": 0.0,
                             "prob_positive": np.ones(len(frame))})

    decision = judge(layout, LENIENT, ("2", keyword_model),
                     ("1", always_positive), validation_passed=True, run_metrics={})
    assert decision.promoted and decision.champion == "1"
    assert decision.challenger_metrics["accuracy"] == 1.0
    assert decision.champion_metrics["accuracy"] == pytest.approx(2 / 3)
    assert ["很好", "不好", "好"] in seen  # the test split only, in its order
    assert decision.behaviour.pass_rate is not None


def test_score_predictions_uses_the_probability_columns():
    frame = pd.DataFrame({"label": ["positive", "negative", "negative"],
                          "prob_negative": [0.2, 0.7, 0.6], "prob_positive": [0.8, 0.3, 0.4]})
    s = score_predictions("7", frame, ["positive", "negative", "positive"],
                          ["negative", "positive"])
    assert s.correct.tolist() == [True, True, False] and s.accuracy == pytest.approx(2 / 3)
    with pytest.raises(PromotionError, match="label"):
        score_predictions("7", frame, ["neutral"] * 3, ["negative", "neutral", "positive"])


def test_packaged_suite_covers_every_check_type():
    cases = load_cases()
    checks = {c.check for c in cases}
    assert checks == {"negation", "template", "punctuation_width", "trailing_emoji",
                      "traditional"}
    for case in cases:
        if case.check == "negation":
            assert case.expect == ["positive", "negative"]
        elif case.check == "template":
            assert case.expect in (["positive"], ["negative"])
        else:  # invariance: the variants really differ
            assert case.expect is None and len(set(case.texts)) == 2
    traditional = [c for c in cases if c.check == "traditional"]
    import zhconv
    assert all(zhconv.convert(c.texts[1], "zh-hans") == c.texts[0] for c in traditional)


def test_suite_scoring_per_check_type():
    cases = [Case("n1", "negation", ["很好", "不好"], ["positive", "negative"]),
             Case("n2", "negation", ["喜欢", "不喜欢"], ["positive", "negative"]),
             Case("e1", "trailing_emoji", ["很好", "很好😊"]),
             Case("x1", "other", ["?"], ["neutral"])]  # label the model lacks: skipped
    calls = []

    def predict(texts):  # a keyword "model": negative iff the text contains 不
        calls.append(list(texts))
        return ["negative" if "不" in t and t != "不喜欢" else "positive" for t in texts]

    result = run_suite(cases, predict, ["negative", "positive"])
    assert len(calls) == 1  # one batch for the whole suite
    assert result.by_check == {"negation": 0.5, "trailing_emoji": 1.0}
    assert result.pass_rate == pytest.approx(2 / 3) and result.skipped == 1
    assert [r["passed"] for r in result.cases] == [True, False, True]


def test_malformed_suite_is_rejected(tmp_path):
    path = tmp_path / "checks.jsonl"
    path.write_text('{"id": "a", "check": "negation", "texts": ["很好", "不好"], '
                    '"expect": ["positive"]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="one label per text"):
        load_cases(path)
    path.write_text('{"id": "a", "check": "emoji", "texts": ["很好"]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="at least two texts"):
        load_cases(path)


def test_judging_in_a_checkout_without_outputs_names_the_missing_file(tmp_path):
    layout = Layout(tmp_path, load_params(REPO).paths)
    with pytest.raises(PromotionError, match=r"tokens\.parquet is missing: .*senti retrain"):
        judge(layout, LENIENT, ("2", lambda frame: frame), None, validation_passed=True,
              run_metrics={})
