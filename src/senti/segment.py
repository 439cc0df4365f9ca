"""Segment: jieba word segmentation (accurate mode), in parallel processes for bulk work.

jieba is imported only here. A :class:`Segmenter` loads the dictionary once per process.
Bulk work is cut into chunks, each segmented by :func:`cut_chunk` on an engine of
:mod:`senti.cluster` (a local process pool, or Dask): the same tokens either way.

Three defences against hostile input:

* jieba's time grows quadratically with an unbroken run of characters it segments as one
  block (20k rare characters ~1.6 s, 40k ~6 s), so a run longer than :data:`MAX_RUN_CHARS` is
  cut into pieces of that length first: the cost is then linear in the length of a text
  (~1-3 s per 100k characters here). Texts are clipped before they get here (prepare: to
  ``validate.max_text_chars``; serving: to what ``maxlen`` tokens use). No run in the bundled
  corpus is that long (the longest is 195 characters), so its tokens are unchanged.
* jieba caches its dictionary as a marshal file, loaded without any check, at a predictable
  name in the shared temporary directory; the cache goes to a private directory instead
  (:func:`cache_dir`, or a throw-away one).
* jieba keeps every prefix of each user-dictionary word (memory grows with the square of a
  word's length) and segments a word given without a frequency; a user dictionary is read
  once, refused over :data:`MAX_USER_DICT_BYTES` or with a word over
  :data:`MAX_USER_WORD_CHARS` (:func:`read_user_dict`), and jieba gets the bytes checked.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import jieba

from senti import cluster

jieba.setLogLevel(logging.WARNING)

_CHUNK = 2000  # texts per task: large enough to amortise inter-process transfer
# Longest run of characters segmented as one piece (a run: a match of jieba's own block pattern,
# re_han_default). Per character, pieces of 20 to 2,000 rare characters cost the same; one of
# 20k costs 2x, 40k 4x. 500 is 2.5x the longest run of the bundled corpus.
MAX_RUN_CHARS = 500
_LONG_RUN = re.compile(rf"[\u4E00-\u9FD5a-zA-Z0-9+#&\._%\-]{{{MAX_RUN_CHARS + 1},}}")
# A user dictionary's bounds: its entries are words and short phrases (config/userdict.txt:
# 3 characters at most); jieba's own dictionary of ~350k words is 5 MB. At the bounds, 1 MiB of
# distinct 20-character words costs ~150 MiB and ~6 s to load.
MAX_USER_DICT_BYTES = 1 << 20
MAX_USER_WORD_CHARS = 20


def cache_dir() -> Path | None:
    """A directory only this user can write, for jieba's dictionary cache:
    ``$XDG_CACHE_HOME/senti/jieba`` (default ``~/.cache/senti/jieba``), created mode 0700;
    None when it cannot be created or is not private (not this user's, or writable by
    others)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "senti" / "jieba"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    private = (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
               and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    return path if private else None


def read_user_dict(path: Path | str) -> bytes:
    """The bytes of the jieba user dictionary ``path``, read as jieba reads them (lines
    split at ``\\n``, UTF-8, one ``word [freq] [tag]`` entry a line); ValueError naming the
    file, and the line, when it is larger than :data:`MAX_USER_DICT_BYTES` or a word is
    longer than :data:`MAX_USER_WORD_CHARS` characters."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jieba user dictionary {path} not found")
    with open(path, "rb") as f:
        data = f.read(MAX_USER_DICT_BYTES + 1)
    if len(data) > MAX_USER_DICT_BYTES:
        raise ValueError(f"jieba user dictionary {path} is larger than the limit of "
                         f"{MAX_USER_DICT_BYTES} bytes")
    for number, raw in enumerate(io.BytesIO(data), 1):
        try:
            line = raw.strip().decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError:
            raise ValueError(f"jieba user dictionary {path} line {number}: not UTF-8") from None
        word = jieba.re_userdict.match(line).group(1) if line else ""
        if len(word) > MAX_USER_WORD_CHARS:
            raise ValueError(f"jieba user dictionary {path} line {number}: a word of {len(word)} "
                             f"characters; the limit is {MAX_USER_WORD_CHARS}")
    return data


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut so that no unbroken run is longer than :data:`MAX_RUN_CHARS`."""
    start = 0
    for run in _LONG_RUN.finditer(text):
        for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
            yield text[start:cut]
            start = cut
    yield text[start:]


class Segmenter:
    """A jieba tokenizer with an optional user dictionary, initialised eagerly."""

    def __init__(self, user_dict: Path | str | None = None) -> None:
        self._tokenizer = jieba.Tokenizer()
        with ExitStack() as stack:  # no private cache directory: a throw-away one
            private = cache_dir() or stack.enter_context(
                tempfile.TemporaryDirectory(prefix="senti-jieba-"))
            self._tokenizer.tmp_dir = str(private)
            self._tokenizer.initialize()
        if user_dict:
            self._tokenizer.load_userdict(io.BytesIO(read_user_dict(user_dict)))

    def cut(self, text: str) -> list[str]:
        """Tokens of ``text`` in accurate mode, whitespace tokens dropped; time linear in the
        length of ``text`` (runs are cut at :data:`MAX_RUN_CHARS`)."""
        return [t for piece in _pieces(text) for t in self._tokenizer.cut(piece, HMM=True)
                if t.strip()]

    def cut_many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.cut(t) for t in texts]


# This process's segmenter, loaded on first use, with the user dictionary's path and
# (size, mtime) it was loaded from: a changed dictionary is loaded again.
_loaded: tuple[tuple[str | None, tuple[int, int] | None], Segmenter] | None = None


def cut_chunk(texts: Sequence[str], user_dict: str | None) -> list[list[str]]:
    """One task of parallel segmentation (a process pool's or a Dask worker's): the tokens
    of ``texts`` with this process's :class:`Segmenter` for ``user_dict`` (a path every
    worker can read)."""
    global _loaded
    info = os.stat(user_dict) if user_dict else None
    key = (user_dict, (info.st_size, info.st_mtime_ns) if info else None)
    if _loaded is None or _loaded[0] != key:
        _loaded = None
        _loaded = (key, Segmenter(user_dict))
    return _loaded[1].cut_many(texts)


def segment_chunks(chunks: Iterable[Sequence[str]], user_dict: Path | str | None,
                   engine: cluster.Engine) -> Iterator[list[list[str]]]:
    """The tokens of each chunk of texts, in order, the chunks segmented on ``engine``
    (at most two per task slot in memory at a time); a user dictionary
    :func:`read_user_dict` refuses is refused here, before any task runs."""
    if user_dict:
        read_user_dict(user_dict)
    user_dict = str(user_dict) if user_dict else None
    for _, tokens in cluster.run_chunks(engine, cut_chunk, (
            (i, (texts, user_dict)) for i, texts in enumerate(chunks)), ordered=True):
        yield tokens


def segment_texts(
    texts: Sequence[str], user_dict: Path | str | None = None, workers: int = 0,
) -> list[list[str]]:
    """Segment many texts, in order, using ``workers`` processes (0 = all cores)."""
    workers = workers or os.cpu_count() or 1
    chunks = [texts[i:i + _CHUNK] for i in range(0, len(texts), _CHUNK)]
    if workers == 1 or len(chunks) <= 1:
        return Segmenter(user_dict).cut_many(texts)
    with cluster.processes(min(workers, len(chunks))) as engine:
        return [tokens for chunk in segment_chunks(chunks, user_dict, engine)
                for tokens in chunk]


def jieba_version() -> str:
    return jieba.__version__
