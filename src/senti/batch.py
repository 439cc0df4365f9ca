"""Batch prediction: a CSV of texts in, the same rows with predictions and model version out.

The input is read and written in chunks, so files larger than memory work; ``predict`` is
any callable taking a DataFrame with a ``text`` column and raising ValueError for input it
refuses (a registered version's, see :func:`senti.registry.predict_csv`, or
:meth:`senti.serve.Predictor.predict` wrapped). Input and output are local files of the
project (:func:`project_file`); the output appears only once every row is classified.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from senti.config import Layout, Paths

CHUNK_ROWS = 10_000
VERSION_COLUMN = "model_version"
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # s3://, http://, file://... (or as a Path)


class BatchInputError(ValueError):
    """The input CSV cannot be classified; the message names the rows and the problem."""


def project_file(path: Path | str, layout: Layout, folders: Sequence[str],
                 output: bool = False) -> Path:
    """``path`` (a relative one: from the project root) with symlinks resolved, if it lies
    under one of the project's ``folders`` (``serve.batch_dirs``). An input must be a file;
    an output must not be a directory nor a pipeline artifact (a ``paths`` entry or inside
    one). URLs are refused: batch prediction reads and writes project files only."""
    role = "output" if output else "input"
    allowed = ", ".join(f"{folder}/" for folder in folders)
    if URL.match(str(path)):
        raise BatchInputError(f"{role} {path}: a URL; batch prediction reads and writes files "
                              f"under {allowed} of the project only (serve.batch_dirs)")
    resolved = (layout.root / path).resolve()
    if not any(resolved.is_relative_to((layout.root / folder).resolve()) for folder in folders):
        raise BatchInputError(f"{role} {path} is outside the project's batch folders "
                              f"({allowed} in {layout.root}; serve.batch_dirs)")
    if not output:
        if not resolved.is_file():
            raise BatchInputError(f"input {path}: no such file")
        return resolved
    if resolved.is_dir():
        raise BatchInputError(f"output {path} is a directory: name a file")
    for key in Paths.model_fields:
        if resolved.is_relative_to(getattr(layout, key).resolve()):
            raise BatchInputError(f"output {path} would overwrite a pipeline artifact "
                                  f"(paths.{key}): name another file")
    return resolved


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved, or a hard link."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def predict_csv(predict: Callable[[pd.DataFrame], pd.DataFrame], input_csv: Path | str,
                output_csv: Path | str, model_version: str, text_column: str = "text",
                chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write every input row (all its columns) plus the prediction columns (``label``,
    ``probability``, ``prob_<label>``, ``known_share``, ``flag``) and ``model_version``;
    return row count and throughput.

    Cells are read as strings (empty cells stay null and are reported, not classified). The
    output is written to a temporary file beside it and renamed into place when every row is
    done, so a refused or failed run leaves an existing output (and every other file) as it
    was. The input and the output must be different files.
    """
    input_csv, output_csv = Path(input_csv), Path(output_csv)
    if _same_file(input_csv, output_csv):
        raise BatchInputError(f"input and output are the same file ({input_csv}): write the "
                              "predictions to another file")
    folder = next(p for p in output_csv.absolute().parents if p.exists())  # made on success
    partial = folder / f".{output_csv.name}.{uuid.uuid4().hex[:12]}.tmp"
    rows, started = 0, time.perf_counter()
    try:
        with partial.open("x", encoding="utf-8", newline="") as out_file:
            reader = pd.read_csv(input_csv, dtype=str, chunksize=chunk_rows)
            for chunk in reader:
                if text_column not in chunk.columns:
                    raise BatchInputError(f"{input_csv}: no column {text_column!r} "
                                          f"(columns: {list(chunk.columns)})")
                try:
                    predicted = predict(pd.DataFrame({"text": chunk[text_column].tolist()}))
                except ValueError as exc:  # names rows within this chunk
                    raise BatchInputError(f"{input_csv} rows {rows}..{rows + len(chunk) - 1} "
                                          f"(row numbers below count from {rows}): {exc}") \
                        from exc
                out = pd.concat([chunk.reset_index(drop=True),
                                 predicted.reset_index(drop=True)], axis=1)
                out[VERSION_COLUMN] = model_version
                out.to_csv(out_file, header=rows == 0, index=False)
                rows += len(chunk)
        if rows == 0:
            raise BatchInputError(f"{input_csv}: no rows to classify")
        output_csv.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, output_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"{input_csv}: not a readable UTF-8 CSV ({exc})") from exc
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None,
            "model_version": model_version, "output": str(output_csv)}
