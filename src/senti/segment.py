"""Segment: jieba word segmentation (accurate mode), in parallel processes for bulk work.

jieba is imported only here. A :class:`Segmenter` loads the dictionary once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jieba

jieba.setLogLevel(logging.WARNING)

_CHUNK = 2000  # texts per task: large enough to amortise inter-process transfer


class Segmenter:
    """A jieba tokenizer with an optional user dictionary, initialised eagerly."""

    def __init__(self, user_dict: Path | str | None = None) -> None:
        self._tokenizer = jieba.Tokenizer()
        self._tokenizer.initialize()
        if user_dict:
            path = Path(user_dict)
            if not path.is_file():
                raise FileNotFoundError(f"jieba user dictionary {path} not found")
            self._tokenizer.load_userdict(str(path))

    def cut(self, text: str) -> list[str]:
        """Tokens of ``text`` in accurate mode, whitespace tokens dropped."""
        return [t for t in self._tokenizer.cut(text, HMM=True) if t.strip()]

    def cut_many(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.cut(t) for t in texts]


_worker: Segmenter | None = None


def _init_worker(user_dict: str | None) -> None:
    global _worker
    _worker = Segmenter(user_dict)


def _cut_chunk(texts: Sequence[str]) -> list[list[str]]:
    assert _worker is not None, "worker not initialised"
    return _worker.cut_many(texts)


def segment_texts(
    texts: Sequence[str], user_dict: Path | str | None = None, workers: int = 0,
) -> list[list[str]]:
    """Segment many texts, in order, using ``workers`` processes (0 = all cores)."""
    workers = workers or os.cpu_count() or 1
    chunks = [texts[i:i + _CHUNK] for i in range(0, len(texts), _CHUNK)]
    if workers == 1 or len(chunks) <= 1:
        return Segmenter(user_dict).cut_many(texts)
    user_dict = str(user_dict) if user_dict else None
    with ProcessPoolExecutor(min(workers, len(chunks)), initializer=_init_worker,
                             initargs=(user_dict,)) as pool:
        return [tokens for chunk in pool.map(_cut_chunk, chunks) for tokens in chunk]


def jieba_version() -> str:
    return jieba.__version__
