"""The team stack as local processes: PostgreSQL, an S3 store, ``mlflow server`` and
``prefect server`` on free loopback ports, for tests and for users without a container engine
(docker/compose.yaml is the same stack in containers).

- PostgreSQL from the Debian package (``/usr/lib/postgresql/<v>/bin``), initialised in a
  private temporary directory; as root it runs as the ``postgres`` user (it refuses root).
  Databases ``mlflow`` and ``prefect`` (with ``pg_trgm``, which Prefect needs).
- S3: moto's server (``moto[server]``, the ``stack`` extra), in memory, with an IAM user whose
  keys the clients get, the buckets created, and then credentials enforced.
- ``mlflow server`` on the ``mlflow`` database (``MLFLOW_BACKEND_STORE_URI``: no password
  is on any command line) with ``--artifacts-destination s3://...``
  (clients need no S3 credentials) and MLflow's basic-auth app.
- ``prefect server start`` on the ``prefect`` database with ``PREFECT_SERVER_API_AUTH_STRING``.

Every service runs in its own process group; :func:`down` stops the groups and removes the
directory. :func:`check_reachable` is the preflight for any command that uses a stack.
Standard library and subprocesses only: importing this module costs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

HOST = "127.0.0.1"
ARTIFACTS_BUCKET = "senti-mlflow"  # MLflow's artifact store (behind the tracking server)
DVC_BUCKET = "senti-dvc"  # the DVC remote
REGION = "us-east-1"
ADMIN = "admin"  # the MLflow admin user and the Prefect auth string's user
START_TIMEOUT_S = 120.0
PREFIX = "senti-stack-"  # of the stack's directory in the system's temporary directory
# Variables a client of the stack reads; a server must not inherit a client's values of them.
CLIENT_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "AWS_ENDPOINT_URL",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
# MLflow 3.17 clients fetch artifacts of an S3-backed server from presigned S3 URLs, i.e.
# straight from the store (which they may not reach, and moto's auth rejects): these keep
# every transfer going through the tracking server.
PROXIED_ARTIFACTS = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
                     "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


class StackError(RuntimeError):
    """The stack could not be started, found or stopped."""


class Unreachable(StackError):
    """A service the environment points at does not answer, or refuses the credentials."""


@dataclass(frozen=True)
class S3Access:
    """Where an S3 store is and the keys to use (empty keys: unsigned requests)."""

    endpoint: str
    key_id: str = ""
    secret: str = ""
    region: str = REGION

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Access:
        """The store the AWS SDKs (boto3, DVC's s3fs) use with this environment."""
        endpoint = (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
                    or f"https://s3.{environ.get('AWS_DEFAULT_REGION', REGION)}.amazonaws.com")
        return cls(endpoint.rstrip("/"), environ.get("AWS_ACCESS_KEY_ID", ""),
                   environ.get("AWS_SECRET_ACCESS_KEY", ""),
                   environ.get("AWS_DEFAULT_REGION", REGION))


@dataclass(frozen=True)
class Stack:
    """A running stack: its directory, each service's process group, and what clients set."""

    base: str  # temporary directory: PostgreSQL's data, the logs
    groups: dict[str, int]  # service -> process group id
    env: dict[str, str]  # the client environment
    dvc_remote: str  # s3:// URL for `dvc remote add`
    started_s: float  # seconds `up` took

    def exports(self) -> str:
        """The client environment as shell ``export`` lines."""
        lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(self.env.items())]
        lines.append(f"# DVC remote: dvc remote add -d team {self.dvc_remote}")
        return "\n".join(lines)


# ---- S3 requests (AWS Signature Version 4, standard library) ----------------------------

def _aws_request(access: S3Access, method: str, url: str, service: str, body: bytes = b"",
                 headers: Mapping[str, str] | None = None) -> urllib.request.Request:
    """A request to ``url``, signed with SigV4 when ``access`` has keys."""
    parts = urlsplit(url)
    all_headers = {k.lower(): v for k, v in (headers or {}).items()}
    if access.key_id:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        payload = hashlib.sha256(body).hexdigest()
        all_headers.update({"host": parts.netloc, "x-amz-date": stamp,
                            "x-amz-content-sha256": payload})
        names = sorted(all_headers)
        query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                         for k, v in sorted(parse_qsl(parts.query, keep_blank_values=True)))
        canonical = "\n".join([method, quote(parts.path or "/", safe="/-_.~"), query,
                               *(f"{n}:{all_headers[n].strip()}" for n in names), "",
                               ";".join(names), payload])
        scope = f"{stamp[:8]}/{access.region}/{service}/aws4_request"
        key = f"AWS4{access.secret}".encode()
        for part in scope.split("/"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        all_headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access.key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return urllib.request.Request(url, data=body or None, method=method, headers=all_headers)


def _call(request: urllib.request.Request, timeout_s: float) -> tuple[int, bytes]:
    """Status and body of ``request`` (HTTP errors included); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _xml_text(body: bytes, tag: str) -> str:
    found = re.search(rf"<{tag}>([^<]*)</{tag}>".encode(), body)
    return found.group(1).decode() if found else ""


def create_buckets(access: S3Access, names: tuple[str, ...], timeout_s: float = 10.0) -> None:
    """Create each bucket on the store (path-style URLs); one that exists already is fine."""
    for name in names:
        try:
            status, body = _call(_aws_request(access, "PUT", f"{access.endpoint}/{name}", "s3"),
                                 timeout_s)
        except OSError as exc:
            raise StackError(f"S3 at {access.endpoint}: unreachable "
                             f"({getattr(exc, 'reason', exc)})") from None
        # a bucket of one's own exists: BucketAlreadyOwnedByYou on AWS, moto; SeaweedFS says
        # BucketAlreadyExists (its admin identity owns every bucket)
        if status >= 300 and _xml_text(body, "Code") not in ("BucketAlreadyOwnedByYou",
                                                            "BucketAlreadyExists"):
            raise StackError(f"S3 at {access.endpoint}: creating bucket {name!r} failed "
                             f"(HTTP {status} {_xml_text(body, 'Code')})")


def _iam(access: S3Access, timeout_s: float, **form: str) -> bytes:
    """One IAM query-API call on moto's server (which routes it by the signature's scope)."""
    body = "&".join(f"{k}={quote(v, safe='')}" for k, v in
                    {**form, "Version": "2010-05-08"}.items()).encode()
    status, answer = _call(_aws_request(
        access, "POST", f"{access.endpoint}/", "iam", body,
        {"content-type": "application/x-www-form-urlencoded"}), timeout_s)
    if status != 200:
        raise StackError(f"S3 server: IAM {form['Action']} failed (HTTP {status})")
    return answer


def _moto_user(endpoint: str, timeout_s: float = 10.0) -> S3Access:
    """An IAM user allowed everything on S3, the buckets, then credentials enforced."""
    bootstrap = S3Access(endpoint, "bootstrap", "bootstrap")  # not checked until the end
    _iam(bootstrap, timeout_s, Action="CreateUser", UserName="senti")
    keys = _iam(bootstrap, timeout_s, Action="CreateAccessKey", UserName="senti")
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    _iam(bootstrap, timeout_s, Action="PutUserPolicy", UserName="senti", PolicyName="s3",
         PolicyDocument=policy)
    access = S3Access(endpoint, _xml_text(keys, "AccessKeyId"),
                      _xml_text(keys, "SecretAccessKey"))
    create_buckets(access, (ARTIFACTS_BUCKET, DVC_BUCKET), timeout_s)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    if _call(request, timeout_s)[0] != 200:
        raise StackError("S3 server: could not turn authentication on")
    return access


# ---- preflight --------------------------------------------------------------------------

def _shown(url: str) -> str:
    """``url`` as an error line may show it: without what precedes its last ``@`` (the
    credentials, even where they do not parse), its query and its fragment."""
    anonymous = re.sub(r"^([A-Za-z][\w+.-]*://)?.*@", r"\1", url, flags=re.DOTALL)
    return re.split(r"[?#]", anonymous, maxsplit=1)[0]


def _endpoint(url: str) -> tuple[str, str | None]:
    """``url`` (http or https) without credentials, query or fragment, and its credentials
    (``user:password``) if it has any; a ValueError that quotes no part of it otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s)://host URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("not a port number") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    credentials = (f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
                   if "@" in parts.netloc else None)
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), credentials


def _failure(exc: Exception) -> str:
    """What a request's exception says about the server (raised on a URL without
    credentials or query, so the message holds no secret)."""
    if isinstance(exc, ValueError | http.client.InvalidURL):
        return f"not a valid URL ({exc})"
    if isinstance(exc, OSError):
        return f"unreachable ({getattr(exc, 'reason', exc)})"
    return f"no HTTP answer ({type(exc).__name__})"


def _reach(name: str, url: str, request: Callable[[str, str | None], urllib.request.Request],
           timeout_s: float, judge: Callable[[int, bytes], str | None]) -> str | None:
    """None when the server at ``url`` answers ``request(url without credentials, its
    credentials)`` and ``judge`` accepts the answer, else one line naming ``name``, ``url``
    (without credentials or query) and what went wrong."""
    try:
        status, body = _call(request(*_endpoint(url)), timeout_s)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return f"{name} {_shown(url)}: {_failure(exc)}"
    problem = judge(status, body)
    return None if problem is None else f"{name} {_shown(url)}: {problem}"


def _basic(credentials: str | None) -> dict[str, str]:
    """The Basic authorization header for ``user:password`` (none without credentials)."""
    if credentials is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _judge_http(service: str, auth_hint: str) -> Callable[[int, bytes], str | None]:
    def judge(status: int, body: bytes) -> str | None:
        if status in (401, 403):
            return f"refused the credentials (HTTP {status}): check {auth_hint}"
        if status != 200:
            return f"does not answer as {service} (HTTP {status})"
        return None
    return judge


def _judge_bucket(bucket: str, access: S3Access) -> Callable[[int, bytes], str | None]:
    def judge(status: int, body: bytes) -> str | None:
        code = _xml_text(body, "Code")
        if status == 200:
            return None
        if code == "NoSuchBucket" or status == 404:
            return f"no bucket {bucket!r}"
        if status in (401, 403):
            keys = (f"access key {access.key_id!r}" if access.key_id else
                    "no AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment")
            return f"refused access to bucket {bucket!r} ({code or status}; {keys})"
        return f"bucket {bucket!r}: HTTP {status} {code}".rstrip()
    return judge


def check_reachable(environ: Mapping[str, str], s3_remote: str | None = None, *,
                    timeout_s: float = 5.0) -> None:
    """Check that every server ``environ`` points senti at answers and accepts its credentials,
    before anything starts; raise :class:`Unreachable` with one line naming each that does not
    (a URL's credentials, query and fragment left out: the line never shows a password).

    - ``MLFLOW_TRACKING_URI`` (http/https only; a local store needs no check), with
      ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` when set, else the URL's own
      ``user:password@`` (as MLflow's client does);
    - ``PREFECT_API_URL``, with ``PREFECT_API_AUTH_STRING`` when set, else the URL's own;
    - ``s3_remote`` (an ``s3://bucket/prefix`` URL, e.g. the DVC remote): the bucket exists
      and the keys in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` may list it, at
      ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (else AWS).
    """
    problems = []
    tracking = environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if tracking.startswith(("http://", "https://")):
        user = environ.get("MLFLOW_TRACKING_USERNAME")
        login = f"{user}:{environ.get('MLFLOW_TRACKING_PASSWORD', '')}" if user else None
        problems.append(_reach("MLflow tracking server", tracking, lambda base, userinfo: (
            urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1",
                                   headers=_basic(login or userinfo))),
            timeout_s, _judge_http("an MLflow tracking server",
                                   "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD")))
    prefect = environ.get("PREFECT_API_URL", "").rstrip("/")
    if prefect:
        auth = environ.get("PREFECT_API_AUTH_STRING")
        problems.append(_reach("Prefect API", prefect, lambda base, userinfo: (
            urllib.request.Request(f"{base}/admin/version", headers=_basic(auth or userinfo))),
            timeout_s, _judge_http("a Prefect API", "PREFECT_API_AUTH_STRING")))
    if s3_remote:
        parts = urlsplit(s3_remote)
        if parts.scheme != "s3" or not parts.netloc:
            raise Unreachable(f"{_shown(s3_remote)}: not an s3://bucket/prefix URL")
        access = S3Access.from_env(environ)
        problems.append(_reach("S3 store", access.endpoint, lambda base, _: _aws_request(
            replace(access, endpoint=base), "GET",
            f"{base}/{parts.netloc}?list-type=2&max-keys=1", "s3"),
            timeout_s, _judge_bucket(parts.netloc, access)))
    if found := [p for p in problems if p]:
        raise Unreachable("; ".join(found))


# ---- processes --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _postgres_bin() -> Path:
    """The newest Debian PostgreSQL's binaries (Prefect needs 14.9 or later)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise StackError("PostgreSQL not found in /usr/lib/postgresql: apt-get install "
                         "postgresql (Debian), or use docker/compose.yaml")
    return found[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` as the ``postgres`` user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _spawn(name: str, command: list[str], env: Mapping[str, str], logs: Path,
           groups: dict[str, int]) -> subprocess.Popen:
    """Start ``command`` in a new process group, output to ``logs/<name>.log``."""
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    groups[name] = process.pid
    return process


def _wait(name: str, process: subprocess.Popen, ready: Callable[[], bool], logs: Path,
          deadline: float) -> None:
    """Until ``ready()``; a StackError naming the log's last error line (else its last line)
    if the process ends or the deadline passes first."""
    while not ready():
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            log = logs / f"{name}.log"
            lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
            cause = next((line for line in reversed(lines)
                          if re.search(r"Error|Exception|FATAL", line)), lines[-1])
            state = f"exited with code {code}" if code is not None else "did not become ready"
            raise StackError(f"{name} {state} during start-up: {cause.strip()} (log: {log})")
        time.sleep(0.25)


def _answers(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return _call(urllib.request.Request(url), 2.0)[0] == 200
        except OSError:
            return False
    return ready


def _start_postgres(base: Path, logs: Path, env: dict[str, str], groups: dict[str, int],
                    deadline: float) -> str:
    """PostgreSQL with the mlflow and prefect databases; the superuser's URL (no driver)."""
    binaries, port, password = _postgres_bin(), _free_port(), secrets.token_urlsafe(16)
    data = base / "postgres"
    data.mkdir(mode=0o700)
    (data / "pw").write_text(password)
    if os.geteuid() == 0:
        base.chmod(0o711)  # the postgres user may pass through, not list
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(data / "pw", "postgres", "postgres")
    subprocess.run(_as_postgres([str(binaries / "initdb"), "-D", str(data / "db"), "-U", "senti",
                                 f"--pwfile={data / 'pw'}", "--auth=scram-sha-256",
                                 "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]),
                   check=True, capture_output=True, timeout=120)
    (data / "pw").unlink()
    server = _spawn("postgres", _as_postgres([
        str(binaries / "postgres"), "-D", str(data / "db"), "-h", HOST, "-p", str(port),
        "-k", str(data), "-c", "fsync=off", "-c", "synchronous_commit=off"]), env, logs, groups)
    isready = [str(binaries / "pg_isready"), "-q", "-h", HOST, "-p", str(port)]
    _wait("postgres", server, lambda: subprocess.run(isready, check=False).returncode == 0, logs,
          deadline)
    psql = [str(binaries / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(port),
            "-U", "senti"]
    sql_env = {**env, "PGPASSWORD": password}
    for database, statement in (("postgres", "CREATE DATABASE mlflow"),
                                ("postgres", "CREATE DATABASE prefect"),
                                ("prefect", "CREATE EXTENSION pg_trgm")):
        subprocess.run([*psql, "-d", database, "-c", statement], env=sql_env, check=True,
                       capture_output=True, timeout=60)
    return f"senti:{password}@{HOST}:{port}"


def up(timeout_s: float = START_TIMEOUT_S) -> Stack:
    """Start the stack (PostgreSQL and S3 first, then MLflow and Prefect side by side) and wait
    until every service answers. On any failure everything started is stopped and removed."""
    started = time.monotonic()
    deadline = started + timeout_s
    base = Path(tempfile.mkdtemp(prefix=PREFIX))
    logs = base / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    groups: dict[str, int] = {}
    try:
        s3_port = _free_port()
        moto = _spawn("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(s3_port)],
                      env, logs, groups)
        database = _start_postgres(base, logs, env, groups, deadline)
        endpoint = f"http://{HOST}:{s3_port}"
        _wait("s3", moto, _answers(f"{endpoint}/moto-api/data.json"), logs, deadline)
        access = _moto_user(endpoint)
        s3_env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access.key_id,
                  "AWS_SECRET_ACCESS_KEY": access.secret, "AWS_DEFAULT_REGION": REGION}

        mlflow_port, mlflow_password = _free_port(), secrets.token_urlsafe(16)
        auth_ini = base / "mlflow-auth.ini"
        auth_ini.write_text("[mlflow]\ndefault_permission = READ\n"
                            f"database_uri = sqlite:///{base / 'mlflow-auth.db'}\n"
                            f"admin_username = {ADMIN}\n"
                            # checking a password costs ~1 s of CPU (PBKDF2): once a minute
                            "auth_cache_ttl_seconds = 60\n")
        mlflow = _spawn("mlflow", [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--artifacts-destination", f"s3://{ARTIFACTS_BUCKET}/artifacts",
            "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
            # the database's password in the environment: a command line is public (ps)
            {**env, **s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint,
             "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{database}/mlflow",
             "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD":
             mlflow_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, logs, groups)
        prefect_port, prefect_auth = _free_port(), f"{ADMIN}:{secrets.token_urlsafe(16)}"
        prefect = _spawn("prefect", [
            sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
            "--port", str(prefect_port)],
            {**env, "PREFECT_HOME": str(base / "prefect"),
             "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{database}/prefect",
             "PREFECT_SERVER_API_AUTH_STRING": prefect_auth}, logs, groups)
        mlflow_url, prefect_url = f"http://{HOST}:{mlflow_port}", f"http://{HOST}:{prefect_port}"
        _wait("mlflow", mlflow, _answers(f"{mlflow_url}/health"), logs, deadline)
        _wait("prefect", prefect, _answers(f"{prefect_url}/api/health"), logs, deadline)
    except BaseException:
        _stop(groups)
        for path in base.iterdir():  # keep only the logs the error points to
            if path != logs:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    return Stack(str(base), groups, {
        "MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": mlflow_password, **PROXIED_ARTIFACTS,
        "PREFECT_API_URL": f"{prefect_url}/api", "PREFECT_API_AUTH_STRING": prefect_auth,
        **s3_env},
        f"s3://{DVC_BUCKET}/dvcstore", round(time.monotonic() - started, 1))


def _alive(group: int) -> bool:
    with suppress(ChildProcessError):
        os.waitpid(group, os.WNOHANG)  # reap our own child, else it lingers as a zombie
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(groups: Mapping[str, int], timeout_s: float = 30.0) -> None:
    """Stop each process group (newest first): SIGINT to PostgreSQL (its fast shutdown),
    SIGTERM to the others, SIGKILL to whatever is left after ``timeout_s``."""
    for name in reversed(list(groups)):
        with suppress(ProcessLookupError):
            os.killpg(groups[name], signal.SIGINT if name == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(g) for g in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in groups.values():
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while left := [name for name, group in groups.items() if _alive(group)]:
        if time.monotonic() > deadline:
            raise StackError(f"could not stop {', '.join(left)} (process groups "
                             f"{', '.join(str(groups[name]) for name in left)})")
        time.sleep(0.1)


def _ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _leads(group: int, log: Path) -> bool:
    """Whether process group ``group`` is still the one :func:`_spawn` started with output to
    ``log``: its leader writes ``log``, or has ended (what is left of the group is then the
    service's: Linux gives no new process an id that a process group still has)."""
    try:
        return os.readlink(f"/proc/{group}/fd/1") == os.path.realpath(log)
    except FileNotFoundError:
        return _ended(group)
    except OSError:
        return False


def _check_record(stack: Stack) -> None:
    """A StackError unless ``stack`` is what :func:`up` started: its directory one ``up``
    makes (or gone), each group's id above 1 and still the service's."""
    base = Path(stack.base)
    if (base.parent != Path(tempfile.gettempdir()) or not base.name.startswith(PREFIX)
            or base.is_symlink() or (base.exists() and not base.is_dir())):
        raise StackError(f"{base}: not a directory senti stack up makes ({PREFIX}* in "
                         f"{tempfile.gettempdir()}); nothing stopped or deleted")
    for name, group in stack.groups.items():
        if type(group) is not int or group <= 1:
            raise StackError(f"{name}: {group!r} is not a process group senti stack up "
                             "starts; nothing stopped or deleted")
        if not _leads(group, base / "logs" / f"{name}.log"):
            raise StackError(f"process group {group} is no longer the stack's {name} (its "
                             f"leader does not write {base / 'logs' / name}.log); nothing "
                             "stopped or deleted")


def down(stack: Stack) -> None:
    """Stop every service of ``stack`` (no process of its groups survives) and remove its
    directory; a StackError, and nothing stopped or deleted, when the record does not
    describe a stack :func:`up` started (see :func:`_check_record`)."""
    _check_record(stack)
    _stop(stack.groups)
    shutil.rmtree(stack.base, ignore_errors=True)


def processes(stack: Stack) -> dict[int, tuple[str, int]]:
    """Every running process of ``stack`` (Linux ``/proc``): pid -> (service, RSS in KiB).
    A process belongs to a service when its process group, or an ancestor's, is the
    service's (PostgreSQL's backends start sessions of their own)."""
    table: dict[int, tuple[int, int, int]] = {}  # pid -> (parent, group, rss KiB)
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                rss = int((proc / "statm").read_text().split()[1]) * page_kib
            except (OSError, IndexError):
                continue
            table[int(proc.name)] = (int(fields[1]), int(fields[2]), rss)
    by_group = {group: name for name, group in stack.groups.items()}
    found = {}
    for pid, (parent, group, rss) in table.items():
        service, seen = by_group.get(group), {pid}
        while service is None and parent in table and parent not in seen:
            seen.add(parent)
            service = by_group.get(table[parent][1])
            parent = table[parent][0]
        if service is not None:
            found[pid] = (service, rss)
    return found


def memory_mib(stack: Stack) -> dict[str, float]:
    """Resident memory of each service, summed over its processes."""
    totals = dict.fromkeys(stack.groups, 0.0)
    for service, rss in processes(stack).values():
        totals[service] += rss / 1024
    return {name: round(mib, 1) for name, mib in totals.items()}


# ---- the state file of `senti stack up` -------------------------------------------------

def save(stack: Stack, path: Path) -> None:
    """Record ``stack`` (mode 0600: it holds the passwords) for ``senti stack env/down``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with suppress(FileNotFoundError):
        temporary.unlink()  # a leftover would keep its mode: the new file is made 0600
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(json.dumps(asdict(stack), indent=2))
    temporary.replace(path)


def load(path: Path) -> Stack:
    """The stack recorded at ``path``."""
    try:
        return Stack(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise StackError(f"{path}: no stack recorded here (senti stack up first)") from None
    except (ValueError, TypeError):
        raise StackError(f"{path}: not a record of senti stack up (delete it)") from None


def is_running(stack: Stack) -> bool:
    """Whether any process of ``stack`` is still running: a group of the record that is alive
    and still the stack's (:func:`_leads`). A record whose ids now belong to other processes
    (after a reboot, say) or that :func:`up` never wrote is a stack that is not running."""
    logs = Path(stack.base) / "logs"
    return any(type(group) is int and group > 1 and _alive(group)
               and _leads(group, logs / f"{name}.log") for name, group in stack.groups.items())
