"""The lineage ledger: an append-only, hash-chained log of every registered model version and
every promotion-gate decision and rollback, kept outside MLflow, in the project's default DVC
remote (through :mod:`senti.versioning`), so that whoever can change MLflow's records cannot
change the proof of what they were.

One JSON object per line, canonical (sorted keys, no spaces, UTF-8): ``seq`` (1, 2, ...),
``prev`` (the sha256 of the previous line's bytes; :data:`GENESIS` for the first) and the facts
of the entry (``kind``: ``register`` or ``decision``). An entry's hash is the sha256 of its
line, so changing or removing any line but the last breaks the ``prev`` of the line after it.
What the chain alone cannot show (its last line removed, or the whole file rewritten with new
hashes) is caught by comparing it with the registry (:func:`senti.lineage.verify_ledger`) and
with a head hash kept somewhere else. Nothing here imports MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from senti import versioning
from senti.io import sha256_bytes

GENESIS = "0" * 64
LEDGER_DIR = "senti-ledger"  # in the default DVC remote, beside DVC's files/md5/
RESERVED = ("seq", "prev")  # the chain's own keys; an entry's facts use any other


@dataclass(frozen=True)
class Entry:
    seq: int
    prev: str
    sha256: str  # of its line: what the next entry's ``prev`` must be
    facts: dict[str, Any]


@dataclass(frozen=True)
class Break:
    """A line whose ``seq``/``prev`` is not what the lines before it imply (or no entry)."""

    line: int
    expected: str
    found: str


@dataclass(frozen=True)
class Ledger:
    where: str  # its URL or path in the remote
    entries: list[Entry]
    breaks: list[Break]

    @property
    def head(self) -> Entry | None:
        return self.entries[-1] if self.entries else None


def location(model_name: str, registry_id: str) -> str:
    """The ledger of a registered model, relative to the remote's root. ``registry_id`` tells
    this registry's model apart from a same-named one in another project sharing the remote."""
    return f"{LEDGER_DIR}/{quote(model_name, safe='')}-{registry_id}.jsonl"


def encode(seq: int, prev: str, facts: dict[str, Any]) -> bytes:
    """One entry's line (without its newline)."""
    if clash := set(RESERVED) & set(facts):
        raise ValueError(f"ledger facts may not use the chain's keys {sorted(clash)}")
    return json.dumps({"seq": seq, "prev": prev, **facts}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _lines(data: bytes) -> list[bytes]:
    """The lines of a ledger file without their newlines (the last one's is optional)."""
    return data.removesuffix(b"\n").split(b"\n") if data else []


def parse(where: str, data: bytes) -> Ledger:
    """The entries of a ledger file and every break in its chain, by line number."""
    entries, breaks, prev = [], [], GENESIS
    for number, line in enumerate(_lines(data), 1):
        expected = f"seq {number}, prev {prev}"
        try:
            fields = json.loads(line)
            seq, link = fields.pop("seq"), fields.pop("prev")
        except (ValueError, KeyError, AttributeError):
            breaks.append(Break(number, expected, "no ledger entry"))
        else:
            if (seq, link) != (number, prev):
                breaks.append(Break(number, expected, f"seq {seq}, prev {link}"))
            entries.append(Entry(seq, link, sha256_bytes(line), fields))
        prev = sha256_bytes(line)
    return Ledger(where, entries, breaks)


def read(root: Path | str, relpath: str) -> Ledger | None:
    """The ledger at ``relpath`` in the project's default DVC remote; None when there is none
    yet. :class:`senti.versioning.NoRemote` when the project has no default remote."""
    where, data = versioning.read_remote_file(root, relpath)
    return None if data is None else parse(where, data)


def append(root: Path | str, relpath: str, facts: dict[str, Any]) -> Entry:
    """Add one entry after the last line of the ledger (a new ledger starts at
    :data:`GENESIS`). The file is rewritten whole: two writers at the same moment can lose one
    entry, which :func:`senti.lineage.verify_ledger` then reports as missing."""
    _, data = versioning.read_remote_file(root, relpath)
    lines = _lines(data or b"")
    prev = sha256_bytes(lines[-1]) if lines else GENESIS
    line = encode(len(lines) + 1, prev, facts)
    versioning.write_remote_file(root, relpath, b"".join(x + b"\n" for x in [*lines, line]))
    return Entry(len(lines) + 1, prev, sha256_bytes(line), facts)
