"""``senti`` commands that need only the library: pipeline stages, validation, prediction.

The console script is :mod:`flows.cli`, which adds the orchestrated commands (``retrain``)
to this app; keeping them there lets imports go one way, flows -> senti.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from senti import stages
from senti.config import Layout, ParamsError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a Chinese sentiment classifier trained, validated and served.")

ROOT_OPTION = typer.Option("--root", help="Project root (holds params.yaml and dvc.yaml).")


class Stage(StrEnum):
    ingest = "ingest"
    validate = "validate"
    prepare = "prepare"
    segment = "segment"
    vocab = "vocab"
    embeddings = "embeddings"
    train = "train"
    evaluate = "evaluate"


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command("stage")
def stage_command(name: Stage, root: Annotated[Path, ROOT_OPTION] = Path(".")) -> None:
    """Run one pipeline stage (what dvc.yaml calls; prefer `senti retrain` or `dvc repro`)."""
    from senti.validate import DataValidationError

    try:
        result = getattr(stages, name.value)(root)
    except DataValidationError as exc:
        typer.echo(exc.report.summary(), err=True)
        raise fail(f"validation failed: {len(exc.report.failed)} expectation(s) not met") from exc
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        raise fail(f"stage {name.value} failed: {exc}") from exc
    if name is Stage.validate:
        typer.echo(f"validation passed ({result['rows']} rows); Data Docs: {result['data_docs']}")


@app.command("validate")
def validate_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns text,label.")],
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Run the data validation suite (params.yaml's `validate` section) on a CSV."""
    from senti.validate import read_raw_csv, validate_frame

    params = load_params(root)
    try:
        frame = read_raw_csv(file)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    docs = Layout(root).reports / "validate_cli_docs"
    report = validate_frame(frame, params.validate, params.data.labels, docs_dir=docs)
    typer.echo(report.summary())
    if not report.success:
        raise typer.Exit(1)


@app.command("predict")
def predict_command(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    model_uri: Annotated[str | None, typer.Option(
        help="MLflow model URI; default: the champion, else the newest version.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per text.")] = False,
    input_csv: Annotated[Path | None, typer.Option(
        "--input", help="CSV of texts to classify (batch mode; needs --output).")] = None,
    output_csv: Annotated[Path | None, typer.Option(
        "--output", help="Batch mode: where to write the rows with their predictions.")] = None,
    version: Annotated[str | None, typer.Option(
        help="Batch mode: registered version to use; default: the champion.")] = None,
    text_column: Annotated[str, typer.Option(help="Batch mode: the column holding the texts.")]
        = "text",
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Classify texts with the registered model, or a CSV with --input/--output."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from senti import batch, registry

    if input_csv is not None or output_csv is not None:
        if input_csv is None or output_csv is None or texts:
            raise fail("batch mode needs both --input and --output, and no texts", code=2)
        try:
            report = batch.predict_with_registry(Layout(root), load_params(root), input_csv,
                                                 output_csv, version, text_column)
        except (LookupError, FileNotFoundError, MlflowException, batch.BatchInputError) as exc:
            raise fail(str(exc)) from exc
        typer.echo(f"{report['rows']} rows -> {report['output']} with {report['model']} "
                   f"v{report['model_version']} ({report['rows_per_second']} rows/s)")
        return
    if not texts:
        raise fail("give at least one text, e.g. senti predict \"质量很好，物流也快\"", code=2)
    params = load_params(root)
    registry.configure(Layout(root), params.registry.experiment)
    try:
        uri = model_uri or registry.resolve_model_uri(params.registry.model_name)
        model = mlflow.pyfunc.load_model(uri)
        predictions = model.predict(pd.DataFrame({"text": texts}))
    except (LookupError, MlflowException) as exc:
        raise fail(str(exc)) from exc
    for text, row in zip(texts, predictions.to_dict("records"), strict=True):
        if as_json:
            typer.echo(json.dumps({"text": text, **row}, ensure_ascii=False))
        else:
            typer.echo(f"{row['label']}\t{row['probability']:.3f}\t{text}")
    typer.echo(f"model: {uri}", err=True)


@app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5001,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: all).")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 1,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Serve the @champion with MLflow's model server (this environment, nothing rebuilt).

    POST /invocations with {"dataframe_records": [{"text": "..."}]} or {"inputs": [...]}.
    """
    import os
    import subprocess
    import sys

    from senti import registry

    params = load_params(root)
    layout = Layout(root)
    registry.configure(layout, params.registry.experiment)
    name = params.registry.model_name
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        raise fail(f"{name} has no @champion: run senti retrain or senti promote")
    uri = f"models:/{name}@{registry.CHAMPION}"
    uri_env = registry.tracking_uri(layout)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri_env, "MLFLOW_REGISTRY_URI": uri_env}
    typer.echo(f"serving {uri} (version {version}) on http://{host}:{port}", err=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
               "--env-manager", "local", "-h", host, "-p", str(port), "-w", str(workers)]
    try:
        code = subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)

