"""The promotion gate's pure logic: conditions, McNemar direction, forcing, champion history,
and the behavioural suite (its data file and its scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from senti.behaviour import BehaviourResult, Case, load_cases, run_suite
from senti.config import PromoteParams
from senti.promote import (
    ModelScore,
    PromotionError,
    decide,
    decision_markdown,
    decision_tags,
    force,
    push_champion,
    rollback_history,
    score_predictions,
)

PARAMS = PromoteParams(min_delta=0.01, alpha=0.05, require_beat_baseline=True,
                       min_behaviour_pass_rate=0.8)
RUN = {"test.model.macro_f1": 0.85, "test.baseline.macro_f1": 0.80}
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
    off = PromoteParams(0.0, 0.05, require_beat_baseline=False, min_behaviour_pass_rate=0.8)
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
    kwargs = {"params": PromoteParams(-1.0, 0.05, True, 0.0), "validation_passed": True,
              "run_metrics": RUN, "behaviour": GOOD_BEHAVIOUR}
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
    assert "FORCED" in decision_markdown(forced, "m")
    with pytest.raises(PromotionError, match="reason"):
        force(rejected, "  ")
    passed = decide(score("1", 0.9, [True] * 10), None, params=PARAMS, validation_passed=True,
                    run_metrics=RUN, behaviour=GOOD_BEHAVIOUR)
    assert force(passed, "no need") is passed


def test_rollback_walks_back_through_past_champions():
    history = push_champion([], "1", "promoted", "first", "t1")
    history = push_champion(history, "2", "promoted", "better", "t2")
    history = push_champion(history, "3", "forced", "hotfix", "t3")
    assert [e["version"] for e in history] == ["1", "2", "3"]
    assert history[0]["until"] == "t2" and history[-1]["until"] is None
    history, restored = rollback_history(history, "3 is broken", "t4")
    assert restored == "2" and history[2]["until"] == "t4"
    assert history[-1] == {"n": 4, "version": "2", "how": "rollback", "reason": "3 is broken",
                           "since": "t4", "until": None, "previous": 1}
    history, restored = rollback_history(history, "2 too", "t5")
    assert restored == "1"  # not back to 3: a rollback does not toggle
    with pytest.raises(PromotionError, match="first recorded champion"):
        rollback_history(history, "again", "t6")
    with pytest.raises(PromotionError, match="no champion history"):
        rollback_history([], "x", "t")


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
