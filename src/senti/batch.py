"""Batch prediction: a CSV of texts in, the same rows with predictions and model version out.

The input is read in chunks of ``serve.batch_chunk_rows`` rows, each predicted as one task
(:func:`predict_chunk`) on an engine of :mod:`senti.cluster`: in this process or on Dask,
with the same output byte for byte. Each finished chunk is written atomically to a work
directory (``.senti/batch/<model key>/``) under the hash of its content, so a run that was
killed or failed (a dead worker, a bad row) continues where it stopped: a rerun skips the
chunks already done, and only the changed chunks of a corrected input are predicted again.
The output appears, whole, only once every row is classified; its chunks are then removed,
by the last to finish of the jobs running on the same work directory (each holds a shared
lock on it while it runs, so no job loses a chunk that it counts done).
Input and output are local files of the project (:func:`project_file`).

A model is given as a :class:`ModelSource`: something a worker process can load itself
(:class:`senti.registry.RegisteredModel`), loaded once per process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Protocol

import pandas as pd

from senti import cluster
from senti.config import Layout, Paths
from senti.io import MAX_ATOMIC_NAME_BYTES, atomic_path, atomic_write_bytes, real_path

VERSION_COLUMN = "model_version"
# What :func:`predict_chunk` adds to each row (besides ``prob_<label>``): an input that has
# one of these columns already is refused, its output header would name a column twice.
PREDICTION_COLUMNS = ("label", "probability", "known_share", "flag", VERSION_COLUMN)
PROBABILITY_PREFIX = "prob_"
FINISHED = ".finished"  # a job that wrote its output lists its chunks in <id>.finished
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://, http://, file://... (or as a Path)


Predict = Callable[[pd.DataFrame], pd.DataFrame]


class BatchInputError(ValueError):
    """The input CSV cannot be classified; the message names the rows and the problem."""


class BatchError(RuntimeError):
    """A chunk could not be predicted; the finished chunks are kept for a rerun."""


class ModelSource(Protocol):
    """A model that any worker process can load: picklable and hashable, its ``repr``
    identifying the model and its settings (it keys the finished chunks). ``load`` returns a
    ``predict`` taking a DataFrame with a ``text`` column, raising ValueError on input it
    refuses; ``version`` is written in every output row."""

    version: str

    def load(self) -> Predict: ...


def project_file(path: Path | str, layout: Layout, folders: Sequence[str],
                 output: bool = False) -> Path:
    """``path`` (a relative one: from the project root) with symlinks resolved, if it lies
    under one of the project's ``folders`` (``serve.batch_dirs``). An input must be a file;
    an output must not be a directory, a pipeline artifact (a ``paths`` entry or inside
    one), a hidden file, under a file, nor have a name too long to write atomically. URLs
    are refused: batch prediction reads and writes project files only."""
    role = "output" if output else "input"
    allowed = ", ".join(f"{folder}/" for folder in folders)
    if URL.match(str(path)):
        raise BatchInputError(f"{role} {path}: a URL; batch prediction reads and writes files "
                              f"under {allowed} of the project only (serve.batch_dirs)")
    resolved = real_path(layout.root / path)
    if resolved.is_symlink():  # realpath leaves a symlink loop in place
        raise BatchInputError(f"{role} {path}: a symlink loop")
    if not any(resolved.is_relative_to(real_path(layout.root / folder)) for folder in folders):
        raise BatchInputError(f"{role} {path} is outside the project's batch folders "
                              f"({allowed} in {layout.root}; serve.batch_dirs)")
    if not output:
        if not resolved.is_file():
            raise BatchInputError(f"input {path}: no such file")
        return resolved
    if resolved.is_dir():
        raise BatchInputError(f"output {path} is a directory: name a file")
    if blocked := next((p for p in resolved.parents if p.exists() and not p.is_dir()), None):
        raise BatchInputError(f"output {path}: {blocked} is a file, not a folder")
    if resolved.name.startswith("."):
        raise BatchInputError(f"output {path}: a hidden file (tools keep their own there, "
                              "like DVC's .gitignore): name another file")
    if len(resolved.name.encode()) > MAX_ATOMIC_NAME_BYTES:
        raise BatchInputError(f"output {path}: a file name of {len(resolved.name.encode())} "
                              f"bytes; the limit is {MAX_ATOMIC_NAME_BYTES}")
    for key in Paths.model_fields:
        if resolved.is_relative_to(real_path(getattr(layout, key))):
            raise BatchInputError(f"output {path} would overwrite a pipeline artifact "
                                  f"(paths.{key}): name another file")
    return resolved


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or a hard link."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


_loaded: tuple[ModelSource, Predict] | None = None  # this process's model, loaded once


def _predict_fn(source: ModelSource) -> Predict:
    global _loaded
    if _loaded is None or _loaded[0] != source:
        _loaded = None  # the previous model is released before the next one loads
        _loaded = (source, source.load())
    return _loaded[1]


def predict_chunk(source: ModelSource, chunk: pd.DataFrame, text_column: str,
                  first_row: int) -> tuple[str, str]:
    """One task: the chunk's rows (all their columns) plus ``label``, ``probability``,
    ``prob_<label>``, ``known_share``, ``flag`` and ``model_version``, as the CSV header
    line and the CSV rows. Refused rows raise :class:`BatchInputError` naming them, counted
    from ``first_row``."""
    try:
        predicted = _predict_fn(source)(pd.DataFrame({"text": chunk[text_column].tolist()}))
    except ValueError as exc:  # names rows within this chunk
        raise BatchInputError(f"rows {first_row}..{first_row + len(chunk) - 1} (row numbers "
                              f"below count from {first_row}): {exc}") from exc
    out = pd.concat([chunk.reset_index(drop=True), predicted.reset_index(drop=True)], axis=1)
    out[VERSION_COLUMN] = source.version
    return out.iloc[:0].to_csv(index=False), out.to_csv(header=False, index=False)


def _clashing(columns: Sequence[str]) -> list[str]:
    """The input columns that a prediction column would repeat in the output."""
    return [name for name in columns
            if name in PREDICTION_COLUMNS or name.startswith(PROBABILITY_PREFIX)]


def _chunks(input_csv: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The input's rows, ``chunk_rows`` at a time, every cell the string it holds: only an
    empty cell is null (``NA``, ``null``, ``None``... are texts like any other)."""
    yield from pd.read_csv(input_csv, dtype=str, keep_default_na=False, na_values=[""],
                           chunksize=chunk_rows)


def _digest(chunk: pd.DataFrame) -> str:
    return hashlib.sha256(chunk.to_csv(index=False).encode("utf-8")).hexdigest()[:32]


def work_dir(work_root: Path, source: ModelSource, text_column: str) -> Path:
    """Where the finished chunks of ``source`` (and ``text_column``) are kept."""
    key = json.dumps({"model": repr(source), "text_column": text_column})
    return work_root / hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def predict_csv(source: ModelSource, input_csv: Path | str, output_csv: Path | str,
                work_root: Path | str, engine: cluster.Engine | None = None,
                text_column: str = "text", chunk_rows: int = 10_000,
                progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Write every input row (all its columns) plus the prediction columns and
    ``model_version`` to ``output_csv``; return row and chunk counts and throughput.

    Chunks run on ``engine`` (default: this process); the ones finished by an earlier,
    unfinished run are skipped. ``progress(done, total)`` is called with chunk counts once
    the input is read and after each chunk. The output is written to a temporary file beside
    it and renamed into place when every row is done, so a refused or failed run leaves an
    existing output as it was. The input and the output must be different files.
    """
    input_csv, output_csv = Path(input_csv), Path(output_csv)
    where = real_path(output_csv)  # where the output goes: it must still go there at the end
    if _same_file(input_csv, output_csv):
        raise BatchInputError(f"input and output are the same file ({input_csv}): write the "
                              "predictions to another file")
    started = time.perf_counter()
    try:
        columns = pd.read_csv(input_csv, dtype=str, nrows=0).columns
        if text_column not in columns:
            raise BatchInputError(f"{input_csv}: no column {text_column!r} "
                                  f"(columns: {list(columns)})")
        if clashing := _clashing(columns):
            raise BatchInputError(f"{input_csv}: already has the prediction columns "
                                  f"{clashing} (is it an earlier output?): rename them to "
                                  "classify it")
        sizes, digests = [], []
        for chunk in _chunks(input_csv, chunk_rows):
            sizes.append(len(chunk))
            digests.append(_digest(chunk))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"{input_csv}: not a readable UTF-8 CSV ({exc})") from exc
    if not sum(sizes):
        raise BatchInputError(f"{input_csv}: no rows to classify")
    work = work_dir(Path(work_root), source, text_column)
    with _running(work):
        resumed = _predict_missing(source, input_csv, work, digests, text_column, chunk_rows,
                                   engine, progress)
        _assemble(work, digests, output_csv, where)
        atomic_write_bytes(work / f"{uuid.uuid4().hex}{FINISHED}",
                           "\n".join(sorted(set(digests))).encode("utf-8"))
    _remove_finished(work)
    rows = sum(sizes)
    seconds = time.perf_counter() - started
    return {"rows": rows, "chunks": len(digests), "resumed_chunks": resumed,
            "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None,
            "model_version": source.version, "output": str(output_csv)}


def _predict_missing(source: ModelSource, input_csv: Path, work: Path, digests: Sequence[str],
                     text_column: str, chunk_rows: int, engine: cluster.Engine | None,
                     progress: Callable[[int, int], None]) -> int:
    """Predict the chunks of ``input_csv`` that ``work`` does not hold yet, writing each
    there as it finishes; return how many it held already."""
    done = {i for i, d in enumerate(digests) if (work / f"{d}.csv").is_file()}
    resumed = len(done)
    progress(len(done), len(digests))
    todo = ((i, (source, chunk, text_column, i * chunk_rows))
            for i, chunk in _unchanged(input_csv, chunk_rows, digests) if i not in done)
    work.mkdir(mode=0o700, exist_ok=True)
    engine_cm: AbstractContextManager[cluster.Engine] = \
        cluster.inline() if engine is None else nullcontext(engine)
    with engine_cm as running:
        try:
            for index, (header, body) in cluster.run_chunks(running, predict_chunk, todo):
                atomic_write_bytes(work / f"{digests[index]}.head", header.encode("utf-8"))
                atomic_write_bytes(work / f"{digests[index]}.csv", body.encode("utf-8"))
                done.add(index)
                progress(len(done), len(digests))
        except BatchInputError as exc:
            raise BatchInputError(f"{input_csv}: {exc}{_kept(done, digests, work)}: run the "
                                  "same command again once the input is corrected or "
                                  "complete: only the chunks not yet done are predicted"
                                  ) from exc
        except cluster.ChunkError as exc:
            raise BatchError(f"{input_csv}: {exc}{_kept(done, digests, work)}: run the same "
                             "command again to finish the rest") from exc
    return resumed


def _lock_file(work: Path) -> int:
    """An open descriptor of ``work``'s lock file, kept beside it (never removed: a lock
    file removed while a job waits on it would let two jobs lock two files)."""
    work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(work.with_name(f"{work.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def _running(work: Path) -> Iterator[None]:
    """Hold a shared ``flock`` on ``work`` for a job: while any job holds one, no chunk is
    removed (:func:`_remove_finished`), so none that a job counts done can vanish. The
    kernel releases it when the job's process dies."""
    fd = _lock_file(work)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _remove_finished(work: Path) -> None:
    """Remove the chunks listed by the finished jobs (their ``*.finished`` files), and
    ``work`` once empty, unless another job is running: the last one to finish does."""
    fd = _lock_file(work)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        for listing in work.glob(f"*{FINISHED}"):
            for digest in listing.read_text(encoding="utf-8").split():
                (work / f"{digest}.csv").unlink(missing_ok=True)
                (work / f"{digest}.head").unlink(missing_ok=True)
            listing.unlink()
        with suppress(OSError):  # kept while chunks of an unfinished job are in it
            work.rmdir()
    finally:
        os.close(fd)


def _unchanged(input_csv: Path, chunk_rows: int,
               digests: Sequence[str]) -> Iterator[tuple[int, pd.DataFrame]]:
    """The input's chunks again, each checked against the digest of the first reading: an
    input that was edited, grew or shrank since is refused."""
    chunks = _chunks(input_csv, chunk_rows)
    for index, digest in enumerate(digests):
        chunk = next(chunks, None)
        if chunk is None or _digest(chunk) != digest:
            raise _changed(index)
        yield index, chunk
    if next(chunks, None) is not None:
        raise _changed(len(digests))


def _changed(chunk: int) -> BatchInputError:
    return BatchInputError(f"changed while it was being classified (from chunk {chunk} on)")


def _kept(done: set[int], digests: Sequence[str], work: Path) -> str:
    return f"; {len(done)} of {len(digests)} chunks are done and kept in {work}"


def _assemble(work: Path, digests: Sequence[str], output_csv: Path, where: Path) -> None:
    """The header and every chunk's rows, in input order, written atomically to
    ``output_csv`` (:func:`~senti.io.atomic_path`), if it still resolves to ``where``, as when
    the job was checked: a folder on its path swapped for a symlink meanwhile (into a
    pipeline artifact, say) is refused, and nothing is replaced."""
    with atomic_path(output_csv) as partial:
        with partial.open("xb") as out:
            out.write((work / f"{digests[0]}.head").read_bytes())
            for digest in digests:
                with (work / f"{digest}.csv").open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
        if (now := real_path(output_csv)) != where:
            raise BatchInputError(f"output {output_csv} now leads to {now}: "
                                  "a folder on its path changed while the job ran; nothing "
                                  f"was written (the chunks are kept in {work})")
