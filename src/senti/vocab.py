"""Vocabulary: token <-> id mapping built from the training split only.

Saved as JSON (never pickle) with its sha256, so the exact vocabulary is part of lineage.
Ids 0 and 1 are reserved for padding and out-of-vocabulary tokens. A vocabulary file may come
from a shared store: :meth:`Vocabulary.from_json` refuses anything but distinct string tokens,
the reserved ids and at most :data:`~senti.config.MAX_VOCAB_SIZE` of them (the bound
``vocab.max_size`` has too); :func:`check_maxlen` bounds the tokens a text is read as, as
``model.maxlen`` is bounded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from senti.config import MAX_MAXLEN, MAX_VOCAB_SIZE
from senti.io import atomic_write_bytes, sha256_bytes

PAD_ID = 0
OOV_ID = 1
PAD_TOKEN = "<pad>"
OOV_TOKEN = "<oov>"
FORMAT = "senti-vocab/1"


def check_maxlen(maxlen: object) -> int:
    """``maxlen`` if it is an int (not a bool) from 1 to :data:`~senti.config.MAX_MAXLEN`; else
    ValueError."""
    if type(maxlen) is not int or not 1 <= maxlen <= MAX_MAXLEN:
        raise ValueError(f"maxlen must be an integer from 1 to {MAX_MAXLEN}, got {maxlen!r}")
    return maxlen


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in id order; ``tokens[0]`` is padding and ``tokens[1]`` is OOV."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[:2] != (PAD_TOKEN, OOV_TOKEN):
            raise ValueError("vocabulary must start with the padding and OOV tokens")
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str], maxlen: int) -> list[int]:
        """Ids of the first ``maxlen`` tokens (:func:`check_maxlen`); never empty, so no
        sequence is all padding."""
        ids = [self._ids.get(t, OOV_ID) for t in tokens[:check_maxlen(maxlen)]]  # type: ignore[attr-defined]
        return ids or [OOV_ID]

    def oov_rate(self, token_lists: Iterable[Sequence[str]]) -> float:
        """Share of token occurrences that map to OOV."""
        total = oov = 0
        for tokens in token_lists:
            total += len(tokens)
            oov += sum(t not in self._ids for t in tokens)  # type: ignore[attr-defined]
        return oov / total if total else 0.0

    def to_json(self) -> bytes:
        payload = {"format": FORMAT, "pad_id": PAD_ID, "oov_id": OOV_ID,
                   "tokens": list(self.tokens)}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Vocabulary:
        """The vocabulary :meth:`to_json` wrote; ValueError naming what is wrong with any
        other payload."""
        payload = json.loads(data)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not a senti vocabulary file")
        if payload.get("pad_id") != PAD_ID or payload.get("oov_id") != OOV_ID:
            raise ValueError(f"vocabulary must reserve pad_id {PAD_ID} and oov_id {OOV_ID}")
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("vocabulary tokens must be a list of strings")
        if len(tokens) > MAX_VOCAB_SIZE:
            raise ValueError(f"vocabulary of {len(tokens)} tokens; the limit is {MAX_VOCAB_SIZE}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be distinct")
        return cls(tuple(tokens))


def build_vocab(token_lists: Iterable[Sequence[str]], min_freq: int, max_size: int) -> Vocabulary:
    """Most frequent tokens with count >= ``min_freq``, at most ``max_size`` ids in total.

    Ties are broken by the token itself, so the same data always gives the same ids.
    """
    counts = Counter(t for tokens in token_lists for t in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return Vocabulary((PAD_TOKEN, OOV_TOKEN, *kept[: max(max_size - 2, 0)]))


def save_vocab(vocab: Vocabulary, path: Path) -> str:
    """Write the vocabulary and return the sha256 of exactly the bytes written."""
    data = vocab.to_json()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_vocab(path: Path) -> Vocabulary:
    return Vocabulary.from_json(Path(path).read_bytes())



def class_indices(labels: Iterable[str], label_order: Sequence[str]) -> np.ndarray:
    """Each label's index in ``label_order`` (the class order of ``labels.json``)."""
    index = {label: i for i, label in enumerate(label_order)}
    return np.fromiter((index[label] for label in labels), dtype=np.int64)


class EncodedTexts(Sequence[np.ndarray]):
    """The token ids of many texts end to end: ``ids`` (int32: in memory, or a read-only
    memmap of the file :func:`encode_to_file` wrote, so that training reads its texts from
    disk) and each text's ``lengths``. ``texts[i]`` is the ids of text ``i``, a view."""

    def __init__(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.ids, self.lengths = ids, np.asarray(lengths, dtype=np.int64)
        self.starts = np.cumsum(self.lengths) - self.lengths

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> EncodedTexts:
        """The ids of ``sequences`` (lists of ids) in memory."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        return cls(np.fromiter((i for s in sequences for i in s), dtype=np.int32,
                               count=int(lengths.sum())), lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        start = self.starts[i]
        return np.asarray(self.ids[start:start + self.lengths[i]])

    def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the texts at ``indices``, one row each, right-padded with 0 to the
        longest of them (int32), and their lengths."""
        lengths = self.lengths[indices]
        columns = np.arange(lengths.max() if lengths.size else 0)
        inside = columns < lengths[:, None]
        batch = np.zeros(inside.shape, dtype=np.int32)
        batch[inside] = self.ids[(self.starts[indices][:, None] + columns)[inside]]
        return batch, lengths


def encode_split(token_lists: Iterable[Sequence[str]], labels: Iterable[str], vocab: Vocabulary,
                 maxlen: int, label_order: Sequence[str]) -> tuple[EncodedTexts, np.ndarray]:
    """Token ids (:meth:`Vocabulary.encode`) and class indices of one split: the model's
    training and test input."""
    return (EncodedTexts.from_lists([vocab.encode(list(tokens), maxlen)
                                     for tokens in token_lists]),
            class_indices(labels, label_order))


def encode_to_file(batches: Iterable[tuple[Iterable[Sequence[str]], Iterable[str]]],
                   vocab: Vocabulary, maxlen: int, label_order: Sequence[str],
                   path: Path) -> tuple[EncodedTexts, np.ndarray]:
    """:func:`encode_split` of a split that arrives in batches of (token lists, labels), its
    ids appended to ``path`` batch by batch and read back memory-mapped: only the texts'
    lengths and class indices (16 bytes a text) stay in memory."""
    lengths, classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    with open(path, "wb") as out:
        for token_lists, labels in batches:
            texts, indices = encode_split(token_lists, labels, vocab, maxlen, label_order)
            out.write(texts.ids.tobytes())
            lengths.append(texts.lengths)
            classes.append(indices)
    all_lengths = np.concatenate(lengths)
    ids = (np.memmap(path, dtype=np.int32, mode="r") if all_lengths.sum()
           else np.zeros(0, np.int32))  # numpy cannot map an empty file
    return EncodedTexts(ids, all_lengths), np.concatenate(classes)
