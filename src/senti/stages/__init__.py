"""The DVC pipeline stages, one module each, named as in ``dvc.yaml``.

A stage module only does I/O: it reads params.yaml and its inputs, calls the library, and
writes its outputs where params.yaml's ``paths`` say. ``dvc.yaml`` runs it as
``python -m senti.stages.<name>`` and lists as dependencies exactly the ``senti`` modules it
imports, directly or not (tests/code/test_architecture.py checks this), so a change to a
module reruns precisely the stages that execute it.

Stages that read one split of the tokens file read it :func:`split_batches`-wise.

A stage started by ``senti retrain`` knows the pid of the run that owns it
(``SENTI_OWNER_PID``): if that process dies (``kill -9``), the stage exits within a second
instead of writing outputs under the next run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from senti.config import STATE_DIR, ParamsError

if TYPE_CHECKING:
    import pandas as pd

OWNER_ENV = "SENTI_OWNER_PID"
# the one-line cause of the last stage failure, for the command that ran the stage
ERROR_FILE = Path(STATE_DIR) / "stage-error.txt"
BATCH_ROWS = 65_536  # rows of a parquet file decoded at a time (:func:`split_batches`)


def split_batches(path: Path, split: str, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The rows of ``path`` (a parquet file with a ``split`` column) that belong to
    ``split``, in file order, ``columns`` only, :data:`BATCH_ROWS` rows of the file at a
    time: never the whole file in memory, and only the split's rows converted to Python."""
    import pyarrow.compute as pc  # here: the stages that read no split (ingest) stay light
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS,
                                                   columns=["split", *columns]):
        yield batch.filter(pc.equal(batch.column("split"), split)).select(columns).to_pandas()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _exit_with_owner() -> None:
    owner = os.environ.get(OWNER_ENV, "")
    if not owner.isdigit():
        return

    def watch(pid: int) -> None:
        while _alive(pid):
            time.sleep(0.5)
        os._exit(143)  # no cleanup handlers: the owner's successor restores the workspace

    threading.Thread(target=watch, args=(int(owner),), daemon=True,
                     name="senti-owner-watch").start()


_exit_with_owner()


def main(run: Callable[[Path], Any]) -> None:
    """Entry point of ``python -m senti.stages.<name>``: run the stage in the working
    directory; on a known failure print one line naming the stage and the cause, exit 1."""
    spec = getattr(sys.modules.get(run.__module__), "__spec__", None)
    name = (spec.name if spec else run.__module__).rpartition(".")[2]
    try:
        run(Path("."))
    except (ParamsError, OSError, ValueError, LookupError) as exc:
        cause = f"stage {name} failed: {exc}"
        print(cause, file=sys.stderr)
        ERROR_FILE.parent.mkdir(mode=0o700, exist_ok=True)
        ERROR_FILE.write_text(cause.splitlines()[0] + "\n", encoding="utf-8")
        raise SystemExit(1) from None
