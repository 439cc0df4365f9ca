"""The deployments of the senti flows: the ONE place that says which exist, when they run
and with which parameters.

- one machine: ``senti schedule`` serves them with :func:`prefect.serve` (a Prefect runner
  in this process starts each run in a subprocess);
- a Prefect server with a process work pool: ``senti deploy --pool senti`` registers the same
  deployments with :func:`prefect.deploy`, and ``prefect worker start --pool senti`` runs them.

Runs import the flows as modules of the installed ``flows`` package, so no image or code
storage is needed. The project root is fixed when the deployments are built
(``SENTI_PROJECT_ROOT`` in the runs' environment): it is not a run parameter, so a run cannot
point a flow at another directory (:func:`senti.config.project_root`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.batch_predict import batch_predict
from flows.monitor import monitor
from flows.promote import promote
from flows.retrain import retrain
from senti.config import ROOT_ENV

NIGHTLY_CRON = "0 3 * * *"  # 03:00 every day...
TIMEZONE = "Asia/Shanghai"  # ...China Standard Time
POOL = "senti"


def deployments(root: Path | str, pool: str | None = None) -> list[RunnerDeployment]:
    """The deployments of the project at ``root``; for the work pool ``pool`` when given
    (its runs start in ``root``), else to be served."""
    root = str(Path(root).resolve())
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "paused": False}
    if pool:  # the project is fixed for the runs: no run parameter can move them elsewhere
        common.update(work_pool_name=pool,
                      job_variables={"working_dir": root, "env": {ROOT_ENV: root}})
    return [
        retrain.to_deployment(
            name="retrain-nightly", **common, parameters={"overrides": {}},
            schedules=[Cron(NIGHTLY_CRON, timezone=TIMEZONE)], tags=["senti", "retrain"],
            concurrency_limit=1,  # one retrain at a time: DVC's repo lock allows no second
            description="Nightly retrain: every DVC stage (skipped when unchanged), data push, "
                        "registration and the promotion gate. On unchanged data and params it "
                        "registers nothing and posts a 'nothing changed' artifact. "
                        "`overrides` is the `senti retrain --set section.key=value` mapping."),
        promote.to_deployment(
            name="promote", **common, tags=["senti", "promote"],
            description="The promotion gate on a version (default the @challenger)."),
        batch_predict.to_deployment(
            name="batch-predict", **common, tags=["senti", "predict"],
            description="Classify a CSV of texts with a registered version (default the "
                        "@champion); input_csv and output_csv are given per run (files "
                        "under the project's serve.batch_dirs)."),
        monitor.to_deployment(
            name="monitor", **common, tags=["senti", "monitor"],
            description="Prediction drift of a batch-predict output against the version "
                        "that made it (predicted-label shares, confidences, text lengths, "
                        "OOV rate); predictions_csv is given per run."),
    ]


@contextmanager
def _local_server(echo: Callable[[str], None]) -> Iterator[str]:
    """A Prefect server (``prefect server start``, with its scheduler; database in
    ``PREFECT_HOME``, port ``PREFECT_SERVER_API_PORT``) as this process's child for as long as
    the block runs, and stopped however the block ends. Its log goes to this process's stderr
    (senti's log file)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_PORT, temporary_settings

    port = PREFECT_SERVER_API_PORT.value()
    url = f"http://127.0.0.1:{port}/api"
    echo(f"no PREFECT_API_URL: starting a local Prefect server ({url}, UI on port {port})")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            deadline = time.monotonic() + 120
            with get_client(sync_client=True) as client:
                while client.api_healthcheck() is not None:
                    if server.poll() is not None:
                        raise RuntimeError(f"the local Prefect server exited with code "
                                           f"{server.returncode} (its output is in the log)")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the Prefect server at {url} did not answer in "
                                           "120 s")
                    time.sleep(0.5)
            os.environ["PREFECT_API_URL"] = url  # the runs' subprocesses inherit it
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(server)


def _stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM ``process`` and wait for it to exit (SIGKILL after ``grace_s``), deaf to a
    second SIGTERM or SIGINT meanwhile: one must not cut the wait short and leave it running."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve(root: Path | str, echo: Callable[[str], None] = print) -> None:
    """Serve the deployments (their schedules included) until Ctrl-C or SIGTERM; on the way
    out the runner pauses their schedules, and serving again resumes them. Scheduling needs a
    server that runs Prefect's scheduler, which the ephemeral API does not: without
    ``PREFECT_API_URL`` a local one runs as this process's child, and stops with it."""
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    # A background job of a non-interactive shell (`senti schedule &`) starts with SIGINT
    # ignored, and Python then leaves it ignored: make SIGINT stop serving in any case.
    # SIGTERM (a process manager's stop) too, until Prefect's runner takes it over: its
    # default action would end this process and leave the local server running.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    built = deployments(root)
    os.environ[ROOT_ENV] = str(Path(root).resolve())  # the runs' subprocesses inherit it
    try:
        with nullcontext() if PREFECT_API_URL.value() else _local_server(echo):
            prefect_serve(*built)
    except KeyboardInterrupt:
        pass  # stopped before the runner started: the local server has been stopped


def deploy(root: Path | str, pool: str = POOL) -> list[str]:
    """Register the deployments on the server at ``PREFECT_API_URL`` for the work pool
    ``pool`` (create it first: ``prefect work-pool create --type process senti``)."""
    from prefect import deploy as prefect_deploy

    ids = prefect_deploy(*deployments(root, pool), work_pool_name=pool, build=False, push=False,
                         print_next_steps_message=False,
                         ignore_warnings=True)  # its advice to `.serve` instead: not here
    return [str(i) for i in ids]
