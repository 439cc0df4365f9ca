"""DVC sees the code each stage runs: a change to a module reruns exactly the stages that
execute it (real DVC on a copy of the session's trained project)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

from senti import versioning
from tests.conftest import copy_project

pytestmark = pytest.mark.slow


def _edit(root: Path, relpath: str, old: str, new: str) -> None:
    path = root / relpath
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _changed(root: Path) -> set[str]:
    """Stages whose recorded dependencies or params differ from the workspace."""
    with Repo(str(root)) as repo:
        return {key.split(":")[-1] for key in repo.status()}


def test_a_comment_in_the_evaluate_stage_reruns_only_evaluate(trained_project, tmp_path):
    root = copy_project(trained_project[0], tmp_path / "project")
    assert _changed(root) <= {"ingest"}  # always_changed: it re-reads the source
    _edit(root, "src/senti/stages/evaluate.py", "def run(", "# a comment\ndef run(")
    assert _changed(root) - {"ingest"} == {"evaluate"}
    ran = {stage for stage in versioning.stages(root) if versioning.reproduce(root, stage)}
    assert ran == {"ingest", "evaluate"}  # ingest re-read the unchanged source, nothing else


def test_changing_vocabulary_encode_reruns_train_and_evaluate(trained_project, tmp_path):
    root = copy_project(trained_project[0], tmp_path / "project")
    _edit(root, "src/senti/vocab.py", "        ids = [self._ids.get(",
          "        # encoding changed\n        ids = [self._ids.get(")
    changed = _changed(root) - {"ingest"}
    assert {"train", "evaluate"} <= changed  # trained and scored with the encoding
    assert changed == {"vocab", "embeddings", "train", "evaluate"}  # every stage that imports it
