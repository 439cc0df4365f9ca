"""Registry: every read and write of MLflow tracking and the model registry for a retrain,
the promotion gate and batch prediction.

A retrain is one run (:func:`log_retrain`) whose model is registered as a new version with
the ``challenger`` alias; the serving version holds ``champion``. The gate's logic is
:mod:`senti.promote`; here its models are loaded (:func:`evaluate_gate`) and its decisions
recorded (:func:`record_decision`, :func:`rollback`). Tag and artifact names are
:mod:`senti.tags`. The registered model is logged from code (:mod:`senti.pyfunc_model`) with
its own copy of the ``senti`` package, so loading it needs only public requirements.
Default store: a SQLite file in the project, artifacts next to it; ``MLFLOW_TRACKING_URI``
points elsewhere (e.g. a team's ``mlflow server``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path, PurePosixPath

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from senti import batch, lineage, tags, versioning
from senti import promote as gate
from senti.config import PARAMS_FILE, Layout, Params
from senti.io import read_json, sha256_file

INPUT_EXAMPLE = ["质量很好，物流也快", "太差了，再也不买了"]
PACKAGE_DIR = Path(__file__).parent  # logged with the model as its code
PYFUNC_MODEL = PACKAGE_DIR / "pyfunc_model.py"
# Public distributions the serving code (senti.pyfunc_model and the senti modules it
# imports) needs at load time, pinned to what trained the model. senti itself travels as code.
RUNTIME_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "jieba", "numpy", "pandas",
                        "pydantic", "annotated-types", "ruamel.yaml")


class RegistryError(RuntimeError):
    """MLflow could not do what was asked (e.g. load a model version)."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str
    created: bool  # False when an existing version already had these exact inputs


# Embedded-store URIs set by configure(): mlflow.set_tracking_uri copies its URI into
# MLFLOW_TRACKING_URI, which must not then read as a user's choice of server.
_EMBEDDED_URIS: set[str] = set()


def tracking_uri(layout: Layout) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it, else the project's embedded SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EMBEDDED_URIS else f"sqlite:///{layout.mlflow_db}"


def configure(layout: Layout, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    With the embedded store, artifacts go to ``mlartifacts/`` in the project rather than a
    path relative to whatever directory the command ran from.
    """
    uri = tracking_uri(layout)
    embedded = uri == f"sqlite:///{layout.mlflow_db}"
    if embedded:
        _EMBEDDED_URIS.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = layout.mlflow_artifacts.as_uri() if embedded else None
    return mlflow.create_experiment(experiment, artifact_location=location)


# ---- a retrain's run and its registered version -----------------------------------------

def find_version(model_name: str, fingerprint: str) -> ModelVersion | None:
    """The registered version trained on exactly these inputs, if any."""
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        return None
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get(tags.FINGERPRINT) == fingerprint:
            return version
    return None


def _requirements() -> list[str]:
    """``dist==version`` for each of :data:`RUNTIME_REQUIREMENTS` installed here."""
    pins = []
    for dist in RUNTIME_REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _log_history(history_csv: Path) -> None:
    history = pd.read_csv(history_csv)
    for row in history.to_dict("records"):
        step = int(row.pop("epoch"))
        mlflow.log_metrics({f"train.{k}": float(v) for k, v in row.items()}, step=step)


def _log_test_metrics(metrics: dict) -> None:
    for who in ("model", "baseline"):
        flat = {f"test.{who}.{k}": v for k, v in metrics[who].items()
                if isinstance(v, int | float)}
        for label, scores in metrics[who].get("per_class", {}).items():
            flat.update({f"test.{who}.{label}.{k}": v for k, v in scores.items()})
        mlflow.log_metrics(flat)


def _log_model(layout: Layout, params: Params, registered_name: str):
    """Log and register the pyfunc model from code; return its ModelInfo and the sha256 of
    each of its artifacts (by artifact key), hashed from the files that were logged."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "serving_config.json"
        config.write_text(json.dumps({"maxlen": params.model.maxlen}), encoding="utf-8")
        artifacts = {"model": str(layout.model_file), "vocab": str(layout.vocab),
                     "labels": str(layout.labels), "serving_config": str(config)}
        if params.segment.user_dict:
            artifacts["user_dict"] = str(layout.root / params.segment.user_dict)
        labels = read_json(layout.labels)
        example = pd.DataFrame({"text": INPUT_EXAMPLE})
        output = pd.DataFrame({"label": labels[:2], "probability": [0.9, 0.8]})
        for label in labels:
            output[f"prob_{label}"] = 0.5
        info = mlflow.pyfunc.log_model(
            name=tags.MODEL_NAME, python_model=str(PYFUNC_MODEL), code_paths=[str(PACKAGE_DIR)],
            artifacts=artifacts, signature=infer_signature(example, output),
            input_example=example, registered_model_name=registered_name,
            pip_requirements=_requirements())
        return info, {key: sha256_file(path) for key, path in artifacts.items()}


def _log_file(path: Path, artifact: str) -> None:
    """Log ``path`` as the run artifact ``artifact`` (same file name, in its folder)."""
    mlflow.log_artifact(str(path), str(PurePosixPath(artifact).parent))


def log_retrain(layout: Layout, params: Params, run_tags: dict[str, str],
                fingerprint: str) -> RegisteredVersion:
    """One MLflow run for a finished pipeline: params, per-epoch and test metrics, training
    data, lineage tags and record, the reports directory, and the registered pyfunc model."""
    experiment_id = configure(layout, params.registry.experiment)
    name = params.registry.model_name
    run_tags = {**run_tags, tags.FINGERPRINT: fingerprint}
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain") as run:
        mlflow.log_params(params.flat())
        mlflow.set_tags(run_tags)
        _log_history(layout.train_history)
        _log_test_metrics(read_json(layout.metrics))
        tokens = pd.read_parquet(layout.tokens, columns=["text", "label", "split"])
        train_rows = tokens[tokens["split"] == "train"].drop(columns="split")
        dataset = mlflow.data.from_pandas(train_rows, source=str(layout.dataset),
                                          targets="label", name="train")
        mlflow.log_input(dataset, context="training")
        mlflow.log_artifacts(str(layout.reports), tags.REPORTS_DIR)  # data docs included
        _log_file(layout.root / PARAMS_FILE, tags.PARAMS_ARTIFACT)
        _log_file(layout.dvc_lock, tags.DVC_LOCK_ARTIFACT)
        info, artifacts_sha256 = _log_model(layout, params, name)
        # what `senti lineage verify` checks later (senti.lineage)
        mlflow.log_dict(lineage.training_record(
            layout.root, versioning.read_lock(layout.root),
            layout.raw_csv.relative_to(layout.root).as_posix(), artifacts_sha256),
            tags.LINEAGE_RECORD)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key in tags.VERSION_TAGS:
        if key in run_tags:
            client.set_model_version_tag(name, version, key, run_tags[key])
    validation = read_json(layout.validation_report) if layout.validation_report.exists() else {}
    client.set_model_version_tag(name, version, tags.VALIDATION,
                                 "passed" if validation.get("success") else "failed")
    client.set_registered_model_alias(name, tags.CHALLENGER, version)
    return RegisteredVersion(name, version, run.info.run_id, f"models:/{name}/{version}", True)


def existing(version: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion(version.name, str(version.version), version.run_id,
                             f"models:/{version.name}/{version.version}", False)


def alias_version(model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def resolve_model_uri(model_name: str) -> str:
    """The serving model: ``@champion`` when one is set, else the newest version."""
    if alias_version(model_name, tags.CHAMPION) is not None:
        return f"models:/{model_name}@{tags.CHAMPION}"
    versions = MlflowClient().search_model_versions(f"name = '{model_name}'")
    if not versions:
        raise LookupError(f"no registered versions of {model_name}: run senti retrain")
    return f"models:/{model_name}/{max(int(v.version) for v in versions)}"


def _load(model_uri: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A registered model's ``predict``; an input it refuses raises ValueError."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise RegistryError(f"cannot load {model_uri}: {exc.message}") from exc

    def predict(frame: pd.DataFrame) -> pd.DataFrame:
        try:
            return model.predict(frame)
        except MlflowException as exc:
            raise ValueError(exc.message) from exc
    return predict


def predict_texts(layout: Layout, params: Params, texts: list[str],
                  model_uri: str | None = None) -> tuple[str, pd.DataFrame]:
    """Classify ``texts`` with ``model_uri`` (default: :func:`resolve_model_uri`); return
    the URI used and one prediction row per text."""
    configure(layout, params.registry.experiment)
    uri = model_uri or resolve_model_uri(params.registry.model_name)
    return uri, _load(uri)(pd.DataFrame({"text": texts}))


def predict_csv(layout: Layout, params: Params, input_csv: Path | str,
                output_csv: Path | str, version: str | None = None,
                text_column: str = "text") -> dict:
    """:func:`senti.batch.predict_csv` with a registered version (default: the @champion)."""
    configure(layout, params.registry.experiment)
    name = params.registry.model_name
    version = version or alias_version(name, tags.CHAMPION)
    if version is None:
        raise LookupError(f"{name} has no @champion: give a version, or run senti promote")
    return {**batch.predict_csv(_load(f"models:/{name}/{version}"), input_csv, output_csv,
                                version, text_column), "model": name}


# ---- the promotion gate -----------------------------------------------------------------

def _validation_passed(layout: Layout, version: ModelVersion) -> bool:
    tag = version.tags.get(tags.VALIDATION)
    if tag is not None:
        return tag == "passed"
    try:  # versions registered before the tag existed: the run's validation report
        report = layout.validation_report.relative_to(layout.reports).as_posix()
        return bool(read_json(mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=f"{tags.REPORTS_DIR}/{report}")).get("success"))
    except (MlflowException, OSError):
        return False


def evaluate_gate(layout: Layout, params: Params,
                  version: str | None = None) -> gate.GateDecision:
    """Re-evaluate ``version`` (default: the @challenger) and the @champion; decide."""
    name = params.registry.model_name
    configure(layout, params.registry.experiment)
    client = MlflowClient()
    challenger = version or alias_version(name, tags.CHALLENGER)
    if challenger is None:
        raise gate.PromotionError(f"{name} has no @{tags.CHALLENGER}: run senti retrain, or "
                                  "give --version")
    try:
        model_version = client.get_model_version(name, challenger)
    except MlflowException as exc:
        raise gate.PromotionError(f"{name} has no version {challenger}") from exc
    champion = alias_version(name, tags.CHAMPION)
    if champion == str(challenger):
        raise gate.PromotionError(f"version {challenger} is already the champion")
    return gate.judge(
        layout, params.promote, (str(challenger), _load(f"models:/{name}/{challenger}")),
        None if champion is None else (champion, _load(f"models:/{name}/{champion}")),
        validation_passed=_validation_passed(layout, model_version),
        run_metrics=client.get_run(model_version.run_id).data.metrics)


def _replace_decision_tags(client: MlflowClient, model_name: str, version: str,
                           new: dict[str, str]) -> None:
    """Set the version's ``promote.*`` tags to ``new``: they describe its latest decision
    only (earlier ones stay in its run's decisions table). Its ``previous_champion`` stays
    unless ``new`` sets it: rollbacks follow it."""
    for key in client.get_model_version(model_name, version).tags:
        if key.startswith(tags.PROMOTE_PREFIX) and key != tags.PREVIOUS_CHAMPION \
                and key not in new:
            client.delete_model_version_tag(model_name, version, key)
    for key, value in new.items():
        client.set_model_version_tag(model_name, version, key, value)


def _append_decision(client: MlflowClient, model_name: str, version: str,
                     row: dict) -> str:
    """Add ``row`` to the version's run's decisions table; return the run id."""
    run_id = client.get_model_version(model_name, version).run_id
    mlflow.log_table(pd.DataFrame([row]), tags.DECISIONS_TABLE, run_id=run_id)
    return run_id


def _set_champion(client: MlflowClient, model_name: str, version: str) -> None:
    client.set_registered_model_alias(model_name, tags.CHAMPION, version)
    if alias_version(model_name, tags.CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, tags.CHALLENGER)


def record_decision(model_name: str, decision: gate.GateDecision,
                    flow_run_id: str | None) -> None:
    """Tag the version, append to its run's tables and metrics; move @champion if promoted."""
    client = MlflowClient()
    _replace_decision_tags(client, model_name, decision.challenger,
                           gate.decision_tags(decision, flow_run_id))
    run_id = _append_decision(client, model_name, decision.challenger,
                              decision.table_row(flow_run_id))
    if decision.behaviour.cases:
        cases = pd.DataFrame(decision.behaviour.cases).assign(time=decision.time)
        mlflow.log_table(cases, tags.BEHAVIOUR_TABLE, run_id=run_id)
    stamp = int(datetime.fromisoformat(decision.time).timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in
                                      gate.decision_metrics(decision).items()])
    if decision.promoted:
        _set_champion(client, model_name, decision.challenger)


def rollback(model_name: str, reason: str, flow_run_id: str | None,
             now: str | None = None) -> gate.Rollback:
    """Make the champion that the current one replaced the champion again, recorded like a
    gate decision (see :func:`senti.promote.rollback_target`)."""
    client = MlflowClient()
    current = alias_version(model_name, tags.CHAMPION)
    current_tags = {} if current is None else client.get_model_version(model_name,
                                                                        current).tags
    restored = gate.rollback_target(model_name, current, current_tags)
    try:
        client.get_model_version(model_name, restored)
    except MlflowException as exc:
        raise gate.PromotionError(f"version {restored}, which version {current} replaced, "
                                  "no longer exists") from exc
    record = gate.Rollback(str(current), restored, reason, now or gate.now_utc())
    _replace_decision_tags(client, model_name, restored, gate.rollback_tags(record, flow_run_id))
    client.set_model_version_tag(model_name, record.from_version, tags.ROLLED_BACK, record.time)
    _append_decision(client, model_name, restored, record.table_row(flow_run_id))
    _set_champion(client, model_name, restored)
    return record


def decisions(model_name: str, version: str) -> list[dict]:
    """Every gate decision and rollback recorded on a version, oldest first (its run's
    decisions table; empty if none)."""
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                   artifact_path=tags.DECISIONS_TABLE)
    except (MlflowException, OSError):
        return []
    table = read_json(path)
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
