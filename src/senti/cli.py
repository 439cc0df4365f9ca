"""The ``senti`` console script: every command, one Typer app.

Commands call the Prefect flows (``flows``) or the library; heavy imports happen inside the
commands, so ``senti --help`` stays fast. Failures end with one red line naming the cause.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from senti.config import (
    Layout,
    Params,
    ParamsError,
    apply_overrides,
    load_context,
    load_params,
    parse_overrides,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a Chinese sentiment classifier trained, validated and served.")
lineage_app = typer.Typer(no_args_is_help=True, help=(
    "Model and data lineage: what produced a version, which versions a data version "
    "trained, proof by hashes, and restoring a version's inputs."))
app.add_typer(lineage_app, name="lineage")

ROOT_OPTION = typer.Option("--root", help="Project root (holds params.yaml and dvc.yaml).")
Root = Annotated[Path, ROOT_OPTION]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@contextmanager
def failing(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Any of ``errors`` raised in the block ends the command with its message in red."""
    try:
        yield
    except errors as exc:
        raise fail(str(exc), code) from exc


def _context(root: Path) -> tuple[Params, Layout]:
    """The project's params and layout; a broken params.yaml exits 2 naming the problem."""
    with failing(ParamsError, code=2):
        return load_context(root)


def _registry(root: Path) -> tuple[Params, Layout]:
    """The project's params and layout, with MLflow pointed at the project's store."""
    from senti import registry

    params, layout = _context(root)
    registry.configure(layout, params.registry.experiment)
    return params, layout


# ---- pipeline -------------------------------------------------------------------------------

@app.command("retrain")
def retrain_command(
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a param for this run: section.key=value (repeatable).")] = None,
    root: Root = Path("."),
) -> None:
    """Validate, segment, build the vocabulary, train, evaluate and register (Prefect + DVC)."""
    with failing(ParamsError, code=2):
        overrides = parse_overrides(set_ or [])
        apply_overrides(load_params(root).raw, overrides)  # reject bad keys before starting
    from flows.retrain import StageFailed, retrain

    with failing(StageFailed, ParamsError):
        result = retrain(root=str(root), overrides=overrides)
    skipped = [s for s, status in result["stages"].items() if status == "skipped"]
    typer.echo(f"stages skipped (unchanged): {', '.join(skipped) or 'none'}")
    if result.get("nothing_changed"):
        typer.echo("nothing changed: data and params as for the registered version below")
    state = "registered" if result["registered"] else "unchanged inputs, already registered as"
    typer.echo(f"{state} {result['model_uri']}")
    for who, name in (("model", "BiLSTM+attention"), ("baseline", "baseline (TF-IDF+LinearSVC)")):
        m = result["metrics"][who]
        typer.echo(f"{name:<28} test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    promotion = result["promotion"]
    typer.echo(f"promotion gate: {promotion['decision']}: {promotion['reason']}")


@app.command("validate")
def validate_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns text,label.")],
    root: Root = Path("."),
) -> None:
    """Run the data validation suite (params.yaml's `validate` section) on a CSV."""
    from senti.validate import read_raw_csv, validate_frame

    params, layout = _context(root)
    with failing(ValueError):
        frame = read_raw_csv(file)
    report = validate_frame(frame, params.validate, params.data.labels,
                            docs_dir=layout.reports / "validate_cli_docs")
    typer.echo(report.summary())
    if not report.success:
        raise typer.Exit(1)


# ---- promotion ------------------------------------------------------------------------------

@app.command("promote")
def promote_command(
    version: Annotated[str | None, typer.Option(
        help="Model version to judge; default: the @challenger.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if the gate rejects it (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden.")] = None,
    root: Root = Path("."),
) -> None:
    """Run the promotion gate: challenger vs champion on the current test split.

    Exits 0 when the version became the champion, 1 when the gate rejected it.
    """
    if force and not (reason and reason.strip()):
        raise fail("--force needs --reason \"...\": the override is recorded", code=2)
    from flows.promote import promote
    from senti.promote import PromotionError

    with failing(PromotionError, ParamsError):
        decision = promote(root=str(root), version=version, force=force, reason=reason)
    for condition in decision["conditions"]:
        mark = "ok  " if condition["passed"] else "FAIL"
        typer.echo(f"{mark} {condition['name']:<10} {condition['detail']}")
    typer.echo(f"version {decision['challenger']}: {decision['decision']}")
    if not decision["promoted"]:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_command(
    reason: Annotated[str, typer.Option(help="Why, recorded with the rollback.")] =
        "manual rollback",
    root: Root = Path("."),
) -> None:
    """Make the previous champion the champion again."""
    from flows.promote import rollback
    from senti.promote import PromotionError

    with failing(PromotionError, ParamsError):
        restored = rollback(root=str(root), reason=reason)
    typer.echo(f"@champion: version {restored['from_version']} -> {restored['to_version']}")


# ---- scheduling -----------------------------------------------------------------------------

@app.command("schedule")
def schedule_command(root: Root = Path(".")) -> None:
    """Serve the deployments of flows/deployments.py on this machine (the nightly retrain's
    cron included) until Ctrl-C. With PREFECT_API_URL set they are registered on that server;
    otherwise a local Prefect server runs for as long as this command does."""
    _context(root)  # fail on a broken params.yaml before starting anything
    from flows.deployments import serve

    serve(root, echo=typer.echo)
    typer.echo("senti schedule stopped.")


@app.command("deploy")
def deploy_command(
    pool: Annotated[str, typer.Option(help="Prefect work pool (type process).")] = "senti",
    root: Root = Path("."),
) -> None:
    """Register the deployments on the Prefect server at PREFECT_API_URL for a work pool;
    `prefect worker start --pool senti` then runs them."""
    _context(root)
    from flows.deployments import deploy

    with failing(ValueError):  # e.g. no such work pool
        ids = deploy(root, pool)
    typer.echo(f"{len(ids)} deployment(s) registered for work pool {pool!r}")


# ---- serving --------------------------------------------------------------------------------

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
    root: Root = Path("."),
) -> None:
    """Classify texts with the registered model, or a CSV with --input/--output."""
    from senti import registry

    params, layout = _context(root)
    if input_csv is not None or output_csv is not None:
        if input_csv is None or output_csv is None or texts:
            raise fail("batch mode needs both --input and --output, and no texts", code=2)
        with failing(LookupError, OSError, ValueError, registry.RegistryError):
            report = registry.predict_csv(layout, params, input_csv, output_csv, version,
                                          text_column)
        typer.echo(f"{report['rows']} rows -> {report['output']} with {report['model']} "
                   f"v{report['model_version']} ({report['rows_per_second']} rows/s)")
        return
    if not texts:
        raise fail("give at least one text, e.g. senti predict \"质量很好，物流也快\"", code=2)
    with failing(LookupError, ValueError, registry.RegistryError):
        uri, predictions = registry.predict_texts(layout, params, texts, model_uri)
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
    root: Root = Path("."),
) -> None:
    """Serve the @champion with MLflow's model server (this environment, nothing rebuilt).

    POST /invocations with {"dataframe_records": [{"text": "..."}]} or {"inputs": [...]}.
    """
    import subprocess
    import sys

    from senti import registry, tags

    params, layout = _registry(root)
    name = params.registry.model_name
    version = registry.alias_version(name, tags.CHAMPION)
    if version is None:
        raise fail(f"{name} has no @champion: run senti retrain or senti promote")
    uri = f"models:/{name}@{tags.CHAMPION}"
    store = registry.tracking_uri(layout)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    typer.echo(f"serving {uri} (version {version}) on http://{host}:{port}", err=True)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
               "--env-manager", "local", "-h", host, "-p", str(port), "-w", str(workers)]
    try:
        code = subprocess.run(command, env=env, check=False).returncode
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


# ---- lineage --------------------------------------------------------------------------------

REF_ARGUMENT = typer.Argument(help="NAME@ALIAS or NAME/VERSION, e.g. senti-sentiment@champion.")


@lineage_app.callback()
def _quiet() -> None:
    """MLflow's per-download progress bars would bury the audit's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _version(ref: str, root: Path):
    """The version ``ref`` names in the project's registry, and the project's layout."""
    from senti import lineage

    _, layout = _registry(root)
    with failing(lineage.LineageError, code=2):
        return lineage.resolve(ref), layout


@lineage_app.command("model")
def lineage_model_command(
    ref: Annotated[str, REF_ARGUMENT],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    root: Root = Path("."),
) -> None:
    """The chain of a version: run, code, params, metrics, data, validation, segmenter,
    vocabulary, Prefect run, artifact hashes, promotion history."""
    from senti import lineage

    chain = lineage.model_lineage(*_version(ref, root))
    typer.echo(json.dumps(chain, ensure_ascii=False, indent=2, sort_keys=True) if as_json
               else lineage.render(chain))


@lineage_app.command("data")
def lineage_data_command(
    target: Annotated[str, typer.Argument(
        help="A data file or directory (hashed as DVC does) or a DVC hash from dvc.lock.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    root: Root = Path("."),
) -> None:
    """Every model version trained on a data version. Exits 1 when there is none."""
    from senti import lineage, versioning

    _registry(root)
    path = Path(target)
    if not path.exists() and not re.fullmatch(r"[0-9a-f]{32}(\.dir)?", target):
        raise fail(f"{target}: no such file or directory, and not a DVC md5 hash", code=2)
    md5 = versioning.data_hash(root, path) if path.exists() else target
    versions = lineage.trained_on(md5)
    if as_json:
        typer.echo(json.dumps({"md5": md5, "versions": versions}, indent=2, sort_keys=True))
    else:
        typer.echo(f"data md5 {md5}: {len(versions)} model version(s)")
        for v in versions:
            aliases = " ".join(f"@{a}" for a in v["aliases"])
            typer.echo(f"{v['model']}/{v['version']} {aliases}  run {v['run_id']}  "
                       f"{v['created']}  via {', '.join(v['matched'])}")
    if not versions:
        raise typer.Exit(1)


@lineage_app.command("verify")
def lineage_verify_command(ref: Annotated[str, REF_ARGUMENT], root: Root = Path(".")) -> None:
    """Recompute the hashes of the version's model artifacts and training data (fetched from
    the DVC remote when the cache lacks them) and compare with the recorded ones.

    Exits 0 when everything matches, 1 listing each mismatch otherwise."""
    from senti import lineage

    version, layout = _version(ref, root)
    checks, fetched = lineage.verify(layout.root, version)
    if fetched:
        typer.echo(f"fetched {fetched} object(s) from the DVC remote", err=True)
    for line in lineage.summarize(checks):
        typer.echo(line)
    failed = [c for c in checks if not c.ok]
    label = f"{version.name}/{version.version}"
    if failed:
        raise fail(f"{label}: {len(failed)} of {len(checks)} checks failed")
    typer.echo(f"{label}: all {len(checks)} recorded hashes match")


@lineage_app.command("checkout")
def lineage_checkout_command(
    ref: Annotated[str, REF_ARGUMENT],
    dest: Annotated[Path, typer.Argument(help="Directory to restore into.")],
    root: Root = Path("."),
) -> None:
    """Restore the exact raw data and params.yaml that produced a version into DEST."""
    from senti import lineage

    version, layout = _version(ref, root)
    with failing(lineage.LineageError):
        restored = lineage.checkout(layout.root, version, dest)
    for relpath, md5 in restored["files"].items():
        typer.echo(f"restored {dest / relpath}  md5 {md5}")
    typer.echo(f"restored {dest / restored['params']}")
    typer.echo(f"code: git {restored['git_commit']} (git worktree add DIR "
               f"{restored['git_commit']})")


def main() -> None:
    app(prog_name="senti")
