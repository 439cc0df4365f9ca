"""The DVC pipeline stages, one module each, named as in ``dvc.yaml``.

A stage module only does I/O: it reads params.yaml and its inputs, calls the library, and
writes its outputs where params.yaml's ``paths`` say. ``dvc.yaml`` runs it as
``python -m senti.stages.<name>`` and lists as dependencies exactly the ``senti`` modules it
imports, directly or not (tests/code/test_stage_deps.py checks this), so a change to a
module reruns precisely the stages that execute it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from senti.config import ParamsError


def main(run: Callable[[Path], Any]) -> None:
    """Entry point of ``python -m senti.stages.<name>``: run the stage in the working
    directory; on a known failure print one line naming the stage and the cause, exit 1."""
    name = run.__module__.rpartition(".")[2]
    try:
        run(Path("."))
    except (ParamsError, OSError, ValueError, LookupError) as exc:
        print(f"stage {name} failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
