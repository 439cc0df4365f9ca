"""A retrain on the team stack: Prefect API, MLflow tracking server and DVC remote are the
stack's (tests/stack/conftest.py). It starts from a copy of the session's trained project, so
DVC skips every stage but ingest and nothing trains: what runs is registration through the
tracking server into PostgreSQL and S3, the gate loading the model back, and the data push to
S3, which `senti lineage verify` and `lineage checkout` then fetch back."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from senti import stack, tags
from senti.cli import app
from tests.conftest import copy_project, git

pytestmark = [pytest.mark.stack, pytest.mark.slow]
MODEL = "senti-sentiment"
OUTPUTS = ("data/raw", "data/interim", "data/processed", "models")  # per .gitignore


def registry_alias(name: str) -> str | None:
    """The version @champion names on the tracking server (None: no champion)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, tags.CHAMPION).version
    except MlflowException:
        return None


def keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def serve_answers(root: Path, version: str) -> dict:
    """``senti serve`` of the @champion (``version``) from the stack's registry: the answer
    of /invocations to two texts; the server is stopped with SIGTERM."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "senti"), "serve", "--port",
                               str(port), "--root", str(root)], cwd=root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = next((line for line in server.stdout if line.startswith("serving ")), "")
        assert f"(version {version})" in banner, banner + server.stdout.read()
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "senti serve did not listen in 180 s"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"text": "质量很好，非常满意"},
                                                 {"text": "太差了，再也不买"}]})
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=90)


def test_retrain_registers_on_the_server_and_its_data_comes_back_from_s3(
        trained_project, team_stack, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows.retrain import retrain

    root = copy_project(trained_project[0], tmp_path / "project")  # before the stack's env
    remote = f"s3://{stack.DVC_BUCKET}/{tmp_path.name}"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "-f", "team", remote],
                   cwd=root, check=True)
    git(root, "commit", "-qam", "DVC remote on the team stack")
    for key, value in team_stack.env.items():
        monkeypatch.setenv(key, value)
    stack.check_reachable(os.environ, remote)

    with temporary_settings({PREFECT_API_URL: team_stack.env["PREFECT_API_URL"],
                             PREFECT_API_AUTH_STRING: team_stack.env["PREFECT_API_AUTH_STRING"]}):
        result = retrain(root=str(root))
        assert result["registered"] and result["pushed"] > 0
        client = MlflowClient()
        version = client.get_model_version(MODEL, result["version"])
        run = client.get_run(version.run_id)
        assert run.data.params["model.embed_dim"] == "16"
        assert run.data.metrics["test.model.macro_f1"] == pytest.approx(
            result["metrics"]["model"]["macro_f1"])
        assert {"reports", "lineage"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        with get_client(sync_client=True) as prefect:  # the flow run is on the stack's server
            flow_run = prefect.read_flow_run(version.tags[tags.PREFECT_FLOW_RUN])
        assert flow_run.state is not None and flow_run.state.is_completed()
    if registry_alias(MODEL) != result["version"]:  # the tiny model may lose to the champion
        forced = CliRunner().invoke(app, ["promote", "--version", result["version"], "--force",
                                          "--reason", "serve test", "--root", str(root)])
        assert forced.exit_code == 0, forced.output
    predictions = serve_answers(root, result["version"])["predictions"]
    assert [row["label"] in ("negative", "positive") for row in predictions] == [True, True]
    # the artifacts went through the tracking server into the S3 store, the data to the remote
    assert any(run.info.run_id in key for key in keys(stack.ARTIFACTS_BUCKET, "artifacts/"))
    assert len(keys(stack.DVC_BUCKET, tmp_path.name)) >= result["pushed"]

    shutil.rmtree(root / ".dvc" / "cache")
    for output in OUTPUTS:
        shutil.rmtree(root / output)
    ref = f"{MODEL}/{result['version']}"
    verified = CliRunner().invoke(app, ["lineage", "verify", ref, "--root", str(root)])
    assert verified.exit_code == 0, verified.output
    assert "fetched" in verified.stderr and "all" in verified.stdout
    restored = CliRunner().invoke(app, ["lineage", "checkout", ref, str(tmp_path / "restored"),
                                        "--root", str(root)])
    assert restored.exit_code == 0, restored.output
    assert (tmp_path / "restored" / "data" / "raw" / "corpus.csv").is_file()
