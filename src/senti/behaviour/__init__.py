"""Behavioural checks: a small versioned suite of Chinese test cases run on every challenger.

The suite is data, ``checks.jsonl`` next to this module, one case per line::

    {"id": "negation-01", "check": "negation", "texts": ["这个手机很好", "这个手机不好"],
     "expect": ["positive", "negative"]}
    {"id": "emoji-01", "check": "trailing_emoji", "texts": ["质量很好", "质量很好😊"]}

A case with ``expect`` passes when every text gets its expected label (negation flips and
clear positive/negative templates); a case without it is an invariance check and passes when
every text gets the same label (full-width vs half-width punctuation, a trailing emoji,
simplified vs traditional characters). Cases expecting a label the model does not have are
skipped. Edit the file to change the suite; git versions it with the code.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

SUITE_FILE = "checks.jsonl"


@dataclass(frozen=True)
class Case:
    id: str
    check: str
    texts: list[str]
    expect: list[str] | None = None  # None: an invariance case


@dataclass(frozen=True)
class BehaviourResult:
    """Pass rates of a model on the suite; ``pass_rate`` is over every case run (None if none)."""

    pass_rate: float | None
    by_check: dict[str, float]
    cases: list[dict[str, Any]] = field(default_factory=list)  # id, check, passed, predicted
    skipped: int = 0


def load_cases(path: Path | str | None = None) -> list[Case]:
    """The suite from ``path`` (default: the packaged ``checks.jsonl``), checked for shape."""
    text = (Path(path).read_text(encoding="utf-8") if path is not None
            else resources.files(__package__).joinpath(SUITE_FILE).read_text(encoding="utf-8"))
    cases, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        case = Case(id=row["id"], check=row["check"], texts=list(row["texts"]),
                    expect=list(row["expect"]) if row.get("expect") is not None else None)
        if case.id in seen:
            raise ValueError(f"line {number}: duplicate case id {case.id!r}")
        if not case.texts or not all(isinstance(t, str) and t.strip() for t in case.texts):
            raise ValueError(f"line {number}: texts must be non-empty strings")
        if case.expect is None and len(case.texts) < 2:
            raise ValueError(f"line {number}: an invariance case needs at least two texts")
        if case.expect is not None and len(case.expect) != len(case.texts):
            raise ValueError(f"line {number}: expect must give one label per text")
        seen.add(case.id)
        cases.append(case)
    return cases


def run_suite(cases: Sequence[Case], predict: Callable[[list[str]], Sequence[str]],
              labels: Sequence[str]) -> BehaviourResult:
    """Run ``cases`` through ``predict`` (texts -> predicted labels, one call for all texts)."""
    runnable = [c for c in cases if c.expect is None or set(c.expect) <= set(labels)]
    texts = sorted({t for c in runnable for t in c.texts})
    predicted = dict(zip(texts, predict(texts), strict=True)) if texts else {}
    outcomes: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for case in runnable:
        got = [predicted[t] for t in case.texts]
        passed = got == case.expect if case.expect is not None else len(set(got)) == 1
        outcomes[case.check].append(passed)
        rows.append({"id": case.id, "check": case.check, "passed": passed,
                     "texts": " | ".join(case.texts), "predicted": " | ".join(got),
                     "expected": " | ".join(case.expect) if case.expect else "(same label)"})
    total = sum(len(v) for v in outcomes.values())
    return BehaviourResult(
        pass_rate=sum(sum(v) for v in outcomes.values()) / total if total else None,
        by_check={check: sum(v) / len(v) for check, v in sorted(outcomes.items())},
        cases=rows, skipped=len(cases) - len(runnable))
