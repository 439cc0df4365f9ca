"""Small file helpers shared by every stage: atomic writes, bounded reads of user files,
their text encoding, and content hashes."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

UTF8 = "UTF-8"
# What a CSV may arrive in besides UTF-8 (spreadsheet exports on Chinese Windows): decoded,
# and named, by :func:`decode_text`.
_BOMS = ((codecs.BOM_UTF8, "UTF-8 with BOM", "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"), (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"))
GB18030 = "GB18030"  # superset of GBK and GB2312


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def real_path(path: Path | str) -> Path:
    """``path`` with its symlinks resolved, a symlink loop left in place: using it then fails
    as for any unreadable file (Python 3.11's ``Path.resolve`` raises RuntimeError)."""
    return Path(os.path.realpath(path))


_SIBLING_TAGS = ("tmp", "old")
_TOKEN_CHARS = 16  # secrets.token_hex(8)
# The longest file name (bytes) that atomic_path can write: its temporary sibling's name
# (".NAME.tmp.TOKEN") must fit in the 255 bytes of a name.
MAX_ATOMIC_NAME_BYTES = 255 - len("..tmp.") - _TOKEN_CHARS


def _sibling(path: Path, tag: str) -> Path:
    """An unused hidden name next to ``path`` (created by the caller, with the usual modes)."""
    return path.with_name(f".{path.name}.{tag}.{secrets.token_hex(_TOKEN_CHARS // 2)}")


def stale_siblings(path: Path | str) -> list[Path]:
    """The temporary siblings of ``path`` that :func:`atomic_path` or :func:`atomic_dir` left
    when their process was killed (``kill -9``, power loss) before it could remove them."""
    path = Path(path)
    prefixes = tuple(f".{path.name}.{tag}." for tag in _SIBLING_TAGS)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes)
                  and len(token := p.name.rsplit(".", 1)[1]) == _TOKEN_CHARS
                  and all(c in "0123456789abcdef" for c in token))


@contextmanager
def _parent_made(path: Path) -> Iterator[None]:
    """Create the missing folders above ``path``; when the block raises, remove those of them
    still empty, so a failed (refused) write leaves no trace."""
    made = list(itertools.takewhile(lambda folder: not folder.exists(), path.parents))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _flush(path: Path) -> None:
    """Flush ``path`` (a file's data, or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary file name next to ``path`` to write to; moved onto ``path`` when the block
    ends without an error, removed otherwise (with the folders made for it). ``path`` is
    never half-written, even after a power loss: the file is flushed to the disk before the
    rename, and the folder's entry after it (else the new name can survive on an empty
    file)."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    with _parent_made(path):
        try:
            yield tmp
            _flush(tmp)
            os.replace(tmp, path)
            _flush(path.parent)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """A new empty directory next to ``path`` to build in; it replaces ``path`` when the block
    ends without an error and is removed otherwise (with the folders made for it). The old
    directory is renamed away before the new one is renamed in, so ``path`` is either the old
    or the new tree, never a mix."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    with _parent_made(path):
        tmp.mkdir()
        try:
            yield tmp
            old = _sibling(path, "old")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path | str, payload: Any) -> None:
    """Deterministic JSON (sorted keys, UTF-8 kept readable) written atomically."""
    text = json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_bounded(path: Path | str, max_bytes: int, name: str) -> bytes:
    """The content of the regular file ``path``, refused (:class:`ValueError` starting with
    ``name``) when it is missing, not a regular file, unreadable or over ``max_bytes``
    (the ``data.max_source_bytes`` bound). Nothing is read from a file that is refused."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{name}: cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{name}: not a regular file")
    if info.st_size > max_bytes:
        raise ValueError(f"{name}: {info.st_size:,} bytes, above the bound "
                         f"data.max_source_bytes={max_bytes:,}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read it: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{name}: grew above the bound data.max_source_bytes={max_bytes:,} "
                         "while being read")
    return data


def decode_text(data: bytes, name: str) -> tuple[str, str]:
    """``data`` as text, and the encoding it was in: UTF-8 (with or without BOM), UTF-16 with
    a BOM, or GB18030/GBK (what does not decode as UTF-8 but decodes whole as GB18030).

    Anything else is refused (:class:`ValueError` starting with ``name``) naming the byte
    offset where UTF-8 decoding fails, or of the first NUL byte (binary data, or UTF-16
    without a BOM: never text in UTF-8 or GB18030).
    """
    for bom, encoding, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}: starts with a {encoding} byte-order mark but is not "
                                 f"{encoding}: undecodable byte at offset {exc.start:,}") from None
            if "\0" in text:
                raise ValueError(f"{name}: {encoding} text with a NUL character: not a text "
                                 "file")
            return text, encoding
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{name}: NUL byte at byte offset {nul:,}: not a text file (UTF-16 "
                         "without a byte-order mark?)")
    try:
        return data.decode("utf-8"), UTF8
    except UnicodeDecodeError as exc:
        try:
            return data.decode("gb18030"), GB18030
        except UnicodeDecodeError:
            raise ValueError(
                f"{name}: not UTF-8 (nor UTF-16 with a BOM, nor GB18030/GBK): "
                f"undecodable byte 0x{data[exc.start]:02x} at byte offset {exc.start:,}"
            ) from None
