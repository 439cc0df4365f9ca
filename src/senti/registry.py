"""Registry: every read and write of MLflow tracking and the model registry for a retrain,
the promotion gate and batch prediction.

A retrain is one run (:func:`log_retrain`) whose model is registered as a new version with
the ``challenger`` alias; the serving version holds ``champion``. The gate's logic is
:mod:`senti.promote`; here its models are loaded (:func:`evaluate_gate`) and its decisions
recorded (:func:`record_decision`, :func:`rollback`), in MLflow and in the project's ledger
(:mod:`senti.ledger`, kept in the DVC remote). Tag and artifact names are
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
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking._model_registry.client import ModelRegistryClient

from senti import batch, cluster, drift, lineage, tags
from senti import promote as gate
from senti.config import PARAMS_FILE, Layout, Params
from senti.io import read_json
from senti.vocab import Vocabulary
from senti.workspace import state_dir

INPUT_EXAMPLE = ["质量很好，物流也快", "太差了，再也不买了"]
PACKAGE_DIR = Path(__file__).parent  # logged with the model as its code
PYFUNC_MODEL = PACKAGE_DIR / "pyfunc_model.py"
# Public distributions the serving code (senti.pyfunc_model and the senti modules it
# imports) needs at load time, pinned to what trained the model. senti itself travels as code.
# (distributed: senti.segment's bulk path can run on Dask; imported only when asked for.)
RUNTIME_REQUIREMENTS = ("mlflow", "tensorflow", "keras", "jieba", "numpy", "pandas",
                        "pydantic", "annotated-types", "ruamel.yaml", "distributed")


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
# The project configure() last pointed each store at: its DVC remote keeps the ledger that
# registrations and decisions recorded in that store are appended to (senti.ledger).


def tracking_uri(layout: Layout) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it, else the project's embedded SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and env not in _EMBEDDED_URIS else f"sqlite:///{layout.mlflow_db}"


def configure(layout: Layout, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    With the embedded store, artifacts go to ``mlartifacts/`` in the project rather than a
    path relative to whatever directory the command ran from.
    """
    embedded = f"sqlite:///{layout.mlflow_db}"
    _EMBEDDED_URIS.add(embedded)
    uri = tracking_uri(layout)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if (found := mlflow.get_experiment_by_name(experiment)) is not None:
        return found.experiment_id
    location = layout.mlflow_artifacts.as_uri() if uri == embedded else None
    return mlflow.create_experiment(experiment, artifact_location=location)


# ---- a retrain's run and its registered version -----------------------------------------

def find_version(model_name: str, fingerprint: str) -> ModelVersion | None:
    """The registered version trained on exactly these inputs, if any."""
    return next((version for version in MlflowClient().search_model_versions(
        f"name = '{model_name}'") if version.tags.get(tags.FINGERPRINT) == fingerprint), None)


def _log_model(layout: Layout, params: Params) -> ModelInfo:
    """Log the pyfunc model from code; return its ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "serving_config.json"
        config.write_text(json.dumps({"maxlen": params.model.maxlen}), encoding="utf-8")
        artifacts = {"model": layout.model_file, "vocab": layout.vocab, "labels": layout.labels,
                     "serving_config": config}
        if user_dict := params.segment.user_dict_path(layout.root):
            artifacts["user_dict"] = user_dict
        labels = read_json(layout.labels)
        example = pd.DataFrame({"text": INPUT_EXAMPLE})
        output = pd.DataFrame({"label": labels[:2], "probability": [0.9, 0.8],
                               **{f"prob_{label}": 0.5 for label in labels}})
        return mlflow.pyfunc.log_model(
            name=tags.MODEL_NAME, python_model=str(PYFUNC_MODEL), code_paths=[str(PACKAGE_DIR)],
            artifacts={key: str(path) for key, path in artifacts.items()},
            signature=infer_signature(example, output), input_example=example,
            pip_requirements=[f"{dist}=={metadata.version(dist)}"
                              for dist in RUNTIME_REQUIREMENTS])


def log_retrain(layout: Layout, params: Params, run_tags: dict[str, str],
                fingerprint: str) -> RegisteredVersion:
    """One MLflow run for a finished pipeline: params, per-epoch and test metrics, training
    data, lineage tags and record, the reports directory, and the registered pyfunc model,
    entered in the project's ledger (:mod:`senti.ledger`, in its DVC remote)."""
    experiment_id = configure(layout, params.registry.experiment)
    name = params.registry.model_name
    run_tags = {**run_tags, tags.FINGERPRINT: fingerprint}
    with mlflow.start_run(experiment_id=experiment_id, run_name="retrain") as run:
        mlflow.log_params(params.flat())
        mlflow.set_tags(run_tags)
        for row in pd.read_csv(layout.train_history).to_dict("records"):
            step = int(row.pop("epoch"))
            mlflow.log_metrics({f"train.{k}": float(v) for k, v in row.items()}, step=step)
        for who, scores in read_json(layout.metrics).items():  # model, baseline
            per_class = {f"{label}.{k}": v for label, by_stat in scores.get("per_class", {}).items()
                         for k, v in by_stat.items()}
            mlflow.log_metrics({f"test.{who}.{k}": v for k, v in {**scores, **per_class}.items()
                                if isinstance(v, int | float)})
        tokens = pd.read_parquet(layout.tokens, columns=["text", "label", "split"])
        train_rows = tokens[tokens["split"] == "train"].drop(columns="split")
        mlflow.log_input(mlflow.data.from_pandas(train_rows, source=str(layout.dataset),
                                                 targets="label", name="train"),
                         context="training")
        mlflow.log_artifacts(str(layout.reports), tags.REPORTS_DIR)  # data docs included
        log_drift_profile(layout, params)
        for path, artifact in ((layout.root / PARAMS_FILE, tags.PARAMS_ARTIFACT),
                               (layout.dvc_lock, tags.DVC_LOCK_ARTIFACT)):
            mlflow.log_artifact(str(path), str(PurePosixPath(artifact).parent))
        info = _log_model(layout, params)
        # what `senti lineage verify` checks later (senti.lineage): hashes of what was stored
        mlflow.log_dict(lineage.training_record(layout, info.model_uri, run.info.run_id,
                                                run_tags.get(tags.GIT_COMMIT)),
                        tags.LINEAGE_RECORD)
    validation = read_json(layout.validation_report) if layout.validation_report.exists() else {}
    version_tags = {key: run_tags[key] for key in tags.VERSION_TAGS if key in run_tags}
    version_tags[tags.VALIDATION] = "passed" if validation.get("success") else "failed"
    version_tags[tags.LABELS] = json.dumps(read_json(layout.labels), ensure_ascii=False)
    registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
    version = str(registered.version)
    try:  # no version without its ledger entry: a rerun on these inputs registers it again
        lineage.record_registration(layout.root, registered)
    except BaseException:
        MlflowClient().delete_model_version(name, version)
        raise
    _registry().set_registered_model_alias(name, tags.CHALLENGER, version)
    return RegisteredVersion(name, version, run.info.run_id, f"models:/{name}/{version}", True)


def existing(version: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion(version.name, str(version.version), version.run_id,
                             f"models:/{version.name}/{version.version}", False)


def champion_labels(model_name: str) -> tuple[str, list[str]] | None:
    """The @champion's version and label set (None: no champion, or one registered before
    versions recorded their labels)."""
    version = alias_version(model_name, tags.CHAMPION)
    if version is None:
        return None
    labels = MlflowClient().get_model_version(model_name, version).tags.get(tags.LABELS)
    return None if labels is None else (version, json.loads(labels))


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


def champion_decision(model_name: str) -> tuple[str, str | None]:
    """The @champion's version and the recorded gate decision that made it champion (None
    when there is none: the alias was moved outside senti's gate)."""
    version = alias_version(model_name, tags.CHAMPION)
    if version is None:
        raise LookupError(f"{model_name} has no @{tags.CHAMPION}: run senti retrain or "
                          "senti promote")
    decision = MlflowClient().get_model_version(model_name, version).tags.get(tags.DECISION)
    return version, decision if decision in gate.CHAMPION_DECISIONS else None


def _load(model_uri: str, min_known_share: float | None = None) -> gate.Predict:
    """A registered model's ``predict``; an input it refuses raises ValueError. With
    ``min_known_share`` (``serve.min_known_share``), its predictions flag low coverage."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise RegistryError(f"cannot load {model_uri}: {exc.message}") from exc
    if min_known_share is not None:
        model.unwrap_python_model().configure(min_known_share)

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
    return uri, _load(uri, params.serve.min_known_share)(pd.DataFrame({"text": texts}))


@dataclass(frozen=True)
class RegisteredModel:
    """A registered version as a :class:`senti.batch.ModelSource`: every process that
    predicts with it (a Dask worker too) loads it from the store at ``store``, so a
    remote cluster needs a store it can reach (a tracking server, not the SQLite file)."""

    store: str  # tracking and registry URI
    name: str
    version: str
    min_known_share: float  # serve.min_known_share

    def load(self) -> gate.Predict:
        mlflow.set_tracking_uri(self.store)
        mlflow.set_registry_uri(self.store)
        return _load(f"models:/{self.name}/{self.version}", self.min_known_share)


def predict_csv(layout: Layout, params: Params, input_csv: Path | str,
                output_csv: Path | str, version: str | None = None,
                text_column: str = "text", engine: str | None = None,
                progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """:func:`senti.batch.predict_csv` with a registered version (default: the @champion)
    on ``engine`` (``local`` or ``dask``; default ``serve.batch_engine``), in chunks of
    ``serve.batch_chunk_rows`` kept under ``.senti/batch/`` until the output is written.
    Input and output must be files under the project's ``serve.batch_dirs``
    (:func:`senti.batch.project_file`); they are checked before anything is loaded."""
    source = batch.project_file(input_csv, layout, params.serve.batch_dirs)
    target = batch.project_file(output_csv, layout, params.serve.batch_dirs, output=True)
    configure(layout, params.registry.experiment)
    name = params.registry.model_name
    version = version or alias_version(name, tags.CHAMPION)
    if version is None:
        raise LookupError(f"{name} has no @champion: give a version, or run senti promote")
    try:  # as MLflow spells it ("01" is 1): the output's model_version column and work key
        version = str(MlflowClient().get_model_version(name, version).version)
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version}: {exc.message}") from None
    model = RegisteredModel(tracking_uri(layout), name, version, params.serve.min_known_share)
    engine = engine or params.serve.batch_engine
    with cluster.dask(params.dask) if engine == "dask" else cluster.inline() as running:
        report = batch.predict_csv(model, source, target, state_dir(layout.root) / "batch",
                                   running, text_column, params.serve.batch_chunk_rows,
                                   progress)
    return {**report, "model": name, "engine": running.name}


# ---- drift ----------------------------------------------------------------------------------

def log_drift_profile(layout: Layout, params: Params) -> None:
    """Log the profile of the pipeline's data and test-set predictions to the active run:
    what later data and predictions are compared with (:mod:`senti.drift`)."""
    mlflow.log_text(drift.version_profile(layout, params.drift).to_json(), tags.DRIFT_PROFILE)


def _model_artifacts(name: str, version: str, label: str) -> dict[str, str]:
    """The pyfunc artifacts of ``name`` ``version``: key -> where in its model directory
    (``artifacts/FILE``), as its MLmodel declares them. A declared path of any other shape
    is refused: the store is not trusted to name files."""
    try:
        declared = mlflow.models.Model.load(f"models:/{name}/{version}").flavors[
            "python_function"].get("artifacts", {})
        found = {str(key): str(spec["path"]) for key, spec in declared.items()}
    except (MlflowException, OSError, KeyError, AttributeError, TypeError) as exc:
        raise drift.NoReference(f"{label}: its MLmodel cannot be read ({exc})") from exc
    for key, text in found.items():
        path = PurePosixPath(text)
        if len(path.parts) != 2 or path.parts[0] != "artifacts" or path.name in ("..", ".") \
                or "\\" in path.name:
            raise drift.NoReference(f"{label}: its MLmodel declares artifact {key} at "
                                    f"{text:.80}, not a file in artifacts/")
    return found


def drift_reference(params: Params, version: str | None = None,
                    dst: Path | None = None) -> drift.Reference:
    """The profile, vocabulary and jieba user dictionary that ``version`` (default: the
    @champion) was logged with: new texts are segmented with that dictionary, downloaded into
    ``dst`` (which must outlive its use; None: not fetched, for data already segmented).
    Raises :class:`senti.drift.NoReference` naming what is missing."""
    name = params.registry.model_name
    label = f"{name} v{version}"
    if version is None:
        version = alias_version(name, tags.CHAMPION)
        if version is None:
            raise drift.NoReference(f"{name} has no @{tags.CHAMPION} to compare with: run "
                                    "senti retrain (and senti promote)")
        label = f"{name} v{version} (@{tags.CHAMPION})"
    try:
        run_id = MlflowClient().get_model_version(name, version).run_id
    except MlflowException as exc:
        raise drift.NoReference(f"{name} has no version {version}") from exc
    try:
        profile = mlflow.artifacts.load_text(f"runs:/{run_id}/{tags.DRIFT_PROFILE}")
    except (MlflowException, OSError) as exc:
        raise drift.NoReference(f"{label} has no drift profile ({tags.DRIFT_PROFILE}): it was "
                                "registered before profiles were logged") from exc
    artifacts = _model_artifacts(name, version, label)
    if "vocab" not in artifacts:
        raise drift.NoReference(f"{label} was logged without a vocab artifact")
    user_dict = None
    if dst is not None and "user_dict" in artifacts:
        user_dict = Path(mlflow.artifacts.download_artifacts(
            f"models:/{name}/{version}/{artifacts['user_dict']}", dst_path=str(dst)))
    return drift.Reference(label, drift.VersionProfile.from_json(profile),
                           Vocabulary.from_json(mlflow.artifacts.load_text(
                               f"models:/{name}/{version}/{artifacts['vocab']}")), user_dict)


def log_drift_report(run_id: str, report: drift.DriftReport) -> None:
    """Attach a drift report to a run: JSON and markdown artifacts, a ``drift.<feature>``
    metric per feature, and the ``senti.drift`` tag (the drifted features, or ``none``)."""
    client = MlflowClient()
    client.log_text(run_id, json.dumps(report.to_dict(), ensure_ascii=False, indent=2),
                    tags.DRIFT_REPORT)
    client.log_text(run_id, drift.render_markdown(report), tags.DRIFT_REPORT_MD)
    for feature in report.features:
        client.log_metric(run_id, f"drift.{feature.name}", feature.value)
    client.set_tag(run_id, tags.DRIFT, ",".join(report.drifted) or tags.NONE)


# ---- the promotion gate -----------------------------------------------------------------

def evaluate_gate(layout: Layout, params: Params,
                  version: str | None = None) -> gate.GateDecision:
    """Re-evaluate ``version`` (default: the @challenger) and the @champion; decide. The
    decision names the version as MLflow spells it, however ``version`` was written.

    The challenger must carry the ``senti.validation`` tag that :func:`log_retrain` writes:
    a version registered without it fails the gate's validation condition.
    """
    name = params.registry.model_name
    gate.require_test_split(layout)  # before any model is loaded
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
    challenger = str(model_version.version)  # MLflow's spelling: "01", " 1", "+1" are "1"
    champion = alias_version(name, tags.CHAMPION)
    if champion == challenger:
        raise gate.PromotionError(f"version {challenger} is already the champion")
    decision = gate.judge(
        layout, params.promote, (challenger, _load(f"models:/{name}/{challenger}")),
        None if champion is None else (champion, _load(f"models:/{name}/{champion}")),
        validation_passed=model_version.tags.get(tags.VALIDATION) == "passed",
        run_metrics=client.get_run(model_version.run_id).data.metrics)
    if overrides := model_version.tags.get(tags.POLICY_OVERRIDES):
        return gate.policy_overridden(decision, json.loads(overrides),
                                      model_version.tags.get(tags.POLICY_REASON, ""))
    return decision


def _registry() -> ModelRegistryClient:
    """MLflow's registry client, for the writes of version tags and aliases. MlflowClient's
    own ``set/delete_model_version_tag`` and ``set/delete_registered_model_alias`` first load
    the whole registered model, every version with its tags, to refuse a prompt of that name
    (MLflow 3): each tag written cost O(versions), 42% of a promotion on SQLite, more on a
    server. senti's models are registered by senti, never prompts."""
    return MlflowClient()._get_registry_client()


def _record(root: Path | None, model_name: str, version: str, new_tags: dict[str, str],
            row: dict, champion: bool) -> str:
    """Set the version's ``promote.*`` tags to ``new_tags``: they describe its latest decision
    only (earlier ones stay in its run's decisions table, to which ``row`` is added). Its
    ``previous_champion`` stays unless ``new_tags`` sets it: rollbacks follow it. Make the
    version @champion when ``champion``, and append the decision to the ledger of the project
    at ``root`` (None: no ledger; one that cannot be written is a warning, the decision
    stands: :func:`senti.lineage.record_decision`). Return its run id."""
    client = _registry()
    found = client.get_model_version(model_name, version)
    for key in found.tags:
        if key.startswith(tags.PROMOTE_PREFIX) and key not in (tags.PREVIOUS_CHAMPION, *new_tags):
            client.delete_model_version_tag(model_name, version, key)
    for key, value in new_tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    mlflow.log_table(pd.DataFrame([row]), tags.DECISIONS_TABLE, run_id=found.run_id)
    if champion:
        client.set_registered_model_alias(model_name, tags.CHAMPION, version)
        if alias_version(model_name, tags.CHALLENGER) == version:
            client.delete_registered_model_alias(model_name, tags.CHALLENGER)
    lineage.record_decision(root, model_name, {
        "champion": champion, **{key: str(row[key]) for key in lineage.DECISION_FIELDS}})
    return found.run_id


def record_decision(root: Path | None, model_name: str, decision: gate.GateDecision,
                    flow_run_id: str | None) -> None:
    """Tag the version, append to its run's tables and metrics and to the ledger of the
    project at ``root``; move @champion if promoted."""
    run_id = _record(root, model_name, decision.challenger,
                     gate.decision_tags(decision, flow_run_id), decision.table_row(flow_run_id),
                     champion=decision.promoted)
    if decision.behaviour.cases:
        cases = pd.DataFrame(decision.behaviour.cases).assign(time=decision.time)
        mlflow.log_table(cases, tags.BEHAVIOUR_TABLE, run_id=run_id)
    mlflow.log_metrics(gate.decision_metrics(decision), run_id=run_id,
                       timestamp=int(datetime.fromisoformat(decision.time).timestamp() * 1000))


def rollback(root: Path | None, model_name: str, reason: str, flow_run_id: str | None,
             now: str | None = None) -> gate.Rollback:
    """Make the champion that the current one replaced the champion again, recorded like a
    gate decision (see :func:`senti.promote.rollback_target`) in the ledger of the project
    at ``root``."""
    client = MlflowClient()
    current = alias_version(model_name, tags.CHAMPION)
    current_tags = {} if current is None else client.get_model_version(model_name, current).tags
    restored = gate.rollback_target(model_name, current, current_tags)
    try:
        client.get_model_version(model_name, restored)
    except MlflowException as exc:
        raise gate.PromotionError(f"version {restored}, which version {current} replaced, "
                                  "no longer exists") from exc
    record = gate.Rollback(current, restored, reason, now or gate.now_utc())
    _registry().set_model_version_tag(model_name, record.from_version, tags.ROLLED_BACK,
                                      record.time)
    _record(root, model_name, restored, gate.rollback_tags(record, flow_run_id),
            record.table_row(flow_run_id), champion=True)
    return record
