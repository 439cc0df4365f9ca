"""The team stack for real (senti.stack, tests/stack/conftest.py): it answers with its
credentials and refuses clients without them, the preflight names what cannot be reached,
and the champion history holds on the PostgreSQL-backed tracking server."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from senti import stack
from tests.code.test_champion_history import (  # noqa: F401  (run here on the server's store)
    store,
    test_rollback_refuses_a_champion_senti_did_not_promote,
    test_thirty_promotions_then_rollbacks_walk_back_the_chain,
)
from tests.stack.conftest import senti

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.usefixtures("stack_client_env")]


def test_stack_answers_its_clients_and_senti_stack_env_prints_them(team_stack, stack_home):
    stack.check_reachable(os.environ, team_stack.dvc_remote)
    printed = senti(stack_home, "env")
    assert printed.returncode == 0
    assert printed.stdout.strip() == team_stack.exports()
    assert f"export PREFECT_API_URL={team_stack.env['PREFECT_API_URL']}" in printed.stdout
    memory = stack.memory_mib(team_stack)
    assert set(memory) == {"postgres", "s3", "mlflow", "prefect"}
    assert all(mib > 0 for mib in memory.values())



def test_no_password_is_on_a_command_line(team_stack):
    """Any local user reads a command line (ps, /proc/<pid>/cmdline); an environment only
    its owner. The database's password is in the URLs mlflow and prefect get."""
    lines, environments = {}, []
    for pid in stack.processes(team_stack):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environments.append(Path(f"/proc/{pid}/environ").read_text(errors="replace"))
    urls = [url for variables in environments
            for url in re.findall(r"postgresql\+\w+://[^\0]+", variables)]
    database = {urlsplit(url).password for url in urls}
    assert len(database) == 1 and None not in database  # found it
    secrets = {*database, team_stack.env["MLFLOW_TRACKING_PASSWORD"],
               team_stack.env["PREFECT_API_AUTH_STRING"], team_stack.env["AWS_SECRET_ACCESS_KEY"]}
    assert len(lines) >= 4
    for pid, line in lines.items():
        assert not [secret for secret in secrets if secret in line], (pid, line)


def test_prefect_refuses_a_client_without_the_auth_string(team_stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    url = team_stack.env["PREFECT_API_URL"]
    for auth in (None, "admin:wrong"):
        updates = {PREFECT_API_URL: url} | ({PREFECT_API_AUTH_STRING: auth} if auth else {})
        with temporary_settings(updates, restore_defaults=set() if auth else {
                PREFECT_API_AUTH_STRING}), get_client(sync_client=True) as client:
            with pytest.raises(httpx.HTTPStatusError) as refused:
                client.read_work_pools()
            assert refused.value.response.status_code == 401
    with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING:
                             team_stack.env["PREFECT_API_AUTH_STRING"]}), \
            get_client(sync_client=True) as client:
        assert isinstance(client.read_work_pools(), list)


def test_mlflow_refuses_a_client_without_credentials(team_stack, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    client = MlflowClient(team_stack.env["MLFLOW_TRACKING_URI"])
    with pytest.raises(MlflowException, match="401"):
        client.search_experiments(max_results=1)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_stack.env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_stack.env["MLFLOW_TRACKING_PASSWORD"])
    assert client.search_experiments(max_results=1)


CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.mark.parametrize(("change", "remote", "expected"), [
    ({"MLFLOW_TRACKING_URI": CLOSED}, None,
     f"MLflow tracking server {CLOSED}: unreachable ([Errno 111] Connection refused)"),
    ({"MLFLOW_TRACKING_PASSWORD": "wrong"}, None,
     "MLflow tracking server {MLFLOW_TRACKING_URI}: refused the credentials (HTTP 401): "
     "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
    ({"PREFECT_API_URL": f"{CLOSED}/api"}, None,
     f"Prefect API {CLOSED}/api: unreachable ([Errno 111] Connection refused)"),
    ({"PREFECT_API_AUTH_STRING": "admin:wrong"}, None,
     "Prefect API {PREFECT_API_URL}: refused the credentials (HTTP 401): "
     "check PREFECT_API_AUTH_STRING"),
    ({}, "s3://no-such-bucket/dvcstore",
     "S3 store {AWS_ENDPOINT_URL}: no bucket 'no-such-bucket'"),
    ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "s3://senti-dvc/dvcstore",
     "S3 store {AWS_ENDPOINT_URL}: refused access to bucket 'senti-dvc' "
     "(SignatureDoesNotMatch; access key '{AWS_ACCESS_KEY_ID}')"),
    ({"AWS_ACCESS_KEY_ID": "AKIANOTAKEY"}, "s3://senti-dvc/dvcstore",
     "S3 store {AWS_ENDPOINT_URL}: refused access to bucket 'senti-dvc' "
     "(InvalidAccessKeyId; access key 'AKIANOTAKEY')"),
    ({"AWS_ENDPOINT_URL": CLOSED}, "s3://senti-dvc/dvcstore",
     f"S3 store {CLOSED}: unreachable ([Errno 111] Connection refused)"),
], ids=["mlflow-down", "mlflow-password", "prefect-down", "prefect-auth", "no-bucket",
        "s3-secret", "s3-key", "s3-down"])
def test_preflight_names_what_cannot_be_reached(team_stack, change, remote, expected):
    env = {**team_stack.env, **change}
    with pytest.raises(stack.Unreachable) as refused:
        stack.check_reachable(env, remote or team_stack.dvc_remote, timeout_s=5)
    assert str(refused.value) == expected.format(**env)


def test_preflight_lists_every_failure_on_one_line(team_stack):
    env = {**team_stack.env, "MLFLOW_TRACKING_URI": CLOSED, "PREFECT_API_AUTH_STRING": "x:y"}
    with pytest.raises(stack.Unreachable) as refused:
        stack.check_reachable(env, "s3://no-such-bucket/x")
    message = str(refused.value)
    assert "\n" not in message and message.count("; ") == 2
    assert message.startswith(f"MLflow tracking server {CLOSED}: unreachable")


def test_preflight_needs_no_servers_for_local_stores():
    stack.check_reachable({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    stack.check_reachable({})
    with pytest.raises(stack.Unreachable, match="not an s3://bucket/prefix URL"):
        stack.check_reachable({}, "/some/dir")


def test_a_second_stack_up_is_refused_and_a_dead_record_is_named(team_stack, stack_home,
                                                                  tmp_path):
    again = senti(stack_home, "up")
    assert again.returncode == 1
    assert "a stack is already running" in again.stderr
    record = tmp_path / ".senti" / "stack.json"
    stack.save(replace(team_stack, groups={"s3": 2**22 + 1}), record)  # no such process
    before = record.read_bytes()
    dead = senti(tmp_path, "env")
    assert dead.returncode == 1 and "is not running" in dead.stderr
    assert record.read_bytes() == before
    record.write_text('{"base": "x"}')
    broken = senti(tmp_path, "down")
    assert broken.returncode == 1
    assert f"{record}: not a record of senti stack up (delete it)" in broken.stderr
    assert record.read_text() == '{"base": "x"}'
