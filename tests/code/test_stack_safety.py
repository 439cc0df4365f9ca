"""senti.stack's guards that need no running stack: the preflight's error lines on URLs with
credentials or that do not parse, the record `senti stack up` leaves, and what `senti stack
down` refuses to stop or delete. Real files and processes; the servers are a closed port."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from senti import stack

CLOSED = "127.0.0.1:9"  # the discard port: nothing listens there
SECRET = "S3cretPw"
SENTI = str(Path(sys.executable).parent / "senti")


@pytest.mark.parametrize(("variable", "value", "remote", "expected"), [
    ("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@{CLOSED}", None,
     f"MLflow tracking server http://{CLOSED}: unreachable ([Errno 111] Connection refused)"),
    ("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1", None,
     "MLflow tracking server http://127.0.0.1: unreachable ("),
    ("MLFLOW_TRACKING_URI", f"https://alice:{SECRET}@[::1", None,
     "MLflow tracking server https://[::1: not a valid URL (Invalid IPv6 URL)"),
    ("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:port", None,
     "MLflow tracking server http://127.0.0.1:port: not a valid URL (not a port number)"),
    ("MLFLOW_TRACKING_URI", f"http://alice:pw/{SECRET}@127.0.0.1", None,
     "MLflow tracking server http://127.0.0.1: not a valid URL (not a port number)"),
    ("MLFLOW_TRACKING_URI", f"http://{CLOSED}/?token={SECRET}", None,
     f"MLflow tracking server http://{CLOSED}/: unreachable ([Errno 111] Connection refused)"),
    ("PREFECT_API_URL", f"alice:{SECRET}@127.0.0.1:4200/api", None,
     "Prefect API 127.0.0.1:4200/api: not a valid URL (not an http(s)://host URL)"),
    ("AWS_ENDPOINT_URL", "http://[::1", "s3://senti-dvc/x",
     "S3 store http://[::1: not a valid URL (Invalid IPv6 URL)"),
    ("AWS_ENDPOINT_URL", f"http://key:{SECRET}@{CLOSED}", "s3://senti-dvc/x",
     f"S3 store http://{CLOSED}: unreachable ([Errno 111] Connection refused)"),
], ids=["password", "no-port", "ipv6", "bad-port", "slash-in-password", "query",
        "no-scheme", "s3-ipv6", "s3-password"])
def test_preflight_fails_on_one_line_that_shows_no_credentials(variable, value, remote,
                                                                expected):
    with pytest.raises(stack.Unreachable) as refused:
        stack.check_reachable({variable: value}, remote, timeout_s=2)
    message = str(refused.value)
    assert message.startswith(expected), message
    assert SECRET not in message and "\n" not in message


def test_preflight_sends_a_urls_credentials_and_not_in_the_url(tmp_path):
    """The credentials of a URL go in the Authorization header, as MLflow's client sends
    them; the settings for them win."""
    server = subprocess.Popen(  # answers 401 unless the header is Basic alice:S3cretPw
        [sys.executable, "-c", (
            "import base64, http.server\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            f"        ok = self.headers.get('Authorization') == 'Basic ' + base64.b64encode("
            f"b'alice:{SECRET}').decode()\n"
            "        self.send_response(200 if ok and '@' not in self.path else 401)\n"
            "        self.end_headers()\n"
            "    def log_message(self, *args): pass\n"
            "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
            "print(s.server_address[1], flush=True)\n"
            "s.serve_forever()\n")], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        stack.check_reachable({"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:{port}"})
        with pytest.raises(stack.Unreachable, match=f"^MLflow tracking server "
                           rf"http://127.0.0.1:{port}: refused the credentials \(HTTP 401\)"):
            stack.check_reachable({"MLFLOW_TRACKING_URI": f"http://alice:x@127.0.0.1:{port}",
                                   "MLFLOW_TRACKING_USERNAME": "bob"})
    finally:
        server.kill()
        server.wait()


def test_the_record_is_private_even_over_a_leftover_temporary_file(tmp_path):
    record = tmp_path / ".senti" / "stack.json"
    record.parent.mkdir()
    leftover = record.with_suffix(".tmp")
    leftover.write_text("{}")
    leftover.chmod(0o644)
    stack.save(stack.Stack("/nowhere", {}, {"MLFLOW_TRACKING_PASSWORD": SECRET}, "", 0.0), record)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stack.load(record).env["MLFLOW_TRACKING_PASSWORD"] == SECRET


def test_stack_up_names_a_record_it_cannot_read(tmp_path):
    record = tmp_path / ".senti" / "stack.json"
    record.parent.mkdir()
    record.write_text('{"base": "x"}')
    ran = subprocess.run([SENTI, "stack", "up", "--root", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    assert f"{record}: not a record of senti stack up (delete it)" in ran.stderr
    assert "unexpectedly" not in ran.stderr + ran.stdout


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory as `senti stack up` makes it."""
    made = Path(tempfile.mkdtemp(prefix=stack.PREFIX))
    (made / "logs").mkdir()
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A process group that is nobody's stack."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def test_stack_down_deletes_no_directory_stack_up_did_not_make(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep")
    with pytest.raises(stack.StackError, match="not a directory senti stack up makes"):
        stack.down(stack.Stack(str(victim), {}, {}, "", 0.0))
    assert (victim / "data").read_text() == "keep"


def test_stack_down_stops_no_group_that_is_not_the_stacks(base, bystander):
    record = stack.Stack(str(base), {"s3": bystander.pid}, {}, "", 0.0)
    with pytest.raises(stack.StackError, match=f"process group {bystander.pid} is no longer"):
        stack.down(record)
    assert bystander.poll() is None and base.is_dir()


@pytest.mark.parametrize("group", [0, 1, -1, "2"])
def test_stack_down_refuses_groups_up_never_records(base, group):
    with pytest.raises(stack.StackError, match="is not a process group senti stack up starts"):
        stack.down(stack.Stack(str(base), {"s3": group}, {}, "", 0.0))
    assert not stack.is_running(stack.Stack(str(base), {"s3": group}, {}, "", 0.0))
    assert base.is_dir()


def test_a_record_whose_groups_are_other_processes_is_not_a_running_stack(tmp_path, base,
                                                                          bystander):
    """After a reboot the recorded ids may be anybody's: env refuses to hand out the dead
    stack's URLs, and up starts a new one instead of saying one is running."""
    record = tmp_path / ".senti" / "stack.json"
    stale = stack.Stack(str(base), {"s3": bystander.pid}, {"MLFLOW_TRACKING_URI": "x"}, "", 0.0)
    stack.save(stale, record)
    assert not stack.is_running(stale)
    ran = subprocess.run([SENTI, "stack", "env", "--root", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1 and "is not running: senti stack down, then up" in ran.stderr
    assert bystander.poll() is None
    groups: dict[str, int] = {}
    service = stack._spawn("s3", ["sleep", "60"], os.environ, base / "logs", groups)
    try:
        assert stack.is_running(stack.Stack(str(base), groups, {}, "", 0.0))
    finally:
        service.kill()
        service.wait()


def test_stack_down_stops_the_stacks_groups_and_deletes_its_directory(base):
    groups: dict[str, int] = {}
    service = stack._spawn("s3", ["sleep", "60"], os.environ, base / "logs", groups)
    stack.down(stack.Stack(str(base), groups, {}, "", 0.0))
    assert service.poll() is not None and not base.exists()
