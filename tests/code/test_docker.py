"""docker/, checked without a container engine: hadolint on the Dockerfiles (error level,
docker/.hadolint.yaml), docker/compose.yaml against the vendored compose-spec schema, and the
compose file against the code and the docs: depends_on targets, the environment every
service running senti needs, buckets, the work pool, pinned images, non-root users, health
checks, no secrets in files, and the ports docs/operations.md gives."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
SCHEMA = DOCKER / "schema" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"  # 0.39.0
HADOLINT = Path(sys.executable).parent / "hadolint"

# Where each environment variable that senti (or the tool it drives) reads must be set: the
# services that run that code. A variable the code reads must be here or in NOT_FROM_COMPOSE.
NEEDED_BY = {
    "MLFLOW_TRACKING_URI": {"worker", "serving"},
    "MLFLOW_TRACKING_USERNAME": {"worker", "serving"},
    "MLFLOW_TRACKING_PASSWORD": {"worker", "serving"},
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": {"worker", "serving"},  # no presigned S3 URLs
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": {"worker", "serving"},
    "PREFECT_API_URL": {"worker"},
    "PREFECT_API_AUTH_STRING": {"worker"},
    "SENTI_PROJECT_ROOT": {"worker"},
    "SENTI_WEBHOOK_URL": {"worker"},  # may be empty: params.yaml's notify.webhook_url then
    "AWS_ENDPOINT_URL": {"worker", "buckets", "mlflow"},  # the DVC remote, the buckets
    "AWS_ACCESS_KEY_ID": {"worker", "buckets", "mlflow"},
    "AWS_SECRET_ACCESS_KEY": {"worker", "buckets", "mlflow"},
    "AWS_DEFAULT_REGION": {"worker", "buckets"},
}
OPTIONAL = {"SENTI_WEBHOOK_URL"}
NOT_FROM_COMPOSE = {
    "SENTI_OWNER_PID": "set by the retrain flow for the stage processes it starts",
    "SENTI_SERVE": "set by senti serve for its server's worker processes",
    "SENTI_VERBOSE": "a user's switch: everything on the terminal",
    "PATH": "senti.versioning puts this interpreter first for DVC's stage commands",
    "PYTHONPATH": "extended, then restored, by senti.lineage for a reproduction's stages "
                  "(the trainer image sets it to the mounted checkout)",
    "XDG_CACHE_HOME": "optional: where jieba's dictionary cache goes (default ~/.cache)",
    "AWS_ENDPOINT_URL_S3": "optional: an S3-only endpoint (AWS_ENDPOINT_URL is set)",
    "DASK_SCHEDULER_ADDRESS": "optional: a Dask cluster of the user's; the stack has none "
                              "(senti.cluster starts a local one)",
}
SERVICE_PORTS = {"MLFLOW_TRACKING_URI": "mlflow", "PREFECT_API_URL": "prefect-server",
                 "AWS_ENDPOINT_URL": "s3"}
SECRET = re.compile(r"PASSWORD|SECRET|AUTH_STRING|ACCESS_KEY")


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


def python_files() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "flows").rglob("*.py")])


def constants() -> dict[str, str]:
    """Module-level ``NAME = "text"`` of every senti and flows module."""
    found = {}
    for path in python_files():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                found.update({t.id: node.value.value for t in node.targets
                              if isinstance(t, ast.Name)})
    return found


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "environ") or (
        isinstance(node, ast.Attribute) and node.attr == "environ")


def variables_read() -> dict[str, str]:
    """Every environment variable the code reads (``environ.get``, ``environ[...]``,
    ``getenv``), by name, with where; names held in module constants are resolved."""
    names, found = constants(), {}
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            key = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                if (node.func.attr == "get" and _is_environ(node.func.value)) or (
                        node.func.attr == "getenv"):
                    key = node.args[0]
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                  and _is_environ(node.value)):
                key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found[key.value] = f"{path.relative_to(REPO)}:{node.lineno}"
            elif isinstance(key, ast.Name) and key.id in names:
                found[names[key.id]] = f"{path.relative_to(REPO)}:{node.lineno}"
    return found


def published_ports(service: dict) -> list[int]:
    return [int(str(p).rsplit(":", 2)[-2]) for p in service.get("ports", [])]


# ---- hadolint --------------------------------------------------------------------------

def test_dockerfiles_pass_hadolint_at_error_level():
    assert len(DOCKERFILES) == 2
    result = subprocess.run([str(HADOLINT), "--config", str(DOCKER / ".hadolint.yaml"),
                             *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_with_that_config_fails_an_error(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.11.15-slim-bookworm\nWORKDIR app\n", encoding="utf-8")
    result = subprocess.run([str(HADOLINT), "--config", str(DOCKER / ".hadolint.yaml"),
                             str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "DL3000" in result.stdout  # "Use absolute WORKDIR", an error


# ---- the compose-spec schema ------------------------------------------------------------

def test_the_vendored_schema_is_the_recorded_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert SCHEMA_SHA256 in (DOCKER / "schema" / "README.md").read_text(encoding="utf-8")


def test_compose_file_is_valid_compose_spec():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    assert [e.message for e in validator.iter_errors(compose())] == []
    broken = compose()
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "healthy"
    assert not validator.is_valid(broken)


# ---- compose against the code and the docs ----------------------------------------------

def test_every_depends_on_target_is_a_service():
    services = compose()["services"]
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name


def test_every_variable_the_code_reads_is_accounted_for():
    read = variables_read()
    unplaced = {name: where for name, where in read.items()
                if name not in NEEDED_BY and name not in NOT_FROM_COMPOSE}
    assert unplaced == {}, "add each to NEEDED_BY (and set it in compose.yaml) or explain it"
    assert {"MLFLOW_TRACKING_URI", "SENTI_PROJECT_ROOT", "AWS_ACCESS_KEY_ID"} <= set(read)


def test_services_that_run_senti_have_the_environment_it_needs():
    services = compose()["services"]
    for variable, needed_by in NEEDED_BY.items():
        for name in needed_by:
            environment = services[name].get("environment", {})
            assert variable in environment, f"{name}: {variable} not set"
            assert variable in OPTIONAL or str(environment[variable]).strip(), (name, variable)


def test_client_urls_name_the_services_and_their_ports():
    services = compose()["services"]
    worker = services["worker"]["environment"]
    for variable, target in SERVICE_PORTS.items():
        host, port = re.match(r"https?://([\w-]+):(\d+)", worker[variable]).groups()
        assert host == target
        command = " ".join(map(str, services[target]["command"]))
        assert re.search(rf"(--port[= ]|\.port=){port}\b", command), (variable, command)
        assert int(port) in published_ports(services[target])


def test_buckets_and_the_work_pool_agree_with_the_code():
    services = compose()["services"]
    made = services["buckets"]["command"]
    assert made[:3] == ["senti", "stack", "buckets"]
    source = (REPO / "src" / "senti" / "stack.py").read_text(encoding="utf-8")
    names = dict(re.findall(r'^(\w+_BUCKET) = "([\w-]+)"', source, re.MULTILINE))
    assert set(made[3:]) == set(names.values())
    mlflow = " ".join(services["mlflow"]["command"])
    assert f"--artifacts-destination=s3://{names['ARTIFACTS_BUCKET']}/" in mlflow
    assert "--app-name=basic-auth" in mlflow
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == constants()["POOL"]
    assert services["serving"]["profiles"] == ["serving"]


def test_images_are_pinned_run_as_non_root_and_are_health_checked():
    for path in DOCKERFILES:
        text = path.read_text(encoding="utf-8")
        for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE):
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image
        users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert users and not users[-1].startswith(("root", "0")), path.name
    for name, service in compose()["services"].items():
        if "build" in service:  # ours: the Dockerfiles above
            assert re.fullmatch(r"senti-(trainer|serving):[\d.]+", service["image"]), name
        else:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", service["image"]), name
            root_ok = name == "s3-data-owner"  # one-shot chown of the S3 store's volume
            assert root_ok or not str(service.get("user", "0")).startswith(("0", "root")), name
        if service.get("restart", "no") != "no":  # long-running
            assert "healthcheck" in service or name == "serving", name
    assert "HEALTHCHECK" in (DOCKER / "serving.Dockerfile").read_text(encoding="utf-8")


def test_no_secret_is_written_in_a_file():
    for name, service in compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET.search(key):
                assert str(value).startswith("${"), f"{name}: {key} holds a value"
        for part in service.get("command", []):
            assert not re.search(r"://[^:/]+:[^$@]+@", str(part)), f"{name}: password in URL"
            # nor from the environment: any user of the host reads a command line (ps)
            assert not re.search(r"\$\{\w*(" + SECRET.pattern + ")", str(part)), name
    example = (DOCKER / ".env.example").read_text(encoding="utf-8")
    for line in example.splitlines():
        key, _, value = line.partition("=")
        if SECRET.search(key) and not line.startswith("#"):
            assert value == "", f".env.example: {key} has a value"


def test_published_ports_agree_with_the_docs():
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Team set-up"):]
    documented = {name: None if port == "—" else int(port) for name, port in
                  re.findall(r"^\| `([\w-]+)` \| (\d+|—) \|", section, re.MULTILINE)}
    ports = {name: (published_ports(s) or [None])[0] for name, s in compose()["services"].items()}
    assert documented == ports


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_senti_with_the_team_extra_under_the_constraints(path):
    text = path.read_text(encoding="utf-8")
    assert 'pip install -c constraints.txt ".[team]"' in text
    ignore = path.with_name(path.name + ".dockerignore").read_text(encoding="utf-8")
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.MULTILINE):
        for item in copied.split():
            assert f"!{item}" in ignore.splitlines(), f"{item} is not in the build context"


def test_the_images_wheel_holds_every_package_of_the_source():
    """The images install senti from a wheel (`pip install .`), which holds only the packages
    pyproject lists: every folder of code or data under src/senti must be one of them."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    folders = {".".join(folder.relative_to(REPO / "src").parts)
               for folder in (REPO / "src" / "senti").rglob("*")
               if folder.is_dir() and folder.name != "__pycache__"
               and any(f.is_file() for f in folder.iterdir())}
    assert {"senti", "flows", *folders} == listed
