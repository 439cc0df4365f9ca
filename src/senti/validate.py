"""Data validation of the raw corpus with Great Expectations (GX Core 1.x).

This is the only module that imports GX. It is a small library, no orchestration:

* :func:`read_raw_csv` loads a user's CSV tolerantly (every cell a string, empty cells null),
  refusing a file above the size bound or in an encoding it cannot name;
  :func:`read_raw_batches` reads the raw copy the same way in frames of a bounded size;
* :func:`validate_batches` runs one expectation suite over the raw data, given as frames of
  at most :data:`BATCH_ROWS` rows, and returns one :class:`ValidationReport` (optionally
  building GX Data Docs into a directory); :func:`validate_frame` does it for one frame;
* :func:`quarantine_table` lists the rows the report quarantines, with the reason per row;
* :func:`write_report` writes the report as deterministic JSON (a DVC output).

Expectations (``ExpectationOutcome.name``):

``text_column_exists`` / ``label_column_exists``
    the required columns are there; when one is missing the expectations on it are skipped
    (listed in ``ValidationReport.skipped``) and the missing column is the reported failure.
``text_not_null``, ``text_not_empty``, ``text_length``, ``cjk_share``
    row-level checks on ``text`` that must hold for at least ``mostly`` of the rows.
``label_not_null``, ``label_in_set``
    row-level checks on ``label`` (``label_in_set`` only with a declared label set): strict
    with ``on_bad_rows: fail``, for ``mostly`` of the rows with ``quarantine``.
``label_classes_present``
    every declared label occurs (only with a declared set and ``min_class_share > 0``).
``class_balance``
    every label's share of the labelled rows is within ``[min_class_share, max_class_share]``.
``duplicate_share``
    at most ``max_duplicate_share`` of the non-empty texts repeat an earlier text once
    normalised as :mod:`senti.prepare` does (clipped to ``max_text_chars``, NFKC, spaces).
``conflict_share``
    at most ``max_conflict_share`` of the labelled rows have a normalised text that also
    occurs with another label.
``row_count``
    at least ``min_rows`` rows.

GX has no expectation for computed values, so ``text_chars``, ``cjk_share`` (CJK characters
/ non-whitespace characters of a text), ``class_share`` (share of the row's label among
labelled rows), ``text_key`` (an id of the normalised text) and ``labels_per_text`` are helper
columns computed in pandas on a copy of the frame, and checked by GX like any column. In that
copy ``text`` and ``label`` are HTML-escaped: GX Data Docs put sampled values into the page
unescaped, and a review may contain markup (``<script>`` stays text).

Memory is bounded by the batch, not the data: a first pass over the batches keeps, per row,
only a 64-bit hash of its normalised text and a label code (the streamed counts: class shares,
labels per text, duplicate share); the second runs the GX checkpoint on each batch with the
helper columns filled from those counts. The row-level outcomes of the batches add up (counts,
the first examples, the quarantined rows; success by GX's own ``mostly`` rule on the totals);
``duplicate_share``, ``label_classes_present`` and ``row_count`` are decided on the totals.
Data Docs hold one validation page per batch. Two distinct texts share a hash with probability
about n²/2⁶⁵ (3·10⁻⁶ at 10M texts): at worst one duplicate more is counted.

With ``on_bad_rows: quarantine`` the rows failing a row-level check (the six above) are
quarantined instead of kept: :func:`quarantine_table` lists them and :mod:`senti.prepare`'s
stage removes them. The bounds still hold: a source where more than ``1 - mostly`` of the rows
are bad fails validation either way.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import io
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from senti.config import ValidateParams
from senti.io import UTF8, decode_text, read_bounded, write_json
from senti.prepare import CJK_PATTERN, normalise_text

# No network here; must precede GX's import. GX is imported inside the functions that use it:
# it takes ~2 s, which every stage process (and the CLI) would pay otherwise.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

TEXT = "text"
LABEL = "label"
REQUIRED_COLUMNS = (TEXT, LABEL)
TEXT_CHARS = "text_chars"
CJK_SHARE = "cjk_share"
CLASS_SHARE = "class_share"
TEXT_KEY = "text_key"
LABELS_PER_TEXT = "labels_per_text"
# The checks a single row can fail: the reasons a row is quarantined.
ROW_CHECKS = ("text_not_null", "text_not_empty", "text_length", CJK_SHARE, "label_not_null",
              "label_in_set")
UTF8_BOM = "UTF-8 with BOM"  # as senti.io.decode_text names it
BATCH_ROWS = 100_000  # rows GX checks at a time: what bounds validation's memory
MAX_EXAMPLES = 5
EXAMPLE_CHARS = 80
DOCS_SITE = "senti_data_docs"
SUITE_NAME = "raw_corpus"
QUARANTINE_COLUMNS = ["row", "reason", TEXT, LABEL]
# What GX writes into a Data Docs site; only these are cleared before a rebuild.
_DOCS_ENTRIES = ("index.html", "static", "expectations", "validations")


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation.

    ``examples`` holds up to five offending rows as ``{"row", "text", "label"}`` (plus
    ``"value"`` for computed values such as the CJK share or the text length); ``row`` is the
    0-based position of the row in the frame (CSV line = row + 2 with a header line).
    """

    name: str
    expectation: str
    success: bool
    observed: str
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationReport:
    """All expectation outcomes of one validation run.

    ``bad_rows`` maps each row failing a row-level check (:data:`ROW_CHECKS`) to the checks
    it fails; it is not part of :meth:`to_dict` (``quarantined`` counts those removed).
    """

    success: bool
    rows: int
    outcomes: list[ExpectationOutcome]
    data_docs: str | None = None
    skipped: list[str] = field(default_factory=list)
    on_bad_rows: str = "fail"
    quarantined: int = 0
    bad_rows: dict[int, list[str]] = field(default_factory=dict, repr=False)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable and deterministic (no timestamps or run ids)."""
        data = asdict(self)
        del data["bad_rows"]
        return data

    def summary(self) -> str:
        """A multi-line message for people: what failed, observed values, offending rows."""
        passed = len(self.outcomes) - len(self.failed)
        if self.success:
            lines = [f"Data validation passed: {passed} of {len(self.outcomes)} expectations "
                     f"hold on {self.rows:,} rows."]
        else:
            lines = [f"Data validation FAILED: {len(self.failed)} of {len(self.outcomes)} "
                     f"expectations failed on {self.rows:,} rows."]
            for outcome in self.failed:
                lines.append(f"- {outcome.name} ({outcome.expectation}): {outcome.observed}")
                for ex in outcome.examples:
                    value = f" value={ex['value']}" if "value" in ex else ""
                    lines.append(f"    row {ex['row']}: label={ex['label']!r}{value} "
                                 f"text={ex['text']!r}")
        if self.skipped:
            lines.append(f"Skipped (required column missing): {', '.join(self.skipped)}")
        if self.quarantined:
            lines.append(f"Quarantined (on_bad_rows=quarantine): {self.quarantined:,} rows "
                         "failing a row-level check, removed before training")
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)


def read_raw_csv(path: str | os.PathLike[str], max_bytes: int) -> pd.DataFrame:
    """Read a user's CSV with every cell as a string; only empty cells become null.

    ``"NA"``, ``"null"`` and the like stay text. UTF-8 (a BOM and CRLF line ends included)
    is read as is; UTF-16 with a BOM and GB18030/GBK are decoded, their name in
    ``frame.attrs["encoding"]`` (:func:`senti.io.decode_text`). Raises :class:`ValueError`
    naming the file when it is missing, over ``max_bytes`` (nothing is read then), cannot be
    decoded, or is not a CSV.
    """
    name = os.fspath(path)
    text, encoding = decode_text(read_bounded(path, max_bytes, name), name)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                            na_values=[""])
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name}: empty file (expected a header line with columns "
                         f"{','.join(REQUIRED_COLUMNS)})") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{name}: not a readable CSV file ({exc})") from None
    frame.attrs["encoding"] = encoding
    return frame


def read_raw_batches(path: str | os.PathLike[str], max_bytes: int,
                     rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The raw copy (UTF-8, a BOM allowed: what ingest writes) as frames of at most ``rows``
    rows, cells read as :func:`read_raw_csv` reads them (``attrs["encoding"]`` too), the
    index the row's position in the file; at least one frame (an empty one for a header-only
    file). Raises :class:`ValueError` naming the file when it is missing, not a regular file,
    over ``max_bytes`` (:func:`senti.io.read_bounded` says which), not UTF-8 or not a CSV."""
    name = os.fspath(path)
    if not (os.path.isfile(path) and os.path.getsize(path) <= max_bytes):
        read_bounded(path, max_bytes, name)  # refuses it, naming why; nothing is read
    with open(path, "rb") as fh:
        encoding = UTF8_BOM if fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else UTF8
    try:
        with pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                         encoding="utf-8-sig", chunksize=rows) as reader:
            for frame in reader:
                frame.attrs["encoding"] = encoding
                yield frame
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name}: empty file (expected a header line with columns "
                         f"{','.join(REQUIRED_COLUMNS)})") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{name}: not a readable CSV file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not UTF-8 ({exc.reason}): run the ingest stage, which "
                         "converts its source") from None


def validate_frame(df: pd.DataFrame, params: ValidateParams, labels: Sequence[str],
                   docs_dir: Path | None = None) -> ValidationReport:
    """Validate the raw frame (columns ``text`` and ``label``; others are ignored), in
    batches of :data:`BATCH_ROWS` rows (:func:`validate_batches`)."""

    def batches() -> Iterator[pd.DataFrame]:
        for start in range(0, max(len(df), 1), BATCH_ROWS):
            yield df.iloc[start:start + BATCH_ROWS]

    return validate_batches(batches, params, labels, docs_dir)


def validate_batches(batches: Callable[[], Iterable[pd.DataFrame]], params: ValidateParams,
                     labels: Sequence[str], docs_dir: Path | None = None) -> ValidationReport:
    """Validate the raw data that ``batches()`` yields, frame by frame, in file order (it is
    called twice: a pass for the counts, one for GX), as one suite with one report.

    ``labels`` is the declared label set (compared as strings); empty means "no declared
    set": ``label_in_set`` is skipped and class balance is checked over the observed labels.
    With ``docs_dir``, GX Data Docs are (re)built into exactly that directory and the path of
    its ``index.html`` is returned in the report.
    """
    import great_expectations as gx

    labels = [str(label) for label in labels]
    scan = _scan(batches(), params.max_text_chars)
    missing = [c for c in REQUIRED_COLUMNS if c not in scan.columns]
    context = _make_context(docs_dir)
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    observed: dict[str, str] = {}
    skipped: list[str] = []
    expectations = _expectations(scan, params, labels, missing, observed, skipped)
    shown = (", ".join(repr(c) for c in scan.columns[:20])
             + (", ..." if len(scan.columns) > 20 else ""))
    for column in REQUIRED_COLUMNS:
        observed[f"{column}_column_exists"] = (
            f"column {column!r} present" if column not in missing
            else f"column {column!r} missing; the data has columns [{shown}]")
    order = {e.meta["name"]: i for i, e in enumerate(expectations)}
    for expectation in expectations:
        suite.add_expectation(expectation)

    asset = context.data_sources.add_pandas("raw").add_dataframe_asset("raw_frame")
    batch = asset.add_batch_definition_whole_dataframe("whole_frame")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="raw_corpus_validation", data=batch, suite=suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])]
    quarantine = params.on_bad_rows == "quarantine"
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="raw_corpus_checkpoint", validation_definitions=[definition],
        actions=actions if docs_dir is not None else [],
        # COMPLETE lists every failing row: the rows to quarantine
        result_format="COMPLETE" if quarantine else "SUMMARY"))
    totals: dict[str, _Totals] = {}
    bad_rows: dict[int, list[str]] = {}
    start = 0
    for part in batches():
        frame, raw = _prepare_frame(part, start, scan, labels, missing)
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        (suite_result,) = result.run_results.values()
        for r in suite_result.results:
            name = str(r.expectation_config.meta["name"])
            totals.setdefault(name, _Totals(r.expectation_config)).add(r, frame, raw)
        if quarantine:
            for row, checks in _bad_rows(suite_result.results).items():
                bad_rows.setdefault(row, []).extend(checks)
        start += len(part)
    outcomes = sorted((t.outcome(scan, observed) for t in totals.values()),
                      key=lambda o: order[o.name])
    index = None if docs_dir is None else str(Path(docs_dir) / "index.html")
    return ValidationReport(success=all(o.success for o in outcomes), rows=scan.rows,
                            outcomes=outcomes, data_docs=index, skipped=skipped,
                            on_bad_rows=params.on_bad_rows, quarantined=len(bad_rows),
                            bad_rows=dict(sorted(bad_rows.items())))


def quarantine_table(data: pd.DataFrame | Iterable[pd.DataFrame],
                     report: ValidationReport) -> pd.DataFrame:
    """The rows of ``data`` (a frame, or its batches in order) that ``report`` quarantines,
    with the checks each fails (``reason``, ``;``-separated) and its raw text and label; no
    rows unless ``on_bad_rows`` is ``quarantine``. ``row`` is the 0-based position in
    ``data``."""
    rows = sorted(report.bad_rows)
    table = pd.DataFrame({"row": rows, "reason": [";".join(report.bad_rows[r]) for r in rows]})
    values: dict[str, list[Any]] = {TEXT: [], LABEL: []}
    start = 0
    for part in [data] if isinstance(data, pd.DataFrame) else data:
        wanted = np.asarray(rows, dtype=np.int64)
        local = wanted[(wanted >= start) & (wanted < start + len(part))] - start
        for column in (TEXT, LABEL):
            picked = part[column].iloc[local] if column in part.columns else [None] * len(local)
            values[column].extend(picked)
        start += len(part)
    for column in (TEXT, LABEL):
        table[column] = values[column]
    return table[QUARANTINE_COLUMNS]


def write_report(report: ValidationReport, path: Path) -> None:
    """Write the report as JSON (sorted keys, indent 2, UTF-8, trailing newline), atomically."""
    write_json(path, report.to_dict())


# --------------------------------------------------------------------------- internals


def _as_text(column: pd.Series) -> pd.Series:
    """Non-null values as ``str`` (object dtype), nulls as ``None``."""
    values = column.astype(object)
    return values.astype(str).where(values.notna(), None)


def _escaped(column: pd.Series) -> pd.Series:
    """HTML-escaped values (nulls kept): what GX may put into Data Docs pages."""
    return column.map(html.escape, na_action="ignore")


@dataclass(frozen=True)
class _Scan:
    """What the first pass keeps: the columns, and per row a 64-bit hash of the normalised
    text (``has_key`` False where it is null or empty) and a label code (-1: null)."""

    columns: list[str]
    rows: int
    keys: np.ndarray
    has_key: np.ndarray
    label_codes: np.ndarray
    label_names: list[str]

    @cached_property
    def unique_keys(self) -> np.ndarray:
        return np.unique(self.keys[self.has_key])

    def label_counts(self, labels: list[str]) -> Counter[str]:
        """Rows per label, only the declared ``labels`` when there are any."""
        counts = np.bincount(self.label_codes[self.label_codes >= 0],
                             minlength=len(self.label_names))
        return Counter({name: int(n) for name, n in zip(self.label_names, counts, strict=True)
                        if n and (not labels or name in labels)})

    @cached_property
    def labels_per_key(self) -> tuple[np.ndarray, np.ndarray]:
        """The hashes of the labelled texts (sorted) and how many labels each has."""
        labelled = self.has_key & (self.label_codes >= 0)
        pairs = np.unique(np.rec.fromarrays([self.keys[labelled],
                                             self.label_codes[labelled]]))
        return np.unique(pairs.f0, return_counts=True)


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _scan(batches: Iterable[pd.DataFrame], max_chars: int) -> _Scan:
    """The first pass over the batches (:class:`_Scan`)."""
    columns: list[str] | None = None
    rows = 0
    keys, has_key, codes = [], [], []
    code_of: dict[str, int] = {}
    for part in batches:
        if columns is None:
            columns = [str(c) for c in part.columns]
        n = len(part)
        rows += n
        if TEXT in part.columns:
            norm = [normalise_text(t, max_chars) if isinstance(t, str) else ""
                    for t in _as_text(part[TEXT])]
            keys.append(np.fromiter((_text_hash(t) if t else 0 for t in norm), np.uint64, n))
            has_key.append(np.fromiter((bool(t) for t in norm), bool, n))
        if LABEL in part.columns:
            codes.append(np.fromiter((-1 if v is None else code_of.setdefault(v, len(code_of))
                                      for v in _as_text(part[LABEL])), np.int64, n))
    return _Scan(columns=columns or [], rows=rows,
                 keys=np.concatenate(keys) if keys else np.zeros(rows, np.uint64),
                 has_key=np.concatenate(has_key) if has_key else np.zeros(rows, bool),
                 label_codes=np.concatenate(codes) if codes else np.full(rows, -1, np.int64),
                 label_names=list(code_of))


def _prepare_frame(df: pd.DataFrame, start: int, scan: _Scan, labels: list[str],
                   missing: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frame GX checks for one batch (escaped required columns and the helper columns,
    the row's position in the data as index) and its required columns as they are (for
    examples). The helper columns that depend on other rows come from ``scan``."""
    index = pd.RangeIndex(start, start + len(df))
    rows = slice(start, start + len(df))
    frame = pd.DataFrame(index=index)
    raw = pd.DataFrame(index=index)
    for column in REQUIRED_COLUMNS:
        if column not in missing:
            raw[column] = _as_text(df[column]).set_axis(index)
            frame[column] = _escaped(raw[column])
    if TEXT not in missing:
        text = raw[TEXT]
        frame[TEXT_CHARS] = text.str.len().astype(float)
        cjk = text.str.count(CJK_PATTERN)
        visible = text.str.replace(r"\s+", "", regex=True).str.len()
        frame[CJK_SHARE] = (cjk / visible.where(visible > 0)).astype(float)
        ids = np.searchsorted(scan.unique_keys, scan.keys[rows]).astype(float)
        frame[TEXT_KEY] = np.where(scan.has_key[rows], ids, np.nan)
    if LABEL not in missing:
        counts = scan.label_counts(labels)
        total = sum(counts.values())
        share = np.array([counts.get(name, 0) / total if counts.get(name) else np.nan
                          for name in scan.label_names] + [np.nan])
        frame[CLASS_SHARE] = share[scan.label_codes[rows]]  # code -1: the trailing NaN
    if not missing:
        keys, per_key = scan.labels_per_key
        codes = scan.label_codes[rows]
        found = np.searchsorted(keys, scan.keys[rows]).clip(max=max(len(keys) - 1, 0))
        labelled = scan.has_key[rows] & (codes >= 0)
        frame[LABELS_PER_TEXT] = np.where(labelled, per_key[found] if len(keys) else 0,
                                          np.nan).astype(float)
    return frame, raw


def _named(name: str, description: str, kind: type[Any], **kwargs: Any) -> Any:
    """An expectation carrying our stable id in ``meta["name"]`` and a Data Docs description."""
    return kind(meta={"name": name}, description=description, **kwargs)


def _expectations(scan: _Scan, p: ValidateParams, labels: list[str],
                  missing: list[str], observed: dict[str, str],
                  skipped: list[str]) -> list[Any]:
    """The suite for this frame, in report order; fills ``observed`` and ``skipped``."""
    from great_expectations import expectations as ex

    most = f"for at least {p.mostly:.0%} of rows"
    label_mostly = {"mostly": p.mostly} if p.on_bad_rows == "quarantine" else {}
    shown_labels = html.escape(str(labels))  # descriptions are rendered as HTML
    suite = [_named(f"{column}_column_exists", f"Column `{column}` exists",
                    ex.ExpectColumnToExist, column=column) for column in REQUIRED_COLUMNS]
    text_checks = [
        _named("text_not_null", f"`text` is not null {most}",
               ex.ExpectColumnValuesToNotBeNull, column=TEXT, mostly=p.mostly),
        _named("text_not_empty", f"`text` is not whitespace-only {most}",
               ex.ExpectColumnValuesToMatchRegex, column=TEXT, regex=r"\S", mostly=p.mostly),
        _named("text_length", f"`{TEXT_CHARS}` (characters of `text`) is within "
               f"{p.min_text_chars}-{p.max_text_chars} {most}",
               ex.ExpectColumnValuesToBeBetween, column=TEXT_CHARS,
               min_value=p.min_text_chars, max_value=p.max_text_chars, mostly=p.mostly),
        _named(CJK_SHARE, f"`{CJK_SHARE}` (CJK / non-whitespace characters of `text`) is at "
               f"least {p.min_cjk_share:g} {most}",
               ex.ExpectColumnValuesToBeBetween, column=CJK_SHARE,
               min_value=p.min_cjk_share, max_value=1.0, mostly=p.mostly),
        _named("duplicate_share", f"`{TEXT_KEY}` (the normalised text) repeats an earlier "
               f"row's for at most {p.max_duplicate_share:.0%} of non-empty texts",
               ex.ExpectColumnProportionOfUniqueValuesToBeBetween, column=TEXT_KEY,
               min_value=1 - p.max_duplicate_share),
    ]
    label_checks = [_named("label_not_null", "`label` is never null" if not label_mostly
                           else f"`label` is not null {most}",
                           ex.ExpectColumnValuesToNotBeNull, column=LABEL, **label_mostly)]
    if labels:
        label_checks.append(_named("label_in_set", f"`label` is one of {shown_labels}",
                                   ex.ExpectColumnValuesToBeInSet, column=LABEL,
                                   value_set=[html.escape(v) for v in labels],
                                   **label_mostly))
        if p.min_class_share > 0:
            label_checks.append(_named(
                "label_classes_present", f"every declared label of {shown_labels} occurs",
                ex.ExpectColumnDistinctValuesToContainSet, column=LABEL,
                value_set=[html.escape(v) for v in labels]))
    label_checks.append(_named(
        "class_balance", f"`{CLASS_SHARE}` (share of the row's label among labelled rows) is "
        f"within [{p.min_class_share:g}, {p.max_class_share:g}] for every row",
        ex.ExpectColumnValuesToBeBetween, column=CLASS_SHARE,
        min_value=p.min_class_share, max_value=p.max_class_share))

    for column, checks in ((TEXT, text_checks), (LABEL, label_checks)):
        if column in missing:
            skipped.extend(c.meta["name"] for c in checks)
        else:
            suite.extend(checks)
    conflict = _named(
        "conflict_share", f"`{LABELS_PER_TEXT}` (labels of the row's normalised text) is 1 "
        f"for at least {1 - p.max_conflict_share:.0%} of labelled rows",
        ex.ExpectColumnValuesToBeBetween, column=LABELS_PER_TEXT, max_value=1,
        mostly=1 - p.max_conflict_share)
    if missing:
        skipped.append(conflict.meta["name"])
    else:
        suite.append(conflict)
    suite.append(_named("row_count", f"at least {p.min_rows:,} rows",
                        ex.ExpectTableRowCountToBeBetween, min_value=p.min_rows))
    if LABEL not in missing:
        observed["class_balance"] = _class_shares(scan.label_counts(labels), labels, p)
    return suite


def _class_shares(counts: Counter[str], labels: list[str], p: ValidateParams) -> str:
    """E.g. ``"shares of 800 labelled rows: negative=400 (50.0%), positive=400 (50.0%)"``
    from the rows per counted label."""
    total = sum(counts.values())
    parts = []
    for name in labels or sorted(counts):
        n = counts.get(name, 0)
        share = n / total if total else 0.0
        flag = ""
        if share < p.min_class_share:
            flag = f" < min {p.min_class_share:.0%}"
        elif share > p.max_class_share:
            flag = f" > max {p.max_class_share:.0%}"
        parts.append(f"{name}={n:,} ({share:.1%}{flag})")
    return f"shares of {total:,} labelled rows: " + (", ".join(parts) or "none")


def _make_context(docs_dir: Path | None) -> Any:
    """A fresh in-memory GX context; with ``docs_dir``, a Data Docs site rooted there."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.get_config().data_docs_sites or {}):
        context.delete_data_docs_site(site)  # the default site lives in a temporary dir
    if docs_dir is not None:
        docs_dir = Path(docs_dir).resolve()
        for entry in _DOCS_ENTRIES:  # stale pages from earlier runs; nothing else is touched
            target = docs_dir / entry
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    return context


class _Totals:
    """One expectation's results over all batches, added up into one outcome."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = str(config.meta["name"])
        self.batches_succeed = True
        self.error: str | None = None
        self.first: dict[str, Any] | None = None
        self.counts: Counter[str] | None = None  # row-level (map) expectations only
        self.examples: list[dict[str, Any]] = []

    def add(self, result: Any, frame: pd.DataFrame, raw: pd.DataFrame) -> None:
        """Add one batch's result (``frame`` and ``raw`` as :func:`_prepare_frame` built
        them, for the examples)."""
        res = result.result or {}
        self.first = res if self.first is None else self.first
        self.batches_succeed &= bool(result.success)
        if result.exception_info and result.exception_info.get("raised_exception"):
            self.error = self.error or str(result.exception_info.get("exception_message",
                                                                     "unknown error"))
        if "unexpected_count" in res:
            self.counts = self.counts or Counter()
            for key in ("element_count", "missing_count", "unexpected_count"):
                self.counts[key] += int(res.get(key) or 0)
            wanted = MAX_EXAMPLES - len(self.examples)
            if self.name != "class_balance" and wanted > 0:
                rows = (res.get("partial_unexpected_index_list") or [])[:wanted]
                self.examples += _examples(frame, raw, rows, self.name)

    def success(self, scan: _Scan) -> bool:
        """GX's verdict on all the rows: row-level ones by its ``mostly`` rule on the totals,
        the table-level ones on the totals of the first pass."""
        from great_expectations.expectations.expectation import _mostly_success

        kwargs, kind = self.config.kwargs, self.config.type
        if self.counts is not None:
            total = self.counts["element_count"]
            considered = total - self.counts["missing_count"]
            return (total == 0 or considered == 0
                    or _mostly_success(considered, self.counts["unexpected_count"],
                                       kwargs.get("mostly") or 1.0))
        if self.name == "duplicate_share" and scan.has_key.any():
            return len(scan.unique_keys) / int(scan.has_key.sum()) >= kwargs["min_value"]
        if kind == "expect_table_row_count_to_be_between":
            return scan.rows >= kwargs["min_value"]
        if kind == "expect_column_distinct_values_to_contain_set":
            return not self._absent(scan)
        return self.batches_succeed

    def _absent(self, scan: _Scan) -> list[str]:
        return [v for v in map(html.unescape, self.config.kwargs["value_set"])
                if v not in set(scan.label_names)]

    def outcome(self, scan: _Scan, observed: dict[str, str]) -> ExpectationOutcome:
        kwargs, kind = self.config.kwargs, self.config.type
        success = self.error is None and self.success(scan)
        if self.error is not None:
            text = f"GX error: {self.error}"
        elif self.name in observed:
            text = observed[self.name]
        elif self.counts is not None:
            text = _map_observed(self.counts, kwargs.get("mostly"))
            if self.name == "conflict_share":
                text = f"conflicting labels: {text}"
        elif self.name == "duplicate_share":
            texts = int(scan.has_key.sum())
            bound = f"(max {100 * (1 - kwargs['min_value']):.4g}%)"
            text = (f"{1 - len(scan.unique_keys) / texts:.2%} of {texts:,} non-empty texts "
                    f"repeat an earlier one {bound}" if texts else f"no non-empty texts {bound}")
        elif kind == "expect_table_row_count_to_be_between":
            text = f"rows={scan.rows:,} (min {kwargs['min_value']:,})"
            if scan.rows == 0:
                text += ": no data rows"
        elif kind == "expect_column_distinct_values_to_contain_set":
            absent = self._absent(scan)
            text = f"absent labels: {absent}" if absent else "all declared labels occur"
        else:
            text = json.dumps(_plain(self.first), sort_keys=True, ensure_ascii=False)
        return ExpectationOutcome(name=self.name, expectation=str(kind), success=success,
                                  observed=text, examples=self.examples)


def _bad_rows(results: list[Any]) -> dict[int, list[str]]:
    """Row -> the row-level checks (:data:`ROW_CHECKS`) it fails, from COMPLETE results."""
    by_name = {r.expectation_config.meta["name"]: r.result or {} for r in results}
    failed: dict[int, list[str]] = {}
    for name in ROW_CHECKS:
        for row in by_name.get(name, {}).get("unexpected_index_list") or []:
            failed.setdefault(int(row), []).append(name)
    return dict(sorted(failed.items()))


def _map_observed(res: dict[str, Any], mostly: float | None) -> str:
    """E.g. ``"12 of 35,123 rows (0.03%) fail (mostly=0.99 allows 1.00%)"``."""
    bad = int(res["unexpected_count"])
    total = int(res.get("element_count", 0))
    checked = total - int(res.get("missing_count", 0) or 0)
    share = bad / checked if checked else 0.0
    scope = f"{checked:,} rows" if checked == total else f"{checked:,} non-null rows"
    text = f"{bad:,} of {scope} ({share:.2%}) fail"
    if mostly is not None:
        text += f" (mostly={mostly:g} allows {1 - mostly:.2%})"
    return text


def _examples(frame: pd.DataFrame, raw: pd.DataFrame, rows: list[Any],
              name: str) -> list[dict[str, Any]]:
    """Up to :data:`MAX_EXAMPLES` offending rows, with their raw text (shortened) and label
    and the computed value the check is about."""
    value_of = {CJK_SHARE: lambda r: round(float(frame.at[r, CJK_SHARE]), 3),
                "text_length": lambda r: int(frame.at[r, TEXT_CHARS]),
                "conflict_share": lambda r: int(frame.at[r, LABELS_PER_TEXT])}.get(name)
    out = []
    for row in rows[:MAX_EXAMPLES]:
        r = int(row)
        example: dict[str, Any] = {"row": r}
        for column in (TEXT, LABEL):
            value = raw.at[r, column] if column in raw.columns else None
            if isinstance(value, str) and column == TEXT and len(value) > EXAMPLE_CHARS:
                value = value[: EXAMPLE_CHARS - 1] + "…"
            example[column] = value if isinstance(value, str) else None
        if value_of is not None:
            example["value"] = value_of(r)
        out.append(example)
    return out


def _plain(value: Any) -> Any:
    """Make a GX result JSON-safe (NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
