"""A retrain on the team stack: Prefect API, MLflow tracking server and DVC remote are the
stack's (tests/stack/conftest.py). It starts from a copy of the session's trained project, so
DVC skips every stage but ingest and nothing trains: what runs is registration through the
tracking server into PostgreSQL and S3, the gate loading the model back, and the data push to
S3, which `senti lineage verify` and `lineage checkout` then fetch back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import boto3
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from senti import stack, tags
from senti.cli import app
from tests.conftest import copy_project, git

pytestmark = [pytest.mark.stack, pytest.mark.slow]
MODEL = "senti-sentiment"
OUTPUTS = ("data/raw", "data/interim", "data/processed", "models")  # per .gitignore


def keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


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
