"""Registry: MLflow tracking of a retrain and registration of the pyfunc model.

MLflow's tracking and registry APIs are used only here and in :mod:`senti.promote` (the
gate's aliases and decision records; the pyfunc class is in :mod:`senti.serve`). Every new
version gets the ``challenger`` alias; the serving version holds ``champion``.
Default store: a SQLite file in the project, artifacts next to it;
``MLFLOW_TRACKING_URI`` points elsewhere (e.g. a team's ``mlflow server``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature

from senti import lineage
from senti.config import PARAMS_FILE, Layout, Params
from senti.io import read_json, sha256_file

FINGERPRINT_TAG = "senti.inputs_fingerprint"
VALIDATION_TAG = "senti.validation"  # "passed" | "failed": the training data's validation
CHAMPION = "champion"
CHALLENGER = "challenger"
INPUT_EXAMPLE = ["质量很好，物流也快", "太差了，再也不买了"]
# Distributions the pyfunc model needs at load time, pinned to what trained it.
RUNTIME_REQUIREMENTS = ("tensorflow", "keras", "jieba", "pandas", "numpy", "mlflow", "senti")


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


def find_version(model_name: str, fingerprint: str) -> ModelVersion | None:
    """The registered version trained on exactly these inputs, if any."""
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        return None
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get(FINGERPRINT_TAG) == fingerprint:
            return version
    return None


def _requirements() -> list[str]:
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
    """Log and register the pyfunc model; return its ModelInfo and the sha256 of each of its
    artifacts (by artifact key), hashed from the files that were logged."""
    from senti.serve import SentimentPyfunc  # TensorFlow import only when logging a model

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
            name="model", python_model=SentimentPyfunc(), artifacts=artifacts,
            signature=infer_signature(example, output), input_example=example,
            registered_model_name=registered_name, pip_requirements=_requirements())
        return info, {key: sha256_file(path) for key, path in artifacts.items()}


def log_retrain(layout: Layout, params: Params, tags: dict[str, str],
                fingerprint: str) -> RegisteredVersion:
    """One MLflow run for a finished pipeline: params, per-epoch and test metrics, training
    data, lineage tags, reports, and the registered pyfunc model."""
    experiment_id = configure(layout, params.registry.experiment)
    name = params.registry.model_name
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain") as run:
        mlflow.log_params(params.flat())
        mlflow.set_tags({**tags, FINGERPRINT_TAG: fingerprint})
        _log_history(layout.train_history)
        _log_test_metrics(read_json(layout.metrics))
        tokens = pd.read_parquet(layout.tokens, columns=["text", "label", "split"])
        train_rows = tokens[tokens["split"] == "train"].drop(columns="split")
        dataset = mlflow.data.from_pandas(train_rows, source=str(layout.dataset),
                                          targets="label", name="train")
        mlflow.log_input(dataset, context="training")
        for report in (layout.ingest_report, layout.validation_report, layout.prepare_report,
                       layout.segment_report, layout.vocab_report, layout.embeddings_report,
                       layout.train_report,
                       layout.metrics, layout.evaluation_md, layout.confusion_png,
                       layout.reliability_png, layout.roc_pr_png, layout.training_curves_png,
                       layout.train_history, layout.dvc_lock):
            if report.exists():
                mlflow.log_artifact(str(report), artifact_path="reports")
        if layout.data_docs.exists():
            mlflow.log_artifacts(str(layout.data_docs), artifact_path="data_docs")
        info, artifacts_sha256 = _log_model(layout, params, name)
        # The audit record (senti.audit): artifact hashes, cached DVC outputs, the params file.
        mlflow.log_dict(lineage.training_record(
            layout.root, lineage.read_lock(layout.dvc_lock),
            layout.raw_csv.relative_to(layout.root).as_posix(), artifacts_sha256),
            lineage.RECORD_ARTIFACT)
        mlflow.log_artifact(str(layout.root / PARAMS_FILE),
                            artifact_path=lineage.PARAMS_ARTIFACT_DIR)
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(name, version, FINGERPRINT_TAG, fingerprint)
    for key in ("git.commit", "vocab.sha256", "prefect.flow_run_id"):
        if key in tags:
            client.set_model_version_tag(name, version, key, tags[key])
    validation = read_json(layout.validation_report) if layout.validation_report.exists() else {}
    client.set_model_version_tag(name, version, VALIDATION_TAG,
                                 "passed" if validation.get("success") else "failed")
    client.set_registered_model_alias(name, CHALLENGER, version)
    return RegisteredVersion(name, version, run.info.run_id, f"models:/{name}/{version}", True)


def existing(version: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion(version.name, str(version.version), version.run_id,
                             f"models:/{version.name}/{version.version}", False)


def alias_version(model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def resolve_model_uri(model_name: str) -> str:
    """The serving model: ``@champion`` when one is set, else the newest version."""
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(model_name, "champion")
        return f"models:/{model_name}@champion"
    except mlflow.exceptions.MlflowException:
        versions = client.search_model_versions(f"name = '{model_name}'")
        if not versions:
            message = f"no registered versions of {model_name}: run senti retrain"
            raise LookupError(message) from None
        newest = max(int(v.version) for v in versions)
        return f"models:/{model_name}/{newest}"
