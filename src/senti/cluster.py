"""Parallel execution of chunked work: in this process, in a local process pool, or on Dask.

dask and distributed are imported only here. Batch prediction (:mod:`senti.batch`) and the
segment stage cut their input into chunks and run one task per chunk through an
:class:`~concurrent.futures.Executor` from this module:

* :func:`inline` runs each task in the calling thread (the single-process path);
* :func:`processes` is a local process pool;
* :func:`dask` is a ``distributed`` client: a ``LocalCluster`` of ``dask.workers`` processes
  with ``dask.threads_per_worker`` threads each (BLAS and TensorFlow's inter-op pool limited
  to as many; its intra-op pool keeps its default, as in this process), or
  the running cluster at ``dask.scheduler`` / ``DASK_SCHEDULER_ADDRESS``, reached within
  ``dask.connect_timeout`` seconds or refused with one line naming the address.
  ``distributed`` is imported only when a Dask engine is asked for.

:func:`run_chunks` keeps at most two chunks per task slot in flight, so memory does not grow
with the input, and turns a worker that died into a :class:`ChunkError` naming the chunk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    CancelledError,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from senti.config import DaskParams, check_scheduler_address

if TYPE_CHECKING:
    from distributed import Client

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# Thread pools of the numeric libraries a task may use, sized to the worker's threads. Not
# TensorFlow's intra-op pool: its size changes how a matrix product is split, so the last bit
# of a float32 probability (6e-8 measured) would differ from the single-process path's.
_THREAD_ENV = ("TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "OPENBLAS_NUM_THREADS")
T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or started; the message names the address."""


class ChunkError(RuntimeError):
    """A chunk could not be run: the worker running it died (every retry included)."""


@dataclass(frozen=True)
class Engine:
    """Where chunks run: an executor, how many tasks it runs at once, and its description."""

    executor: Executor
    slots: int
    name: str


class _Inline(Executor):
    """Runs each task at once, in the calling thread: a future already done."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # re-raised by result(), as a pool's future does
            future.set_exception(exc)
        return future


@contextmanager
def inline() -> Iterator[Engine]:
    """The single-process path: every chunk in this thread."""
    yield Engine(_Inline(), 1, "this process")


@contextmanager
def processes(workers: int) -> Iterator[Engine]:
    """A local pool of ``workers`` processes (0 = all cores)."""
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        yield Engine(pool, workers, f"{workers} local processes")


def scheduler_address(params: DaskParams) -> str | None:
    """The running scheduler to use: ``DASK_SCHEDULER_ADDRESS`` if set, else
    ``dask.scheduler``; None = start a local cluster."""
    if env := os.environ.get(SCHEDULER_ENV, "").strip():
        try:
            return check_scheduler_address(env, SCHEDULER_ENV)
        except ValueError as exc:
            raise ClusterError(str(exc)) from None
    return params.scheduler or None


def local_workers(params: DaskParams) -> int:
    """Worker processes of a local cluster (``dask.workers``, 0 = all cores)."""
    return params.workers or os.cpu_count() or 1


@contextmanager
def dask(params: DaskParams) -> Iterator[Engine]:
    """An executor on Dask: the running cluster at :func:`scheduler_address`, else a new
    ``LocalCluster`` (worker processes, no dashboard) that is shut down afterwards."""
    from distributed import Client, LocalCluster

    address = scheduler_address(params)
    if address is None:
        threads = str(params.threads_per_worker)
        try:
            cluster = LocalCluster(n_workers=local_workers(params),
                                   threads_per_worker=params.threads_per_worker,
                                   processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR,
                                   env=dict.fromkeys(_THREAD_ENV, threads))
        except Exception as exc:
            raise ClusterError(f"cannot start a local Dask cluster: {exc}") from exc
        with cluster, Client(cluster) as client:
            yield _engine(client, "a local Dask cluster")
        return
    try:
        client = Client(address, timeout=params.connect_timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        source = SCHEDULER_ENV if os.environ.get(SCHEDULER_ENV, "").strip() else "dask.scheduler"
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({source}) within "
                           f"{params.connect_timeout:g}s: {type(exc).__name__}") from None
    with client:
        yield _engine(client, f"the Dask cluster at {address}")


def _engine(client: Client, where: str) -> Engine:
    threads = client.nthreads()
    slots = sum(threads.values())
    if not slots:
        raise ClusterError(f"{where} has no workers")
    return Engine(client.get_executor(pure=False), slots,
                  f"{where} ({len(threads)} workers, {slots} threads)")


def run_chunks(engine: Engine, task: Callable[..., T], chunks: Iterable[tuple[int, tuple]],
               ordered: bool = False) -> Iterator[tuple[int, T]]:
    """``(index, task(*args))`` for each ``(index, args)`` of ``chunks``, with at most two
    chunks per slot of ``engine`` submitted and not yet returned; as they finish (of those
    finished together, the successes first, then by index: the same order on every run of the
    in-process engine), or in the order of ``chunks`` when ``ordered``. The first chunk that
    fails stops the run (chunks not yet returned are cancelled): its exception is raised, a
    dead worker as :class:`ChunkError`."""
    pending: dict[Future, int] = {}
    order: list[Future] = []
    source = iter(chunks)
    in_flight = 2 * engine.slots
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < in_flight:
                try:
                    index, args = next(source)
                except StopIteration:
                    exhausted = True
                    break
                future = engine.executor.submit(task, *args)
                pending[future] = index
                order.append(future)
            if not pending:
                return
            if ordered:
                done = [order[0]]
                wait(done)
            else:  # finished together: the successes first (all kept), then by index
                done = sorted(wait(pending, return_when=FIRST_COMPLETED).done,
                              key=lambda f: (_failed(f), pending[f]))
            for future in done:
                index = pending.pop(future)
                order.remove(future)
                yield index, _result(future, index)
    finally:
        for future in pending:
            future.cancel()


def _failed(future: Future) -> bool:
    """Whether a finished future holds an exception (or was cancelled)."""
    return future.cancelled() or future.exception() is not None


def _result(future: Future[T], index: int) -> T:
    try:
        return future.result()
    except CancelledError:  # by the cluster (e.g. its scheduler restarted), not by us
        raise ChunkError(f"chunk {index}: cancelled by the cluster") from None
    except BrokenProcessPool as exc:
        raise ChunkError(f"chunk {index}: a worker process died ({exc})") from None
    except Exception as exc:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            raise ChunkError(f"chunk {index}: the Dask worker running it died, on every "
                             f"try ({exc})") from None
        raise
