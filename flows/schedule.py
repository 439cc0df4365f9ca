"""The deployments of ``prefect.yaml`` and ``senti schedule``, which serves them on one machine.

``prefect.yaml`` is the one place that says which deployments exist, when they run (cron and
timezone) and with which default parameters. There are two ways to run them, both reading it:

- a Prefect server with a process work pool: ``prefect deploy --all`` reads the file itself;
- one machine, no set-up: :func:`serve` (``senti schedule``) reads it here and serves the same
  deployments with a Prefect runner.

Only the part of prefect.yaml this project uses is accepted here (cron schedules with a
timezone, parameters, tags, description, concurrency_limit, a work pool); anything else is an
error instead of a deployment served differently from the one ``prefect deploy`` creates.

Served deployments need a server that runs Prefect's scheduler service. Prefect's ephemeral
API (no ``PREFECT_API_URL``) does not run it (``Runner.add_flow`` warns "Cannot schedule flows
on an ephemeral server"), so without ``PREFECT_API_URL`` :func:`prefect_api` starts a local
``prefect server start`` for as long as ``senti schedule`` runs.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = "prefect.yaml"
_DEPLOYMENT_KEYS = {"name", "entrypoint", "description", "tags", "parameters", "schedules",
                    "concurrency_limit", "work_pool"}
_SCHEDULE_KEYS = {"cron", "timezone", "active"}


class DeploymentConfigError(ValueError):
    """prefect.yaml declares something senti cannot serve exactly as ``prefect deploy`` would."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived before the runner was serving."""


@dataclass(frozen=True)
class CronSpec:
    cron: str
    timezone: str
    active: bool = True


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of prefect.yaml's ``deployments``."""

    name: str
    entrypoint: str  # "flows/retrain.py:retrain", relative to prefect.yaml's directory
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[CronSpec, ...] = ()
    tags: tuple[str, ...] = ()
    description: str | None = None
    concurrency_limit: int | None = None
    work_pool: str | None = None

    @property
    def path(self) -> str:
        return self.entrypoint.rpartition(":")[0]

    @property
    def function(self) -> str:
        return self.entrypoint.rpartition(":")[2]

    @property
    def module(self) -> str:
        """The entrypoint's file as a module: ``flows/retrain.py`` -> ``flows.retrain``."""
        return self.path.removesuffix(".py").replace("/", ".")


# ---- parsing ---------------------------------------------------------------------------------

def _cron(item: Any, where: str) -> CronSpec:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    if not isinstance(item, dict):
        raise DeploymentConfigError(f"{where}: expected a mapping, got {item!r}")
    unknown = sorted(set(item) - _SCHEDULE_KEYS)
    if unknown:
        raise DeploymentConfigError(
            f"{where}: unsupported key(s) {', '.join(unknown)} (senti schedule serves cron "
            "schedules with a timezone only)")
    if not isinstance(item.get("cron"), str) or not isinstance(item.get("timezone"), str):
        raise DeploymentConfigError(f"{where}: needs `cron` and `timezone` strings "
                                    "(an explicit timezone: Prefect's default is UTC)")
    active = item.get("active", True)
    if not isinstance(active, bool):
        raise DeploymentConfigError(f"{where}.active: expected true/false, got {active!r}")
    try:  # the class `prefect deploy` builds from the same keys
        CronSchedule(cron=item["cron"], timezone=item["timezone"])
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors())
        raise DeploymentConfigError(f"{where}: {problems}") from exc
    return CronSpec(item["cron"], item["timezone"], active)


def _deployment(item: Any, where: str) -> DeploymentSpec:
    if not isinstance(item, dict):
        raise DeploymentConfigError(f"{where}: expected a mapping, got {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DeploymentConfigError(f"{where}: needs a `name`")
    where = f"deployment {name!r}"
    unknown = sorted(set(item) - _DEPLOYMENT_KEYS)
    if unknown:
        raise DeploymentConfigError(f"{where}: unsupported key(s) {', '.join(unknown)}")
    entrypoint = item.get("entrypoint")
    path, sep, function = (entrypoint or "").rpartition(":")
    if not isinstance(entrypoint, str) or not sep or not path.endswith(".py") \
            or not function.isidentifier():
        raise DeploymentConfigError(
            f"{where}: entrypoint must be `path/to/file.py:flow_function`, got {entrypoint!r}")
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise DeploymentConfigError(f"{where}.parameters: expected a mapping")
    schedules = item.get("schedules") or []
    if not isinstance(schedules, list):
        raise DeploymentConfigError(f"{where}.schedules: expected a list")
    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DeploymentConfigError(f"{where}.tags: expected a list of strings")
    limit = item.get("concurrency_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise DeploymentConfigError(f"{where}.concurrency_limit: expected an integer >= 1")
    pool = item.get("work_pool") or {}
    if not isinstance(pool, dict):
        raise DeploymentConfigError(f"{where}.work_pool: expected a mapping")
    description = item.get("description")
    return DeploymentSpec(
        name=name, entrypoint=entrypoint, parameters=dict(parameters),
        schedules=tuple(_cron(s, f"{where}.schedules[{i}]") for i, s in enumerate(schedules)),
        tags=tuple(tags), description=description.strip() if description else None,
        concurrency_limit=limit, work_pool=pool.get("name"))


def parse_deployments(tree: Any) -> list[DeploymentSpec]:
    """The ``deployments`` of a parsed prefect.yaml, checked."""
    if not isinstance(tree, dict) or not isinstance(tree.get("deployments"), list) \
            or not tree["deployments"]:
        raise DeploymentConfigError("prefect.yaml: expected a non-empty `deployments` list")
    specs = [_deployment(item, f"deployments[{i}]")
             for i, item in enumerate(tree["deployments"])]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DeploymentConfigError(f"prefect.yaml: duplicate deployment name(s) "
                                    f"{', '.join(duplicates)}")
    return specs


def load_deployments(path: Path | str) -> list[DeploymentSpec]:
    """Read and check prefect.yaml's deployments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DeploymentConfigError(f"{path} not found") from exc
    return parse_deployments(yaml.safe_load(text))


# ---- flows and parameters --------------------------------------------------------------------

def resolve_flow(spec: DeploymentSpec, base_dir: Path | str):
    """The flow object the entrypoint names, imported as a module (``flows.retrain``): the
    module Python imports must be the file prefect.yaml names, or the two paths would run
    different code."""
    from prefect import Flow

    file = (Path(base_dir) / spec.path).resolve()
    if not file.is_file():
        raise DeploymentConfigError(f"deployment {spec.name!r}: {file} does not exist")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: cannot import {spec.module}: {exc}") from exc
    if Path(module.__file__ or "").resolve() != file:
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: {spec.module} imports from {module.__file__}, "
            f"not {file}: install this checkout (pip install -e .)")
    found = getattr(module, spec.function, None)
    if not isinstance(found, Flow):
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: {spec.entrypoint} is not a Prefect flow")
    return found


def check_parameters(spec: DeploymentSpec, flow) -> list[str]:
    """Check the default parameters against the flow's signature (names and types); return
    the required parameters left to each run (e.g. batch-predict's CSV paths)."""
    from pydantic import TypeAdapter, ValidationError

    signature = inspect.signature(flow.fn)
    unknown = sorted(set(spec.parameters) - set(signature.parameters))
    if unknown:
        raise DeploymentConfigError(
            f"deployment {spec.name!r}: flow {flow.name!r} has no parameter(s) "
            f"{', '.join(unknown)}")
    hints = typing.get_type_hints(flow.fn)
    for key, value in spec.parameters.items():
        try:
            TypeAdapter(hints.get(key, Any)).validate_python(value, strict=False)
        except ValidationError as exc:
            raise DeploymentConfigError(
                f"deployment {spec.name!r}: parameter {key}={value!r}: "
                f"{exc.errors()[0]['msg']}") from exc
    return [name for name, p in signature.parameters.items()
            if p.default is inspect.Parameter.empty and name not in spec.parameters]


def check_overrides(spec: DeploymentSpec, root: Path | str) -> None:
    """A default ``overrides`` mapping is checked against params.yaml like ``--set``."""
    from senti.config import apply_overrides, load_params

    overrides = spec.parameters.get("overrides")
    if overrides:
        apply_overrides(load_params(root).raw, overrides)


def next_runs(schedule: CronSpec, n: int = 3, after: datetime | None = None) -> list[datetime]:
    """The next ``n`` run times, computed by the Prefect server's own schedule class (what its
    scheduler inserts), in the schedule's timezone."""
    from prefect.server.schemas.schedules import CronSchedule

    dates = asyncio.run(CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
                        .get_dates(n=n, start=after))
    return list(dates)


def served_parameters(spec: DeploymentSpec, flow, root: Path) -> dict[str, Any]:
    """prefect.yaml's parameters, with ``root`` made absolute: a work-pool run's "." is the
    working directory `prefect deploy` recorded, a served run's would be wherever the
    runner happens to run."""
    parameters = dict(spec.parameters)
    if "root" in inspect.signature(flow.fn).parameters:
        parameters["root"] = str(Path(root).resolve())
    return parameters


def build_deployments(specs: list[DeploymentSpec], root: Path | str,
                      base_dir: Path | str) -> list[Any]:
    """Runner deployments with prefect.yaml's names, schedules, parameters, tags and limits."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        flow = resolve_flow(spec, base_dir)
        check_parameters(spec, flow)
        check_overrides(spec, root)
        deployments.append(flow.to_deployment(
            name=spec.name,
            schedules=[Cron(s.cron, timezone=s.timezone, active=s.active)
                       for s in spec.schedules],
            parameters=served_parameters(spec, flow, Path(root)),
            description=spec.description,
            tags=list(spec.tags),
            concurrency_limit=spec.concurrency_limit,
            # explicit: a restarted `senti schedule` resumes the schedules its last shutdown
            # paused (PrefectHQ/prefect#16363)
            paused=False,
            # `flows` is an installed package: a run imports flows.retrain wherever it starts
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return deployments


# ---- serving -----------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(api_url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {process.returncode}; "
                               f"log: {log}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer within {timeout:.0f}s; log: {log}")


@contextmanager
def prefect_api(echo: Callable[[str], None], port: int = 4200,
                timeout: float = 120) -> Iterator[str]:
    """The API to serve against: ``PREFECT_API_URL`` if set, else a local ``prefect server
    start`` (with its scheduler; database in ``PREFECT_HOME``) for the duration."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        echo(f"Prefect API: {configured}")
        yield configured
        return
    port = port if _port_free(port) else _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = Path(tempfile.gettempdir()) / f"senti-prefect-server-{port}.log"
    with log.open("wb") as out:
        # its own session: the terminal's Ctrl-C reaches senti, which stops the runner
        # (pausing the schedules through this server) before stopping the server
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    saved = os.environ.get("PREFECT_API_URL")
    try:
        echo(f"starting a local Prefect server (no PREFECT_API_URL set); log: {log}")
        _wait_healthy(api_url, process, log, timeout)
        echo(f"Prefect API: {api_url}  (UI: http://127.0.0.1:{port})")
        os.environ["PREFECT_API_URL"] = api_url  # flow-run processes inherit it
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def describe(specs: list[DeploymentSpec], flows: dict[str, str], registered: dict[str, Any],
             n: int = 3) -> list[str]:
    """One block per deployment: its full name, then its schedules as the server stored them
    and their next ``n`` run times (or "on demand")."""
    lines = []
    for spec in specs:
        full_name = f"{flows[spec.name]}/{spec.name}"
        deployment = registered[spec.name]
        lines.append(f"  {full_name}" + ("  [paused]" if deployment.paused else ""))
        schedules = [s for s in deployment.schedules if s.active]
        if not schedules:
            lines.append("      on demand: prefect deployment run "
                         f"'{full_name}'")
        for item in schedules:
            cron = CronSpec(item.schedule.cron, item.schedule.timezone or "UTC")
            times = ", ".join(t.strftime("%Y-%m-%d %H:%M %Z") for t in next_runs(cron, n))
            lines.append(f"      cron {cron.cron!r} ({cron.timezone}); next runs: {times}")
    return lines


async def _serve_until_signal(runner: Any, echo: Callable[[str], None], ready: str) -> None:
    """Run ``runner`` until SIGINT/SIGTERM; ``ready`` is printed once our handlers are in."""
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(runner.start())
    stopping = False
    pending: set[asyncio.Task] = set()

    def stop(name: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        echo(f"{name} received: stopping...")
        if runner.started:
            pending.add(loop.create_task(runner.astop()))
        else:
            serving.cancel()

    # Runner.start() installs its own SIGTERM handler (which exits the process outright if
    # the runner has not started yet). Wait until it has, then put ours over it: one path
    # for both signals. Until then the caller's handler raises Stopped.
    for _ in range(1000):
        if serving.done() or signal.getsignal(signal.SIGTERM) == runner.handle_sigterm:
            break
        await asyncio.sleep(0.01)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    echo(ready)
    try:
        await serving
    except asyncio.CancelledError:
        if not stopping:
            raise


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def serve(specs: list[DeploymentSpec], root: Path | str, base_dir: Path | str, *,
          echo: Callable[[str], None] = print, n_next: int = 3) -> None:
    """Register ``specs`` as served deployments and run their flow runs until SIGINT/SIGTERM.

    Runs are started by a Prefect runner in subprocesses; on shutdown the runner pauses the
    deployments' schedules (no runs pile up while nothing serves them); starting again
    resumes them. Returns normally after a signal; raises :class:`Stopped` if the signal came
    before serving began.
    """
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stopped)
    try:
        deployments = build_deployments(specs, root, base_dir)
        with prefect_api(echo):
            runner = Runner(name=f"senti-schedule-{socket.gethostname()}",
                            pause_on_shutdown=True)
            for deployment in deployments:
                runner.add_deployment(deployment)
            flows = {d.name: d.flow_name for d in deployments}
            with get_client(sync_client=True) as client:
                registered = {spec.name: client.read_deployment_by_name(
                    f"{flows[spec.name]}/{spec.name}") for spec in specs}
            echo(f"serving {len(specs)} deployment(s) from prefect.yaml "
                 f"(project {Path(root).resolve()}):")
            for line in describe(specs, flows, registered, n_next):
                echo(line)
            asyncio.run(_serve_until_signal(
                runner, echo, "Ctrl-C stops serving (the schedules are paused until senti "
                              "schedule runs again)."))
            # asyncio restored the default handlers: keep a late signal from killing the
            # local server's shutdown half-way
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _raise_stopped)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
