"""Batch prediction: a CSV of texts in, the same rows with predictions and model version out.

The input is read and written in chunks, so files larger than memory work; ``predict`` is
any callable taking a DataFrame with a ``text`` column and raising ValueError for input it
refuses (a registered version's, see :func:`senti.registry.predict_csv`, or
:meth:`senti.serve.Predictor.predict` wrapped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

CHUNK_ROWS = 10_000
VERSION_COLUMN = "model_version"


class BatchInputError(ValueError):
    """The input CSV cannot be classified; the message names the rows and the problem."""


def predict_csv(predict: Callable[[pd.DataFrame], pd.DataFrame], input_csv: Path | str,
                output_csv: Path | str, model_version: str, text_column: str = "text",
                chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write every input row (all its columns) plus ``label``, ``probability``,
    ``prob_<label>`` and ``model_version``; return row count and throughput.

    Cells are read as strings (empty cells stay null and are reported, not classified).
    """
    output_csv = Path(output_csv)
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    rows, started = 0, time.perf_counter()
    try:
        reader = pd.read_csv(input_csv, dtype=str, chunksize=chunk_rows)
        for chunk in reader:
            if text_column not in chunk.columns:
                raise BatchInputError(f"{input_csv}: no column {text_column!r} "
                                      f"(columns: {list(chunk.columns)})")
            try:
                predicted = predict(pd.DataFrame({"text": chunk[text_column].tolist()}))
            except ValueError as exc:  # names rows within this chunk
                raise BatchInputError(f"{input_csv} rows {rows}..{rows + len(chunk) - 1} "
                                      f"(row numbers below count from {rows}): {exc}") from exc
            out = pd.concat([chunk.reset_index(drop=True),
                             predicted.reset_index(drop=True)], axis=1)
            out[VERSION_COLUMN] = model_version
            out.to_csv(output_csv, mode="w" if rows == 0 else "a", header=rows == 0,
                       index=False)
            rows += len(chunk)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"{input_csv}: not a readable UTF-8 CSV ({exc})") from exc
    seconds = time.perf_counter() - started
    if rows == 0:
        raise BatchInputError(f"{input_csv}: no rows to classify")
    return {"rows": rows, "seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 1) if seconds else None,
            "model_version": model_version, "output": str(output_csv)}

