"""Prepare: normalise, de-duplicate, drop label conflicts and split by text hash.

The default corpus has about half of its lines duplicated and some texts under both labels;
a random split would leak test texts into training. Splitting on a hash of the normalised
text keeps every text in one split for good, however the data grows. Texts are clipped to a
bound before they are normalised, so one huge text costs no more than the bound; too few rows
left after cleaning is refused, naming the count and the bound.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
# CJK unified ideographs (basic, extension A, compatibility): "Chinese characters"
CJK_PATTERN = r"[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff]"
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str, max_chars: int | None = None) -> str:
    """The first ``max_chars`` characters of ``text`` (all with None) under NFKC (full-width to
    half-width, compatibility forms), whitespace runs to one space, trimmed. Clipping comes
    first, so the cost is bounded by ``max_chars`` whatever the length of ``text``."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text[:max_chars])).strip()


def _salted_sha256(text: str, salt: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{text}".encode()).digest()


def _unit_hash(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from the text alone."""
    return int.from_bytes(_salted_sha256(text, salt)[:8], "big") / 2**64


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """The split a normalised text belongs to, forever: test, then val, then train."""
    u = _unit_hash(text, "split")
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def label_order(observed: Iterable[str], declared: list[str]) -> list[str]:
    """Class-index order: the declared label set, or the ``observed`` labels sorted."""
    observed = sorted(set(observed))
    if not declared:
        return observed
    unknown = sorted(set(observed) - set(declared))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the declared set data.labels={declared}")
    return list(declared)


def _clean_rows(raw: pd.DataFrame, max_chars: int,
                quarantined: Collection[int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The steps of :func:`clean` that look at one row at a time: the rows of ``raw`` that
    are not quarantined (positions in ``raw``), have a label and a non-empty text once
    normalised, and the counts."""
    kept = raw.drop(index=raw.index[list(quarantined)])
    df = kept[["text", "label"]].dropna(subset=["label"]).copy()
    counts = {"rows_raw": len(raw), "dropped_quarantined": len(raw) - len(kept),
              "dropped_missing_label": len(kept) - len(df)}
    df["label"] = df["label"].astype(str).str.strip()
    df["text"] = df["text"].fillna("").astype(str).map(lambda t: normalise_text(t, max_chars))
    non_empty = df["text"] != ""
    counts["dropped_empty_text"] = int((~non_empty).sum())
    return df[non_empty], counts


@dataclass(frozen=True)
class Plan:
    """What a :class:`Cleaner` decided once it had seen all the data: ``rows``, the positions
    (among the rows :meth:`Cleaner.add` returned, counted over all batches) of the dataset's
    rows in the dataset's order; the counts of every cleaning step; the labels those rows
    carry (before sampling)."""

    rows: np.ndarray
    counts: dict[str, int]
    labels: list[str]

    def label_order(self, declared: list[str], min_rows: int) -> list[str]:
        """The class order (:func:`label_order`), once enough rows are left: raises
        :class:`ValueError` naming the count and the bound when fewer than ``min_rows`` rows
        are (``validate.min_rows_after_cleaning``)."""
        counts = self.counts
        if counts["rows_clean"] < min_rows:
            dropped = ", ".join(f"{n:,} {step.removeprefix('dropped_').replace('_', ' ')}"
                                for step, n in counts.items()
                                if step.startswith("dropped_") and n)
            raise ValueError(f"{counts['rows_clean']:,} rows left after cleaning "
                             f"{counts['rows_raw']:,} (dropped: {dropped or 'none'}), below "
                             f"validate.min_rows_after_cleaning={min_rows:,}")
        return label_order(self.labels, declared)


class Cleaner:
    """Cleaning in two passes over raw data given as frames in order, memory bounded by a
    frame: :meth:`add` applies the steps that look at one row (quarantine, missing label,
    normalisation, empty text) to each frame and returns the rows it keeps; :meth:`plan`
    then decides duplicates, conflicting labels and the sample for all the data at once.

    Per row returned it keeps 20 bytes: a 128-bit id of the normalised text (the first 16
    bytes of its sample hash, so two distinct texts share one with probability about
    n²/2¹²⁹) and a label code. ``quarantined`` are positions in all of the raw data.
    """

    def __init__(self, max_chars: int, quarantined: Collection[int] = ()) -> None:
        self.max_chars = max_chars
        self._quarantined = np.sort(np.asarray(list(quarantined), dtype=np.int64))
        self._raw_rows = 0
        self._counts = Counter[str]()
        self._ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._codes: dict[str, int] = {}

    def add(self, raw: pd.DataFrame) -> pd.DataFrame:
        """The rows of the next raw frame that pass the row-level steps, normalised."""
        start = self._raw_rows
        q = self._quarantined
        local = q[(q >= start) & (q < start + len(raw))] - start
        df, counts = _clean_rows(raw, self.max_chars, local.tolist())
        self._counts.update(counts)
        self._raw_rows += len(raw)
        digests = b"".join(_salted_sha256(t, "sample")[:16]
                           for t in df["text"].tolist())  # lists: Arrow columns iterate slowly
        self._ids.append(np.frombuffer(digests, dtype=">u8").reshape(-1, 2))
        self._labels.append(np.fromiter((self._codes.setdefault(label, len(self._codes))
                                         for label in df["label"].tolist()), np.int32, len(df)))
        return df

    def plan(self, sample_size: int) -> Plan:
        """Which rows make the dataset: the first of each (text, label), no text that occurs
        under two labels, and of those the ``sample_size`` with the smallest sample hash (the
        first 64 bits of SHA-256 of ``"sample\\0" + text``), in that order: stable, and
        independent of the split (0: all, in the order of the data)."""
        q = self._quarantined
        if q.size and (q[0] < 0 or q[-1] >= self._raw_rows):
            raise ValueError(f"the quarantine lists rows the data does not have (rows "
                             f"{q[0]:,} to {q[-1]:,} of {self._raw_rows:,}): run the "
                             "validate stage first")
        ids = np.concatenate(self._ids) if self._ids else np.empty((0, 2), ">u8")
        labels = np.concatenate(self._labels) if self._labels else np.empty(0, np.int32)
        hi, lo = ids[:, 0].astype(np.uint64), ids[:, 1].astype(np.uint64)
        order = np.lexsort((labels, lo, hi))  # stable: rows of a group in data order
        s_hi, s_lo, s_label = hi[order], lo[order], labels[order]
        new_text = np.ones(len(order), dtype=bool)
        new_text[1:] = (s_hi[1:] != s_hi[:-1]) | (s_lo[1:] != s_lo[:-1])
        new_pair = new_text.copy()
        new_pair[1:] |= s_label[1:] != s_label[:-1]
        text_of_pair = (np.cumsum(new_text) - 1)[new_pair]
        labels_per_text = np.bincount(text_of_pair)
        conflicting = labels_per_text[text_of_pair] > 1
        kept = np.sort(order[new_pair][~conflicting])
        counts = dict(self._counts)  # the keys in the order of the steps
        counts["dropped_duplicates"] = len(order) - len(text_of_pair)
        counts["conflicting_texts"] = int((labels_per_text > 1).sum())
        counts["dropped_conflicting_rows"] = int(conflicting.sum())
        counts["rows_clean"] = len(kept)
        rows = kept
        if 0 < sample_size < len(kept):  # _unit_hash(text, "sample") of each kept row
            keys = hi[kept].astype(np.float64) / 2**64
            rows = kept[np.argsort(keys, kind="stable")[:sample_size]]
        counts["rows_sampled"] = len(rows)
        names = {code: label for label, code in self._codes.items()}
        return Plan(rows, counts, [names[c] for c in np.unique(labels[kept])])


def take(parts: Iterable[pd.DataFrame], rows: np.ndarray) -> Iterator[pd.DataFrame]:
    """The rows at positions ``rows`` of ``parts`` (taken as one table), in the order of
    ``rows``. Ascending ``rows`` (no sample) come part by part, nothing held; a sample is
    gathered first (its rows only) and comes as one frame."""
    ascending = bool(np.all(rows[1:] > rows[:-1]))
    wanted = rows if ascending else np.sort(rows)
    held, start = [], 0
    for part in parts:
        first, last = np.searchsorted(wanted, [start, start + len(part)])
        chosen = part.iloc[wanted[first:last] - start]
        start += len(part)
        if ascending:
            yield chosen
        else:
            held.append(chosen)
    if not ascending:
        gathered = pd.concat(held)
        yield gathered.iloc[np.searchsorted(wanted, rows)]


def with_split(df: pd.DataFrame, val_fraction: float, test_fraction: float) -> pd.DataFrame:
    """``df`` with the ``split`` column (:func:`split_of`)."""
    return df.assign(split=df["text"].map(lambda t: split_of(t, val_fraction, test_fraction)))


def split_labels(df: pd.DataFrame) -> Counter[tuple[str, str]]:
    """The (split, label) pairs of ``df`` counted."""
    return Counter(zip(df["split"].tolist(), df["label"].tolist(), strict=True))


def report(plan: Plan, labels: list[str], split_labels: Counter[tuple[str, str]]) -> dict:
    """The prepare report: the counts, the class order and rows per split and label
    (``split_labels``: the dataset's (split, label) pairs counted)."""
    return {"counts": plan.counts, "labels": labels,
            "splits": {split: {label: split_labels[split, label] for label in labels}
                       for split in SPLITS}}


def clean(raw: pd.DataFrame, max_chars: int,
          quarantined: Collection[int] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop the ``quarantined`` rows (positions in ``raw``), clip texts to ``max_chars`` and
    normalise them, drop empty, duplicate and label-conflicting rows; count each step."""
    return clean_batches([raw], max_chars, quarantined)


def clean_batches(batches: Iterable[pd.DataFrame], max_chars: int,
                  quarantined: Collection[int] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`clean` over raw data given as frames in order (``quarantined``: positions in
    all of it), with a :class:`Cleaner`: the cleaned rows in memory, never the raw data
    whole."""
    cleaner = Cleaner(max_chars, quarantined)
    parts = [cleaner.add(raw) for raw in batches]
    plan = cleaner.plan(0)
    counts = {k: v for k, v in plan.counts.items() if k != "rows_sampled"}
    return pd.concat(take(parts, plan.rows)).reset_index(drop=True), counts


def prepare(
    raw: pd.DataFrame | Iterable[pd.DataFrame], declared_labels: list[str], sample_size: int,
    val_fraction: float, test_fraction: float, *, max_chars: int, min_rows: int,
    quarantined: Collection[int] = (),
) -> tuple[pd.DataFrame, list[str], dict]:
    """Clean, sample and split ``raw`` (a frame, or its batches in order) in memory with a
    :class:`Cleaner`; return (dataset, label order, report). The prepare stage does the same
    streamed, with the cleaned rows on disk between the passes.

    Raises :class:`ValueError` naming the count and the bound when fewer than ``min_rows``
    rows are left after cleaning (``validate.min_rows_after_cleaning``).
    """
    cleaner = Cleaner(max_chars, quarantined)
    parts = [cleaner.add(part) for part in ([raw] if isinstance(raw, pd.DataFrame) else raw)]
    plan = cleaner.plan(sample_size)
    labels = plan.label_order(declared_labels, min_rows)
    df = with_split(pd.concat(take(parts, plan.rows)).reset_index(drop=True),
                    val_fraction, test_fraction)
    return df, labels, report(plan, labels, split_labels(df))
