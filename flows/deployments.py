"""The deployments of the senti flows: the ONE place that says which exist, when they run
and with which parameters.

- one machine: ``senti schedule`` serves them with :func:`prefect.serve` (a Prefect runner
  in this process starts each run in a subprocess);
- a Prefect server with a process work pool: ``senti deploy --pool senti`` registers the same
  deployments with :func:`prefect.deploy`, and ``prefect worker start --pool senti`` runs them.

Runs import the flows as modules of the installed ``flows`` package, so no image or code
storage is needed; the project root is fixed when the deployments are built.
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
from flows.promote import promote
from flows.retrain import retrain

NIGHTLY_CRON = "0 3 * * *"  # 03:00 every day...
TIMEZONE = "Asia/Shanghai"  # ...China Standard Time
POOL = "senti"


def deployments(root: Path | str, pool: str | None = None) -> list[RunnerDeployment]:
    """The deployments of the project at ``root``; for the work pool ``pool`` when given
    (its runs start in ``root``), else to be served."""
    root = str(Path(root).resolve())
    common = {"parameters": {"root": root}, "entrypoint_type": EntrypointType.MODULE_PATH,
              "paused": False}
    if pool:
        common.update(work_pool_name=pool, job_variables={"working_dir": root})
    return [
        retrain.to_deployment(
            name="retrain-nightly", **{**common, "parameters": {"root": root, "overrides": {}}},
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
                        "@champion); input_csv and output_csv are given per run."),
    ]


@contextmanager
def _background_server(echo: Callable[[str], None]) -> Iterator[str]:
    """Prefect's own ``prefect server start --background`` (with its scheduler, database in
    ``PREFECT_HOME``, port ``PREFECT_SERVER_API_PORT``) for as long as the block runs;
    ``prefect server stop`` after it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_PORT, temporary_settings

    port = PREFECT_SERVER_API_PORT.value()
    prefect = [sys.executable, "-m", "prefect", "server"]
    url = f"http://127.0.0.1:{port}/api"
    echo(f"no PREFECT_API_URL: starting a local Prefect server ({url}, UI on port {port})")
    subprocess.run([*prefect, "start", "--background", "--host", "127.0.0.1", "--port",
                    str(port)], check=True, capture_output=True, timeout=120)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            deadline = time.monotonic() + 120
            with get_client(sync_client=True) as client:
                while client.api_healthcheck() is not None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the Prefect server at {url} did not start")
                    time.sleep(0.5)
            os.environ["PREFECT_API_URL"] = url  # the runs' subprocesses inherit it
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        subprocess.run([*prefect, "stop"], check=False, capture_output=True, timeout=60)


def serve(root: Path | str, echo: Callable[[str], None] = print) -> None:
    """Serve the deployments (their schedules included) until Ctrl-C or SIGTERM; on the way
    out the runner pauses their schedules, and serving again resumes them. Scheduling needs a
    server that runs Prefect's scheduler, which the ephemeral API does not."""
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    # A background job of a non-interactive shell (`senti schedule &`) starts with SIGINT
    # ignored, and Python then leaves it ignored: make SIGINT stop serving in any case.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    built = deployments(root)
    with nullcontext() if PREFECT_API_URL.value() else _background_server(echo):
        prefect_serve(*built)


def deploy(root: Path | str, pool: str = POOL) -> list[str]:
    """Register the deployments on the server at ``PREFECT_API_URL`` for the work pool
    ``pool`` (create it first: ``prefect work-pool create --type process senti``)."""
    from prefect import deploy as prefect_deploy

    ids = prefect_deploy(*deployments(root, pool), work_pool_name=pool, build=False, push=False,
                         print_next_steps_message=False)
    return [str(i) for i in ids]
