"""Drift: how far new data, or a model's predictions on it, has moved from a registered
version's (by default the @champion's).

A *profile* summarises data in counts whose size is bounded whatever the data's: label
counts, a histogram of text lengths (characters of the normalised text, capped at
``drift.max_length``) and the ``drift.max_tokens`` most frequent tokens; for predictions,
predicted-label counts and a histogram of the top-class probability. Every registered version
logs the profile of its data and of its test-set predictions (``drift/profile.json``, see
:func:`senti.registry.log_drift_profile`); :func:`compare` measures new data against it:

================  ==========================================================  ==============
feature           statistic (a shift above its threshold)                     test
================  ==========================================================  ==============
label             PSI of the label shares                                     chi-square
text_length       PSI over the reference's quantile bins                      two-sample KS
oov_rate          OOV rate under the reference's vocabulary, minus the
                  reference's own held-out OOV rate                           --
unseen_tokens     share of tokens the reference data never had, minus the
                  reference's held-out share of tokens its train split lacks  --
predicted_label   PSI of the predicted-label shares (predictions only)        chi-square
confidence        PSI over the reference's quantile bins (predictions only)   two-sample KS
================  ==========================================================  ==============

A feature drifted when its effect size is above the threshold AND, where a test applies, the
test finds the difference at ``drift.alpha``: on the corpus's 17k rows a p-value alone flags
shifts far too small to matter, on a few dozen rows an effect size alone flags noise. The
token rates are compared with the reference's held-out (val+test) rates, the novelty that
fresh texts of its own distribution show: its vocabulary was built from its train split.
Tokens beyond a profile's ``max_tokens`` count as unseen (and as OOV on the new side), so the
two token rates are upper bounds when a profile had to drop its rarest tokens.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from senti.batch import VERSION_COLUMN
from senti.config import DriftParams, Layout
from senti.prepare import clean
from senti.validate import read_raw_csv
from senti.vocab import Vocabulary, load_vocab

FORMAT = "senti-drift-profile/1"
CONFIDENCE_DECIMALS = 3  # confidences are counted at this resolution
SHARE_FLOOR = 1e-4  # PSI: an empty bin counts as this share (else one empty bin is infinite)
EXAMPLES = 10  # most frequent unseen tokens a report names
SHOWN_LABELS = 6  # labels a feature's summary names; more are counted
HELDOUT = ("val", "test")
UNCLASSIFIED = "(unclassified)"  # the predicted label of a row the model declined
# Rows a profile read back may count: comparing expands its histograms to one float per row
# (400 MB at this bound; 256 MiB of CSV, data.max_source_bytes' default, is far fewer rows).
MAX_ROWS = 50_000_000

# The types of a profile's fields: checked when one is read back (VersionProfile.from_json).
Rows = Annotated[int, Field(strict=True, ge=1, le=MAX_ROWS)]
Count = Annotated[int, Field(strict=True, ge=0)]
Share = Annotated[float, Field(strict=True, ge=0, le=1)]
Length = Annotated[int, Field(ge=0)]  # a JSON key: the text of a number
Confidence = Annotated[float, Field(ge=0, le=1)]  # a JSON key
_STRICT = ConfigDict(extra="forbid")  # a key a profile does not have is an error


class NoReference(LookupError):
    """Nothing to compare with: no champion, or a version logged without a profile."""


def _counts(values: Iterable[Any]) -> dict[Any, int]:
    return {key: int(n) for key, n in sorted(Counter(values).items())}


@dataclass(frozen=True)
class DataProfile:
    """Counts that summarise a dataset (:func:`data_profile`)."""

    __pydantic_config__ = _STRICT

    rows: Rows
    labels: dict[str, Count]  # label -> rows ({}: unlabelled texts)
    lengths: dict[Length, Count]  # text length in characters (capped at max_length) -> rows
    tokens: dict[str, Count]  # the max_tokens most frequent tokens -> occurrences, in that order
    tokens_total: Count  # every token occurrence, kept in ``tokens`` or not
    token_types: Count  # distinct tokens, kept or not
    heldout_oov_rate: Share | None = None  # val+test tokens not in its own vocabulary
    heldout_unseen_rate: Share | None = None  # val+test tokens its train split lacks


@dataclass(frozen=True)
class PredictionProfile:
    """Counts that summarise predictions (:func:`prediction_profile`)."""

    __pydantic_config__ = _STRICT

    rows: Rows
    labels: dict[str, Count]  # predicted label -> rows
    confidence: dict[Confidence, Count]  # top-class probability, rounded -> rows (classified)


@dataclass(frozen=True)
class VersionProfile:
    """What a registered version logs about itself: its data and its test-set predictions."""

    __pydantic_config__ = _STRICT

    data: DataProfile
    predictions: PredictionProfile

    def to_json(self) -> str:
        payload = {"format": FORMAT, "data": asdict(self.data),
                   "predictions": asdict(self.predictions)}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> VersionProfile:
        """A profile read back (from the registry: not trusted): a ValueError names the first
        field whose type, key or count is wrong, or whose counts disagree with its rows."""
        payload = json.loads(text)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"not a senti drift profile (expected format {FORMAT})")
        fields = {key: value for key, value in payload.items() if key != "format"}
        try:
            profile = _PROFILE.validate_python(fields)
            _check_totals(profile)
        except ValidationError as exc:
            raise ValueError(f"not a usable senti drift profile: {_field_error(exc)}") from None
        except ValueError as exc:
            raise ValueError(f"not a usable senti drift profile: {exc}") from None
        return profile


_PROFILE = TypeAdapter(VersionProfile)


def _field_error(exc: ValidationError) -> str:
    """The first error of a profile's validation, as ``data.lengths.7: <what is wrong>``."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part != "[key]")
    return f"{where}: {error['msg']}"


def _check_totals(profile: VersionProfile) -> None:
    """Each histogram counts the profile's rows (confidences: its classified rows)."""
    data, predictions = profile.data, profile.predictions
    totals = [("data.lengths", data.lengths, data.rows),
              ("data.labels", data.labels, data.rows if data.labels else 0),
              ("predictions.labels", predictions.labels, predictions.rows)]
    for name, counts, rows in totals:
        if sum(counts.values()) != rows:
            raise ValueError(f"{name} counts {sum(counts.values())} rows, not "
                             f"{name.split('.')[0]}.rows={rows}")
    if (classified := sum(predictions.confidence.values())) > predictions.rows:
        raise ValueError(f"predictions.confidence counts {classified} rows, more than "
                         f"predictions.rows={predictions.rows}")


@dataclass(frozen=True)
class Reference:
    """What new data is compared with: a registered version's profile and vocabulary."""

    name: str  # e.g. "senti-sentiment v3 (@champion)"
    profile: VersionProfile
    vocab: Vocabulary
    user_dict: Path | None = None  # the version's jieba user dictionary: new texts are cut with it


# ---- profiles -----------------------------------------------------------------------------

def data_profile(frame: pd.DataFrame, params: DriftParams,
                 vocab: Vocabulary | None = None) -> DataProfile:
    """The profile of normalised texts (column ``text``) with their ``tokens`` and, when the
    frame has a ``label`` column, their labels. With the data's own ``vocab`` (built from the
    rows whose ``split`` is train), also its held-out OOV and unseen-token rates: a reference
    needs them."""
    counts = Counter(token for tokens in frame["tokens"] for token in tokens)
    if not counts:
        raise ValueError("no texts (or no tokens) to profile")
    kept = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:params.max_tokens]
    heldout: dict[str, float] = {}
    if vocab is not None:
        held = frame.loc[frame["split"].isin(HELDOUT), "tokens"]
        seen = {t for tokens in frame.loc[frame["split"] == "train", "tokens"] for t in tokens}
        total = sum(len(tokens) for tokens in held)
        unseen = sum(t not in seen for tokens in held for t in tokens)
        heldout = {"heldout_oov_rate": vocab.oov_rate(held),
                   "heldout_unseen_rate": unseen / total if total else 0.0}
    return DataProfile(
        rows=len(frame),
        labels=_counts(frame["label"].astype(str)) if "label" in frame else {},
        lengths=_counts(int(n) for n in frame["text"].str.len().clip(upper=params.max_length)),
        tokens=dict(kept), tokens_total=sum(counts.values()), token_types=len(counts),
        **heldout)


def prediction_profile(labels: Iterable[str | None],
                       confidence: Iterable[float]) -> PredictionProfile:
    """The profile of predictions: each row's label and the probability given to it. A row
    without a label (one the model declined, e.g. text with no Chinese: :mod:`senti.serve`)
    counts as :data:`UNCLASSIFIED` and has no confidence."""
    names = pd.Series(list(labels), dtype=object)
    values = np.asarray(list(confidence), dtype=float)
    if names.empty:
        raise ValueError("no predictions to profile")
    classified = values[names.notna().to_numpy()] if len(values) == len(names) else None
    if classified is None or not np.all((classified >= 0) & (classified <= 1)):
        raise ValueError("every classified prediction needs a confidence in [0, 1]")
    return PredictionProfile(len(names), _counts(names.fillna(UNCLASSIFIED).astype(str)),
                             _counts(np.round(classified, CONFIDENCE_DECIMALS).tolist()))


def version_profile(layout: Layout, params: DriftParams) -> VersionProfile:
    """The profile of a project's pipeline outputs: its segmented dataset under its own
    vocabulary, and the evaluate stage's test-set predictions."""
    predictions = pd.read_csv(layout.predictions)
    return VersionProfile(
        data_profile(pd.read_parquet(layout.tokens, columns=["text", "label", "split", "tokens"]),
                     params, load_vocab(layout.vocab)),
        prediction_profile(predictions["predicted"], predictions["confidence"]))


# ---- comparison ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Feature:
    """One compared feature: its effect size against its threshold, and its test."""

    name: str
    statistic: str  # "PSI" | "increase"
    value: float
    threshold: float
    test: str | None  # "chi-square" | "KS" | None
    p_value: float | None
    reference: str  # a short summary of each side
    current: str
    drifted: bool
    examples: tuple[str, ...] = ()  # e.g. the most frequent unseen tokens


@dataclass(frozen=True)
class DriftReport:
    """New data against a reference version, feature by feature (:func:`compare`)."""

    reference: str
    current: str
    reference_rows: int
    current_rows: int
    alpha: float
    features: tuple[Feature, ...]

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def headline(self) -> str:
        against = f"{self.current} against {self.reference}"
        return (f"drift in {', '.join(self.drifted)}: {against}" if self.drifted
                else f"no drift: {against}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    p = np.maximum(reference / reference.sum(), SHARE_FLOOR)
    q = np.maximum(current / current.sum(), SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _shares(counts: Mapping[str, int], order: list[str]) -> str:
    total = sum(counts.values())
    shown = [label for label in order if label in counts]
    text = ", ".join(f"{label} {counts[label] / total:.1%}" for label in shown[:SHOWN_LABELS])
    more = len(shown) - SHOWN_LABELS
    return text + (f" (+{more} labels)" if more > 0 else "")


def _categorical(name: str, reference: Mapping[str, int], current: Mapping[str, int],
                 params: DriftParams) -> Feature:
    from scipy import stats  # ~1.5 s to import: only when a report is computed

    # the reference's labels, most frequent first, then new ones
    labels = sorted(set(reference) | set(current),
                    key=lambda k: (-reference.get(k, 0), -current.get(k, 0), k))
    table = np.array([[reference.get(k, 0) for k in labels], [current.get(k, 0) for k in labels]],
                     dtype=float)
    psi = _psi(table[0], table[1])
    p = float(stats.chi2_contingency(table).pvalue) if len(labels) > 1 else 1.0
    return Feature(name, "PSI", psi, params.psi, "chi-square", p, _shares(reference, labels),
                   _shares(current, labels), psi > params.psi and p < params.alpha)


def _sample(histogram: Mapping[float, int]) -> np.ndarray:
    return np.repeat(np.fromiter(histogram.keys(), float), np.fromiter(histogram.values(), int))


def _quantiles(sample: np.ndarray, unit: str) -> str:
    p10, p50, p90 = np.quantile(sample, [0.1, 0.5, 0.9], method="inverted_cdf")
    return f"p10 {p10:g}, median {p50:g}, p90 {p90:g} {unit}".rstrip()


def _distribution(name: str, reference: Mapping[float, int], current: Mapping[float, int],
                  params: DriftParams, unit: str = "") -> Feature:
    from scipy import stats

    ref, cur = _sample(reference), _sample(current)
    cuts = np.linspace(0, 1, params.psi_bins + 1)[1:-1]
    edges = np.unique(np.quantile(ref, cuts, method="inverted_cdf"))  # bins (e[i-1], e[i]]

    def binned(sample: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, sample), minlength=len(edges) + 1)

    psi = _psi(binned(ref), binned(cur))
    p = float(stats.ks_2samp(ref, cur).pvalue)
    return Feature(name, "PSI", psi, params.psi, "KS", p, _quantiles(ref, unit),
                   _quantiles(cur, unit), psi > params.psi and p < params.alpha)


def _token_features(reference: Reference, data: DataProfile,
                    params: DriftParams) -> list[Feature]:
    ref = reference.profile.data
    if ref.heldout_oov_rate is None or ref.heldout_unseen_rate is None:
        raise ValueError(f"{reference.name}: its profile has no held-out token rates")
    dropped = data.tokens_total - sum(data.tokens.values())  # beyond max_tokens: unknown
    known = set(reference.vocab.tokens)
    oov = (sum(n for t, n in data.tokens.items() if t not in known) + dropped) / data.tokens_total
    unseen = [t for t in data.tokens if t not in ref.tokens]  # most frequent first
    unseen_rate = (sum(data.tokens[t] for t in unseen) + dropped) / data.tokens_total
    oov_increase = oov - ref.heldout_oov_rate
    unseen_increase = unseen_rate - ref.heldout_unseen_rate
    return [
        Feature("oov_rate", "increase", oov_increase, params.oov_increase, None, None,
                f"{ref.heldout_oov_rate:.1%} of held-out tokens", f"{oov:.1%} of tokens",
                oov_increase > params.oov_increase),
        Feature("unseen_tokens", "increase", unseen_increase, params.unseen_increase, None,
                None, f"{ref.heldout_unseen_rate:.1%} of held-out tokens",
                f"{unseen_rate:.1%} of tokens", unseen_increase > params.unseen_increase,
                tuple(unseen[:EXAMPLES])),
    ]


def compare(reference: Reference, data: DataProfile, params: DriftParams,
            predictions: PredictionProfile | None = None,
            current: str = "new data") -> DriftReport:
    """``data`` (and ``predictions``, when given) against the reference version's.

    The label feature needs labelled data; the prediction features are compared with the
    reference's test-set predictions (rows the model declined count as a predicted label of
    their own, :data:`UNCLASSIFIED`). ``current`` names the new data in the report.
    """
    ref = reference.profile
    features = [_categorical("label", ref.data.labels, data.labels, params)] if data.labels \
        else []
    features.append(_distribution("text_length", ref.data.lengths, data.lengths, params,
                                  "chars"))
    features += _token_features(reference, data, params)
    if predictions is not None:
        features.append(_categorical("predicted_label", ref.predictions.labels,
                                     predictions.labels, params))
        if predictions.confidence:  # some row was classified
            features.append(_distribution("confidence", ref.predictions.confidence,
                                          predictions.confidence, params))
    return DriftReport(reference.name, current, ref.data.rows, data.rows, params.alpha,
                       tuple(features))


# ---- reading and rendering ----------------------------------------------------------------

def summary_lines(report: DriftReport) -> list[str]:
    """One line per feature, for a terminal."""
    lines = []
    for f in report.features:
        test = f", {f.test} p={f.p_value:.2g}" if f.p_value is not None else ""
        limit = f"{'>' if f.drifted else '<='} {f.threshold:g}"
        lines.append(f"{'DRIFT' if f.drifted else 'ok   '} {f.name:<15} {f.statistic} "
                     f"{f.value:+.3f} ({limit}{test}): {f.reference} -> {f.current}")
        if f.examples:
            lines.append(f"      most frequent unseen tokens: {' '.join(f.examples)}")
    return lines


_MARKDOWN = re.compile(r"([\\`*_\[\]|])")


def _cell(text: str) -> str:
    """Text (labels, tokens, file names) as literal markdown: HTML and markup escaped."""
    return _MARKDOWN.sub(r"\\\1", html.escape(" ".join(text.split())))


def render_markdown(report: DriftReport) -> str:
    """The report as markdown (an MLflow artifact, a Prefect artifact); text from the data is
    escaped, so a token like ``<script>`` stays text."""
    rows = "\n".join(
        f"| {f.name} | {f.statistic} | {f.value:+.4f} | {f.threshold:g} | {f.test or '-'} | "
        f"{'-' if f.p_value is None else f'{f.p_value:.3g}'} | {_cell(f.reference)} | "
        f"{_cell(f.current)} | {'**yes**' if f.drifted else 'no'} |"
        for f in report.features)
    examples = "".join(
        f"\nMost frequent {_cell(f.name.replace('_', ' '))} in the new data: "
        + ", ".join(f"`{html.escape(t).replace('`', '')}`" for t in f.examples) + "\n"
        for f in report.features if f.examples)
    return (f"# Drift: {'**' + ', '.join(report.drifted) + '**' if report.drifted else 'none'}"
            f"\n\n{_cell(report.current)} ({report.current_rows} rows) against "
            f"{_cell(report.reference)} ({report.reference_rows} rows). A feature drifted when "
            f"its statistic is above the threshold and, where a test applies, p < "
            f"{report.alpha:g}.\n\n| feature | statistic | value | threshold | test | p | "
            f"reference | new | drifted |\n|---|---|---|---|---|---|---|---|---|\n{rows}\n"
            f"{examples}")


def read_labelled_csv(path: Any, max_bytes: int, max_chars: int) -> pd.DataFrame:
    """A user's CSV (columns ``text`` and ``label``, at most ``max_bytes``) read and cleaned
    as the pipeline reads and cleans its data (texts clipped to ``max_chars``: see
    :func:`senti.validate.read_raw_csv`, :func:`senti.prepare.clean`); errors name the file."""
    raw = read_raw_csv(path, max_bytes)
    missing = [column for column in ("text", "label") if column not in raw.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing} (columns: {list(raw.columns)})")
    frame, _ = clean(raw, max_chars)
    if frame.empty:
        raise ValueError(f"{path}: no labelled non-empty texts")
    return frame


def read_predictions(path: Any, text_column: str = "text") -> pd.DataFrame:
    """A batch-prediction output (:mod:`senti.batch`): the texts, each row's ``label`` and
    ``probability`` (both empty in a row the model declined), and the ``model_version`` that
    made them (one version: a report compares one model with itself); errors name the file."""
    needed = [text_column, "label", "probability", VERSION_COLUMN]
    try:
        frame = pd.read_csv(path, dtype={text_column: str, "label": str, VERSION_COLUMN: str},
                            keep_default_na=False, na_values=[""],
                            usecols=lambda column: column in needed)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError,
            ValueError) as exc:
        raise ValueError(f"{path}: not a readable batch-prediction CSV ({exc})") from exc
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}: not an output of senti predict "
                         "--input/--output or the batch-predict flow")
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    probability = pd.to_numeric(frame["probability"], errors="coerce")
    declined = frame["label"].isna() & frame["probability"].isna()
    bad = frame.index[~declined & (frame["label"].isna() | probability.isna()
                                   | (probability < 0) | (probability > 1))]
    if len(bad):
        raise ValueError(f"{path}: rows {bad[:5].tolist()} have no label with a probability "
                         "in [0, 1]")
    unnamed = frame.index[frame[VERSION_COLUMN].isna()]
    if len(unnamed):
        raise ValueError(f"{path}: rows {unnamed[:5].tolist()} name no {VERSION_COLUMN}")
    versions = sorted(frame[VERSION_COLUMN].unique())
    if len(versions) != 1:
        raise ValueError(f"{path}: predictions of model versions {versions}: monitor one "
                         "version's predictions at a time")
    return frame.assign(probability=probability)
