"""Data validation of the raw corpus with Great Expectations (GX Core 1.x).

This is the only module that imports GX. It is a small library, no orchestration:

* :func:`read_raw_csv` loads a user's CSV tolerantly (every cell a string, empty cells null),
  refusing a file above the size bound or in an encoding it cannot name;
* :func:`validate_frame` runs one expectation suite over the raw frame and returns a
  :class:`ValidationReport` (optionally building GX Data Docs into a directory);
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

With ``on_bad_rows: quarantine`` the rows failing a row-level check (the six above) are
quarantined instead of kept: :func:`quarantine_table` lists them and :mod:`senti.prepare`'s
stage removes them. The bounds still hold: a source where more than ``1 - mostly`` of the rows
are bad fails validation either way.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from senti.config import ValidateParams
from senti.io import decode_text, read_bounded, write_json
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
# CJK Unified Ideographs, Extension A and Compatibility Ideographs.
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


def validate_frame(df: pd.DataFrame, params: ValidateParams, labels: Sequence[str],
                   docs_dir: Path | None = None) -> ValidationReport:
    """Validate the raw frame (columns ``text`` and ``label``; others are ignored).

    ``labels`` is the declared label set (compared as strings); empty means "no declared
    set": ``label_in_set`` is skipped and class balance is checked over the observed labels.
    With ``docs_dir``, GX Data Docs are (re)built into exactly that directory and the path of
    its ``index.html`` is returned in the report.
    """
    import great_expectations as gx

    labels = [str(label) for label in labels]
    frame, raw, missing = _prepare_frame(df, labels, params.max_text_chars)
    context = _make_context(docs_dir)
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    observed: dict[str, str] = {}
    skipped: list[str] = []
    expectations = _expectations(raw, params, labels, missing, observed, skipped)
    columns = [str(c) for c in df.columns]
    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
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
    result = checkpoint.run(batch_parameters={"dataframe": frame})

    (suite_result,) = result.run_results.values()
    outcomes = sorted((_outcome(r, frame, raw, observed) for r in suite_result.results),
                      key=lambda o: order[o.name])
    bad_rows = _bad_rows(suite_result.results) if quarantine else {}
    index = None if docs_dir is None else str(Path(docs_dir) / "index.html")
    return ValidationReport(success=bool(suite_result.success), rows=len(df), outcomes=outcomes,
                            data_docs=index, skipped=skipped, on_bad_rows=params.on_bad_rows,
                            quarantined=len(bad_rows), bad_rows=bad_rows)


def quarantine_table(df: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    """The rows of ``df`` that ``report`` quarantines, with the checks each fails (``reason``,
    ``;``-separated) and its raw text and label; no rows unless ``on_bad_rows`` is
    ``quarantine``. ``row`` is the 0-based position in ``df``."""
    rows = sorted(report.bad_rows)
    table = pd.DataFrame({"row": rows, "reason": [";".join(report.bad_rows[r]) for r in rows]})
    for column in (TEXT, LABEL):
        values = df[column].iloc[rows] if column in df.columns else [None] * len(rows)
        table[column] = list(values)
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


def _prepare_frame(df: pd.DataFrame, labels: list[str],
                   max_chars: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The frame GX checks (escaped required columns and the helper columns, positional
    index), the required columns as they are (for examples), and the missing columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    frame = pd.DataFrame(index=pd.RangeIndex(len(df)))
    raw = pd.DataFrame(index=frame.index)
    for column in REQUIRED_COLUMNS:
        if column not in missing:
            raw[column] = _as_text(df[column]).reset_index(drop=True)
            frame[column] = _escaped(raw[column])
    if TEXT not in missing:
        text = raw[TEXT]
        frame[TEXT_CHARS] = text.str.len().astype(float)
        cjk = text.str.count(CJK_PATTERN)
        visible = text.str.replace(r"\s+", "", regex=True).str.len()
        frame[CJK_SHARE] = (cjk / visible.where(visible > 0)).astype(float)
        key = text.map(lambda t: normalise_text(t, max_chars) or None, na_action="ignore")
        codes = pd.Series(pd.factorize(key)[0], index=frame.index)
        frame[TEXT_KEY] = codes.where(codes >= 0).astype(float)
    if LABEL not in missing:
        label = raw[LABEL]
        counted = label.isin(labels) if labels else label.notna()
        shares = label[counted].value_counts(normalize=True)
        frame[CLASS_SHARE] = label.map(shares).where(counted).astype(float)
    if not missing:
        labelled = frame[TEXT_KEY].notna() & raw[LABEL].notna()
        per_text = raw[LABEL][labelled].groupby(frame[TEXT_KEY][labelled]).transform("nunique")
        frame[LABELS_PER_TEXT] = per_text.reindex(frame.index).astype(float)
    return frame, raw, missing


def _named(name: str, description: str, kind: type[Any], **kwargs: Any) -> Any:
    """An expectation carrying our stable id in ``meta["name"]`` and a Data Docs description."""
    return kind(meta={"name": name}, description=description, **kwargs)


def _expectations(raw: pd.DataFrame, p: ValidateParams, labels: list[str],
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
        observed["class_balance"] = _class_shares(raw[LABEL], labels, p)
    return suite


def _class_shares(label: pd.Series, labels: list[str], p: ValidateParams) -> str:
    """E.g. ``"shares of 800 labelled rows: negative=400 (50.0%), positive=400 (50.0%)"``."""
    counted = label[label.isin(labels)] if labels else label.dropna()
    counts = counted.value_counts()
    parts = []
    for name in labels or sorted(counts.index):
        n = int(counts.get(name, 0))
        share = n / len(counted) if len(counted) else 0.0
        flag = ""
        if share < p.min_class_share:
            flag = f" < min {p.min_class_share:.0%}"
        elif share > p.max_class_share:
            flag = f" > max {p.max_class_share:.0%}"
        parts.append(f"{name}={n:,} ({share:.1%}{flag})")
    return f"shares of {len(counted):,} labelled rows: " + (", ".join(parts) or "none")


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


def _outcome(result: Any, frame: pd.DataFrame, raw: pd.DataFrame,
             observed: dict[str, str]) -> ExpectationOutcome:
    config = result.expectation_config
    name = str(config.meta["name"])
    kwargs = config.kwargs
    res = result.result or {}
    success = bool(result.success)
    examples: list[dict[str, Any]] = []
    if result.exception_info and result.exception_info.get("raised_exception"):
        message = str(result.exception_info.get("exception_message", "unknown error"))
        text = f"GX error: {message}"
    elif name in observed:
        text = observed[name]
    elif "unexpected_count" in res:
        text = _map_observed(res, kwargs.get("mostly"))
        if name == "conflict_share":
            text = f"conflicting labels: {text}"
        if name != "class_balance":
            examples = _examples(frame, raw, res.get("partial_unexpected_index_list") or [],
                                 name)
    elif name == "duplicate_share":
        texts = int(frame[TEXT_KEY].notna().sum())
        bound = f"(max {100 * (1 - kwargs['min_value']):.4g}%)"
        text = (f"{1 - float(res['observed_value']):.2%} of {texts:,} non-empty texts repeat "
                f"an earlier one {bound}" if texts else f"no non-empty texts {bound}")
    elif config.type == "expect_table_row_count_to_be_between":
        rows = int(res.get("observed_value", len(frame)))
        text = f"rows={rows:,} (min {kwargs['min_value']:,})"
        if rows == 0:
            text += ": no data rows"
    elif config.type == "expect_column_distinct_values_to_contain_set":
        seen = set(raw[LABEL].dropna())  # GX 1.24 leaves observed_value None here
        absent = [v for v in map(html.unescape, kwargs["value_set"]) if v not in seen]
        text = f"absent labels: {absent}" if absent else "all declared labels occur"
    else:
        text = json.dumps(_plain(res), sort_keys=True, ensure_ascii=False)
    return ExpectationOutcome(name=name, expectation=str(config.type), success=success,
                              observed=text, examples=examples)


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
