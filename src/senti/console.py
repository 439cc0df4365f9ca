"""The terminal as a user interface, for the ``senti`` console script.

The terminal gets progress lines, a short summary, and on failure one line naming the cause
and the log file. Everything else goes to a log file under ``.senti/logs/``: library
warnings, TensorFlow/absl/CUDA start-up lines, DVC's and Prefect's logs, whatever stage
processes write to stderr, and every traceback. ``senti --verbose`` (or ``SENTI_VERBOSE=1``)
keeps all of it on the terminal instead.

:func:`start` redirects the process's stderr file descriptor, so child processes (DVC's
stage commands, servers) inherit the log too; only the console script calls it, never a
library user or a test runner.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import typer

from senti.config import STATE_DIR

# every tool's telemetry off unless the user set it (MLflow honours only "true" here)
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                 "GX_ANALYTICS_ENABLED": "False", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
PROGRESS_LOGGER = "senti.progress"  # its records reach the terminal (and the log)
LOGS_KEPT = 30

_terminal: TextIO | None = None  # the real stderr, once stderr goes to the log
_log: Path | None = None


def _log_dir() -> Path:
    for directory in (Path(STATE_DIR) / "logs",
                      Path.home() / ".local" / "state" / "senti" / "logs"):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                return directory
        except OSError:
            continue
    raise OSError("no writable directory for the log (.senti/logs or ~/.local/state/senti)")


def start(argv: list[str]) -> None:
    """Set up the terminal and the log for one command (``argv`` without the program)."""
    global _terminal, _log
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress.addHandler(handler)
    verbose = "--verbose" in argv or os.environ.get("SENTI_VERBOSE", "") not in ("", "0")
    if verbose or not argv or "--help" in argv:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        return
    directory = _log_dir()
    words = [a for a in argv if re.fullmatch(r"[a-z][a-z-]*", a)][:2]  # e.g. lineage-verify
    command = "-".join(words) or "senti"
    _log = directory / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{command}.log"
    fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stderr.flush()
    _terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Prefect API call
    logging.getLogger("senti").info("senti %s", " ".join(argv))
    for old in sorted(directory.glob("*.log"))[:-LOGS_KEPT]:
        old.unlink(missing_ok=True)


def error(message: str, exc: BaseException | None = None) -> None:
    """The failure line on the terminal (pointing at the log); in the log, the same line
    and the traceback of ``exc``."""
    if exc is not None or _log:  # with --verbose, only a traceback adds to the red line
        logging.getLogger("senti").error("%s", message, exc_info=exc)
    where = f" (full log: {_log})" if _log else ""
    typer.secho(f"{message}{where}", fg=typer.colors.RED, file=_terminal or sys.stderr)
