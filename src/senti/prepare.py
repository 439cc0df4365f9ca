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
from collections.abc import Collection, Iterable

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


def _unit_hash(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from the text alone."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(text: str, val_fraction: float, test_fraction: float) -> str:
    """The split a normalised text belongs to, forever: test, then val, then train."""
    u = _unit_hash(text, "split")
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def label_order(labels: pd.Series, declared: list[str]) -> list[str]:
    """Class-index order: the declared label set, or the observed labels sorted."""
    observed = sorted(set(labels))
    if not declared:
        return observed
    unknown = sorted(set(observed) - set(declared))
    if unknown:
        raise ValueError(f"labels {unknown} are not in the declared set data.labels={declared}")
    return list(declared)


def clean(raw: pd.DataFrame, max_chars: int,
          quarantined: Collection[int] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop the ``quarantined`` rows (positions in ``raw``), clip texts to ``max_chars`` and
    normalise them, drop empty, duplicate and label-conflicting rows; count each step."""
    return clean_batches([raw], max_chars, quarantined)


def _clean_rows(raw: pd.DataFrame, max_chars: int,
                quarantined: Collection[int]) -> tuple[pd.DataFrame, dict[str, int]]:
    """The steps of :func:`clean` that look at one row at a time, and a first
    de-duplication within ``raw``: its rows to keep, normalised, and the counts."""
    kept = raw.drop(index=raw.index[list(quarantined)])
    df = kept[["text", "label"]].dropna(subset=["label"]).copy()
    counts = {"rows_raw": len(raw), "dropped_quarantined": len(raw) - len(kept),
              "dropped_missing_label": len(kept) - len(df)}
    df["label"] = df["label"].astype(str).str.strip()
    df["text"] = df["text"].fillna("").astype(str).map(lambda t: normalise_text(t, max_chars))
    non_empty = df["text"] != ""
    counts["dropped_empty_text"] = int((~non_empty).sum())
    df = df[non_empty]
    deduplicated = df.drop_duplicates(subset=["text", "label"])
    counts["dropped_duplicates"] = len(df) - len(deduplicated)
    return deduplicated, counts


def clean_batches(batches: Iterable[pd.DataFrame], max_chars: int,
                  quarantined: Collection[int] = ()) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`clean` over raw data given as frames in order (``quarantined``: positions in
    all of it): only the normalised, once-deduplicated rows of each frame are kept in
    memory, never the raw data whole."""
    positions = np.sort(np.asarray(list(quarantined), dtype=np.int64))
    parts, counts, start = [], Counter[str](), 0
    for raw in batches:
        local = positions[(positions >= start) & (positions < start + len(raw))] - start
        part, part_counts = _clean_rows(raw, max_chars, local.tolist())
        parts.append(part)
        counts.update(part_counts)
        start += len(raw)
    if positions.size and (positions[0] < 0 or positions[-1] >= start):
        raise ValueError(f"the quarantine lists rows the data does not have (rows "
                         f"{positions[0]:,} to {positions[-1]:,} of {start:,}): run the "
                         "validate stage first")
    df = pd.concat(parts) if len(parts) > 1 else parts[0]
    deduplicated = df.drop_duplicates(subset=["text", "label"])
    counts["dropped_duplicates"] += len(df) - len(deduplicated)
    counts = dict(counts)  # the keys in the order of the steps, as _clean_rows counts them
    labels_per_text = deduplicated.groupby("text")["label"].transform("nunique")
    conflicting = labels_per_text > 1
    counts["conflicting_texts"] = int(deduplicated.loc[conflicting, "text"].nunique())
    counts["dropped_conflicting_rows"] = int(conflicting.sum())
    df = deduplicated[~conflicting].reset_index(drop=True)
    counts["rows_clean"] = len(df)
    return df, counts


def deterministic_sample(df: pd.DataFrame, size: int) -> pd.DataFrame:
    """The ``size`` texts with the smallest sample-hash: stable, and independent of the split."""
    if size <= 0 or size >= len(df):
        return df
    keys = df["text"].map(lambda t: _unit_hash(t, "sample"))
    return df.loc[keys.sort_values(kind="stable").index[:size]].reset_index(drop=True)


def prepare(
    raw: pd.DataFrame | Iterable[pd.DataFrame], declared_labels: list[str], sample_size: int,
    val_fraction: float, test_fraction: float, *, max_chars: int, min_rows: int,
    quarantined: Collection[int] = (),
) -> tuple[pd.DataFrame, list[str], dict]:
    """Clean (:func:`clean`), sample and split ``raw`` (a frame, or its batches in order:
    :func:`clean_batches`); return (dataset, label order, report).

    Raises :class:`ValueError` naming the count and the bound when fewer than ``min_rows``
    rows are left after cleaning (``validate.min_rows_after_cleaning``).
    """
    df, counts = clean_batches([raw] if isinstance(raw, pd.DataFrame) else raw, max_chars,
                               quarantined)
    if counts["rows_clean"] < min_rows:
        dropped = ", ".join(f"{n:,} {step.removeprefix('dropped_').replace('_', ' ')}"
                            for step, n in counts.items() if step.startswith("dropped_") and n)
        raise ValueError(f"{counts['rows_clean']:,} rows left after cleaning "
                         f"{counts['rows_raw']:,} (dropped: {dropped or 'none'}), below "
                         f"validate.min_rows_after_cleaning={min_rows:,}")
    labels = label_order(df["label"], declared_labels)
    df = deterministic_sample(df, sample_size)
    counts["rows_sampled"] = len(df)
    df["split"] = df["text"].map(lambda t: split_of(t, val_fraction, test_fraction))
    per_split = {
        split: {label: int(n) for label, n in df.loc[df["split"] == split, "label"]
                .value_counts().reindex(labels, fill_value=0).items()}
        for split in SPLITS
    }
    report = {"counts": counts, "labels": labels, "splits": per_split}
    return df, labels, report
