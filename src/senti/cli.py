"""The ``senti`` console script: every command, one Typer app.

Commands call the Prefect flows (``flows``) or the library; heavy imports happen inside the
commands, so ``senti --help`` stays fast. Failures end with one red line naming the cause.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from senti import console
from senti.config import (
    Layout,
    Params,
    ParamsError,
    apply_overrides,
    load_context,
    load_params,
    parse_overrides,
    parse_params,
)

if TYPE_CHECKING:  # imported by the commands that use them: `senti --help` stays fast
    from senti.drift import DriftReport

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Keep a Chinese sentiment classifier trained, validated and served.")
lineage_app = typer.Typer(no_args_is_help=True, help=(
    "Model and data lineage: what produced a version, which versions a data version "
    "trained, proof by hashes, and restoring a version's inputs."))
app.add_typer(lineage_app, name="lineage")

ROOT_OPTION = typer.Option("--root", help="Project root (holds params.yaml and dvc.yaml).")
Root = Annotated[Path, ROOT_OPTION]


@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "--verbose", help="Everything on the terminal (library logs, stage output, "
                          "tracebacks) instead of the log file. Or SENTI_VERBOSE=1.")] = False,
             ) -> None:
    """Keep a Chinese sentiment classifier trained, validated and served."""
    # acted on by senti.console.start before the app runs


def fail(message: str, code: int = 1) -> typer.Exit:
    """End the command with one red line naming the cause (and the log file)."""
    console.error(message)
    return typer.Exit(code)


@contextmanager
def failing(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Any of ``errors`` raised in the block ends the command with its message in red; the
    traceback goes to the log."""
    try:
        yield
    except errors as exc:
        console.error(str(exc), exc)
        raise typer.Exit(code) from exc


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
    force: Annotated[bool, typer.Option(
        "--force", help="Allow --set values that loosen the validation or promotion policy "
                        "(needs --reason; recorded as policy-overridden).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the policy is loosened.")] = None,
    wait: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for another retrain of this project to finish.")] = 0,
    root: Root = Path("."),
) -> None:
    """Validate, segment, build the vocabulary, train, evaluate and register (Prefect + DVC).

    Exits 0 when the run finished (whatever the gate decided), 1 when it failed or was
    refused (the workspace is then as it was), 2 on a bad params.yaml or --set."""
    with failing(ParamsError, code=2):
        overrides = parse_overrides(set_ or [])
        apply_overrides(load_params(root).raw, overrides)  # reject bad keys before starting
    from senti import stack, versioning

    with failing(stack.Unreachable):  # before anything runs: one line per unreachable service
        remote = versioning.remote_url(root)
        stack.check_reachable(os.environ, remote if remote and remote.startswith("s3://")
                              else None)
    from flows.retrain import RetrainRefused, StageFailed, retrain
    from senti.workspace import LockBusy

    with failing(StageFailed, RetrainRefused, LockBusy, ParamsError):
        result = retrain(root=str(root), overrides=overrides, force=force, reason=reason,
                         wait_s=wait)
    skipped = [s for s, status in result["stages"].items() if status == "skipped"]
    typer.echo(f"stages skipped (unchanged): {', '.join(skipped) or 'none'}")
    if result.get("nothing_changed"):
        typer.echo("nothing changed: data and params as for the registered version below")
    state = "registered" if result["registered"] else "unchanged inputs, already registered as"
    typer.echo(f"{state} {result['model_uri']}")
    for who, name in (("model", "BiLSTM+attention"), ("baseline", "baseline (TF-IDF+LinearSVC)")):
        m = result["metrics"][who]
        typer.echo(f"{name:<28} test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    if result["drift"] is not None:
        drifted = result["drift"]["drifted"]
        typer.echo(f"data drift against the champion: {', '.join(drifted) or 'none'}")
    if result["workspace_restored"]:
        typer.echo("per-run --set: the workspace is back to params.yaml's outputs (this run's "
                   "are in MLflow and the DVC cache)")
    promotion = result["promotion"]
    if promotion["decision"] == "error":
        raise fail(f"promotion gate: {promotion['reason']}")
    typer.echo(f"promotion gate: {promotion['decision']}: {promotion['reason']}")


@app.command("validate")
def validate_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns text,label.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Check with a param changed, as `senti retrain --set` would run: "
                      "section.key=value (repeatable).")] = None,
    root: Root = Path("."),
) -> None:
    """Run the data validation suite (params.yaml's `validate` section) on a CSV."""
    from senti.validate import read_raw_csv, validate_frame

    params, layout = _context(root)
    with failing(ParamsError, code=2):
        params = parse_params(apply_overrides(params.raw, parse_overrides(set_ or [])))
    with failing(ValueError):
        frame = read_raw_csv(file, params.data.max_source_bytes)
    report = validate_frame(frame, params.validate, params.data.labels,
                            docs_dir=layout.reports / "validate_cli_docs")
    typer.echo(report.summary())
    if not report.success:
        raise fail(f"{file}: data validation failed: "
                   + ", ".join(o.name for o in report.failed))


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

    Exits 0 when the version became the champion, 1 when the gate rejected it or could not
    run (e.g. a retrain of this project is running).
    """
    if force and not (reason and reason.strip()):
        raise fail("--force needs --reason \"...\": the override is recorded", code=2)
    from flows.promote import promote
    from senti.promote import PromotionError
    from senti.registry import RegistryError
    from senti.workspace import LockBusy

    # ValueError: a malformed SENTI_WEBHOOK_URL, refused before anything is recorded
    with failing(PromotionError, RegistryError, LockBusy, ParamsError, ValueError):
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
    from senti.workspace import LockBusy

    with failing(PromotionError, LockBusy, ParamsError, ValueError):
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
    input_csv: Annotated[str | None, typer.Option(
        "--input", help="CSV of texts to classify (batch mode; needs --output); a relative "
                        "path is from the project root.")] = None,
    output_csv: Annotated[str | None, typer.Option(
        "--output", help="Batch mode: where to write the rows with their predictions.")] = None,
    version: Annotated[str | None, typer.Option(
        help="Batch mode: registered version to use; default: the champion.")] = None,
    text_column: Annotated[str, typer.Option(help="Batch mode: the column holding the texts.")]
        = "text",
    engine: Annotated[Literal["local", "dask"] | None, typer.Option(
        help="Batch mode: run the chunks in this process (local) or on Dask (params.yaml's "
             "dask section); default: serve.batch_engine.")] = None,
    root: Root = Path("."),
) -> None:
    """Classify texts with the registered model, or a CSV with --input/--output.

    Each prediction says how much of the text the model knows: known_share (in-vocabulary
    tokens) and flag (ok, low_coverage, no_known_tokens, no_chinese; the last two get no
    label). Batch files must lie under serve.batch_dirs (params.yaml), input != output.
    A batch runs in chunks of serve.batch_chunk_rows rows; after a failure or a kill, the
    same command continues from the chunks already done.
    """
    from senti import registry

    params, layout = _context(root)
    if input_csv is not None or output_csv is not None:
        if input_csv is None or output_csv is None or texts:
            raise fail("batch mode needs both --input and --output, and no texts", code=2)
        from senti.batch import BatchError
        from senti.cluster import ClusterError

        with ExitStack() as bars, failing(LookupError, OSError, ValueError, BatchError,
                                          ClusterError, registry.RegistryError):
            report = registry.predict_csv(layout, params, input_csv, output_csv, version,
                                          text_column, engine, _chunk_bar(bars))
        resumed = (f"; {report['resumed_chunks']} of {report['chunks']} chunks were done "
                   "by an earlier run" if report["resumed_chunks"] else "")
        typer.echo(f"{report['rows']} rows -> {report['output']} with {report['model']} "
                   f"v{report['model_version']} on {report['engine']} "
                   f"({report['rows_per_second']} rows/s{resumed})")
        return
    if not texts:
        raise fail("give at least one text, e.g. senti predict \"质量很好，物流也快\"", code=2)
    with failing(LookupError, ValueError, registry.RegistryError):
        uri, predictions = registry.predict_texts(layout, params, texts, model_uri)
    for text, row in zip(texts, predictions.to_dict("records"), strict=True):
        if as_json:
            typer.echo(json.dumps({"text": text, **row}, ensure_ascii=False))
        else:  # label, probability, known share, flag, text ("-": flagged, no label)
            probability = "-" if row["probability"] is None else f"{row['probability']:.3f}"
            typer.echo(f"{row['label'] or '-'}\t{probability}\t{row['known_share']:.2f}\t"
                       f"{row['flag']}\t{text}")
    typer.echo(f"model: {uri}", err=True)


def _chunk_bar(bars: ExitStack) -> Callable[[int, int], None]:
    """A progress callback drawing a bar of chunks on the terminal, closed with ``bars``."""
    bar: list = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(bars.enter_context(typer.progressbar(length=total, label="chunks",
                                                            show_pos=True)))
        bar[0].update(done - bar[0].pos)
    return progress


@app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5001,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: all).")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(min=1, max=64, help=(
        "Server worker processes sharing the port, each with its own model (one per core: "
        "docs/benchmarks.md)."))] = 1,
    allow_unrecorded: Annotated[bool, typer.Option(
        "--allow-unrecorded", help="Serve a @champion that no recorded gate decision made "
                                   "champion (its alias was moved outside senti), warning.")] =
        False,
    root: Root = Path("."),
) -> None:
    """Serve the @champion over HTTP with MLflow's scoring app (the endpoints of `mlflow
    models serve`, in this environment) and params.yaml's `serve` limits, until Ctrl-C or
    SIGTERM; its worker processes stop with it.

    POST /invocations with {"dataframe_records": [{"text": "..."}]} or {"inputs": [...]}.
    """
    from senti import registry, tags

    params, layout = _registry(root)
    name = params.registry.model_name
    with failing(LookupError):
        version, decision = registry.champion_decision(name)
    if decision is None:
        unrecorded = (f"@{tags.CHAMPION} is {name} v{version}, but no recorded gate decision "
                      "made it champion (its alias was moved outside senti)")
        if not allow_unrecorded:
            raise fail(f"{unrecorded}: make a version champion with senti promote, or serve "
                       "this one with --allow-unrecorded")
        typer.secho(f"WARNING: {unrecorded}; serving it anyway (--allow-unrecorded)",
                    fg=typer.colors.YELLOW)
    limits = params.serve
    typer.echo(f"serving {name}@{tags.CHAMPION} (version {version}) on http://{host}:{port}, "
               f"at most {limits.max_rows_per_request} rows and {limits.max_body_bytes} bytes "
               "per request")
    store = registry.tracking_uri(layout)  # worker processes resolve the model here too
    os.environ.update(MLFLOW_TRACKING_URI=store, MLFLOW_REGISTRY_URI=store)
    from senti.server import run_server

    with failing(OSError, ValueError):  # ValueError: model files it refuses (senti.serve)
        run_server(f"models:/{name}/{version}", limits, host, port, workers)


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
def lineage_verify_command(
    ref: Annotated[str, REF_ARGUMENT],
    ledger: Annotated[bool, typer.Option(
        "--ledger", help="Also check the model's ledger (in the DVC remote) against the "
                         "registry: the chain, each version's record, manifest and dvc.lock "
                         "hashes, every decision and rollback, @champion.")] = False,
    head: Annotated[str | None, typer.Option(
        help="With --ledger: a ledger entry hash kept elsewhere earlier, which must still be "
             "in the chain.")] = None,
    root: Root = Path("."),
) -> None:
    """Recompute the hashes of every file of the registered model, of the run's params.yaml
    and dvc.lock, and of the training data (fetched from the DVC remote when the cache lacks
    it), and compare with the version's record.

    Exits 0 when everything matches, 1 listing each mismatch otherwise."""
    from senti import lineage

    if head and not ledger:
        raise fail("--head needs --ledger", code=2)
    version, layout = _version(ref, root)
    checks, fetched = lineage.verify(layout.root, version)
    if ledger:
        with failing(lineage.LineageError):
            checks += lineage.verify_ledger(layout.root, version.name, head)
    if fetched:
        typer.echo(f"fetched {fetched} object(s) from the DVC remote", err=True)
    for line in lineage.summarize(checks):
        typer.echo(line)
    failed = [c for c in checks if not c.ok]
    label = f"{version.name}/{version.version}"
    if failed:
        raise fail(f"{label}: {len(failed)} of {len(checks)} checks failed: "
                   + ", ".join(c.name for c in failed[:3]) + (" ..." if len(failed) > 3 else ""))
    typer.echo(f"{label}: all {len(checks)} recorded hashes match")


@lineage_app.command("checkout")
def lineage_checkout_command(
    ref: Annotated[str, REF_ARGUMENT],
    dest: Annotated[Path, typer.Argument(help="Directory to restore into (new or empty).")],
    force: Annotated[bool, typer.Option(
        "--force", help="Write into a non-empty DEST, replacing the files restored.")] = False,
    root: Root = Path("."),
) -> None:
    """Restore the exact raw data, params.yaml and dvc.lock that produced a version into DEST,
    each checked against its recorded hash (the record against the ledger). A recorded path
    that could write outside DEST is refused; a refusal writes nothing."""
    from senti import lineage

    version, layout = _version(ref, root)
    with failing(lineage.LineageError, OSError):  # OSError: e.g. DEST's disk is full
        restored = lineage.checkout(layout.root, version, dest, force=force)
    for relpath, sha256 in restored["files"].items():
        typer.echo(f"restored {dest / relpath}  sha256 {sha256}")
    for note in restored["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"code: git {restored['git_commit']}; senti lineage reproduce {ref} retrains "
               "from these inputs and compares")


@lineage_app.command("reproduce")
def lineage_reproduce_command(
    ref: Annotated[str, REF_ARGUMENT],
    workdir: Annotated[Path | None, typer.Option(
        "--dir", help="Where to reproduce (new or empty; kept). Default: a temporary "
                      "directory, removed afterwards.")] = None,
    root: Root = Path("."),
) -> None:
    """Retrain a version from its recorded inputs: a clone of the recorded commit with the
    version's raw data, params.yaml and dvc.lock restored, every stage run (nothing is
    registered); then compare the weights' hash and every test metric with the recorded ones.

    Exits 0 when identical, 1 naming what differs."""
    import logging
    import tempfile
    from contextlib import nullcontext

    from senti import lineage

    version, layout = _version(ref, root)
    scratch = (nullcontext(str(workdir)) if workdir is not None
               else tempfile.TemporaryDirectory(prefix="senti-reproduce-"))
    with scratch as where, failing(lineage.LineageError, ParamsError):
        checks = lineage.reproduce(layout.root, version, Path(where),
                                   progress=logging.getLogger(console.PROGRESS_LOGGER).info)
    for line in lineage.summarize(checks):
        typer.echo(line)
    failed = [c.name for c in checks if not c.ok]
    label = f"{version.name}/{version.version}"
    if failed:
        raise fail(f"{label}: not reproduced: {', '.join(failed[:5])}"
                   + (f" and {len(failed) - 5} more" if len(failed) > 5 else "") + " differ")
    typer.echo(f"{label}: reproduced: same inputs, identical weights and test metrics")


# ---- drift ----------------------------------------------------------------------------------

@app.command("drift")
def drift_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns text,label.")],
    root: Root = Path("."),
) -> None:
    """Compare a CSV with the @champion's training data: label shares, text lengths, OOV rate
    under its vocabulary, unseen tokens (thresholds: params.yaml's `drift` section).

    Exits 0 when nothing drifted, 1 when something did (the last line names the features),
    2, with one line, when the check cannot run (nothing to compare with, a file or registry
    artifact that cannot be used): like diff, so a script can tell drift from a check that
    did not run."""
    from senti import drift

    params, layout = _context(root)
    try:
        report = _drift_report(file, params, layout)
    except Exception as exc:  # 1 means drift: a check that did not run (registry, file) is 2
        known = isinstance(exc, (LookupError, ValueError, OSError))
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"  # e.g. MlflowException
        console.error(" ".join(message.split()), exc)
        raise typer.Exit(2) from exc
    for line in drift.summary_lines(report):
        typer.echo(line)
    if report.drifted:
        raise fail(report.headline())
    typer.echo(report.headline())


def _drift_report(file: Path, params: Params, layout: Layout) -> DriftReport:
    """``senti drift``'s check: the CSV, read and segmented as the pipeline does, against
    the @champion's profile and vocabulary."""
    from senti import drift, registry
    from senti.segment import segment_texts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as for lineage
    registry.configure(layout, params.registry.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        reference = registry.drift_reference(params, dst=Path(tmp))
        frame = drift.read_labelled_csv(file, params.data.max_source_bytes,
                                        params.validate.max_text_chars)
        frame["tokens"] = segment_texts(frame["text"].tolist(), reference.user_dict,
                                        params.segment.workers)
    return drift.compare(reference, drift.data_profile(frame, params.drift), params.drift,
                         current=str(file))


# ---- the team stack as local processes ------------------------------------------------------

stack_app = typer.Typer(no_args_is_help=True, help=(
    "The team stack (PostgreSQL, S3, mlflow server, prefect server) as local processes on "
    "loopback ports, for machines without a container engine (docker/compose.yaml is the same "
    "stack in containers)."))
app.add_typer(stack_app, name="stack")


def _stack_record(root: Path) -> Path:
    from senti.config import STATE_DIR

    return root / STATE_DIR / "stack.json"


@stack_app.command("up")
def stack_up_command(root: Root = Path(".")) -> None:
    """Start the stack and print its client environment (eval "$(senti stack up)"); it runs
    until `senti stack down`. Its data lives in a temporary directory and goes with it."""
    from senti import stack

    record = _stack_record(root)
    with failing(stack.StackError):
        if record.exists() and stack.is_running(stack.load(record)):
            raise fail(f"a stack is already running ({record}): senti stack env, or senti "
                       "stack down")
        running = stack.up()
    stack.save(running, record)
    typer.echo(running.exports())
    memory = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in stack.memory_mib(running).items())
    typer.echo(f"# up in {running.started_s:.1f} s; memory: {memory}; record: {record}")


@stack_app.command("env")
def stack_env_command(root: Root = Path(".")) -> None:
    """Print the running stack's client environment: eval "$(senti stack env)"."""
    from senti import stack

    record = _stack_record(root)
    with failing(stack.StackError):
        running = stack.load(record)
    if not stack.is_running(running):
        raise fail(f"the stack recorded in {record} is not running: senti stack down, then up")
    typer.echo(running.exports())


@stack_app.command("down")
def stack_down_command(root: Root = Path(".")) -> None:
    """Stop the stack of `senti stack up` (every process) and delete its data."""
    from senti import stack

    record = _stack_record(root)
    with failing(stack.StackError):
        running = stack.load(record)
    stack.down(running)
    record.unlink()
    typer.echo("stack stopped, its data deleted")


@stack_app.command("buckets")
def stack_buckets_command(
    names: Annotated[list[str], typer.Argument(help="Bucket names.")],
) -> None:
    """Create buckets on the S3 store at AWS_ENDPOINT_URL with AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY; existing ones are kept (docker/compose.yaml's `buckets` service)."""
    from senti import stack

    with failing(stack.StackError):
        stack.create_buckets(stack.S3Access.from_env(os.environ), tuple(names))
    typer.echo(f"buckets ready: {', '.join(names)}")


def main() -> None:
    """The ``senti`` console script: :mod:`senti.console` owns the terminal and the log."""
    console.start(sys.argv[1:])
    try:
        app(prog_name="senti")
    except Exception as exc:  # a bug or an unforeseen failure: one line, traceback in the log
        console.error(f"senti failed unexpectedly: {type(exc).__name__}: {exc}", exc)
        raise SystemExit(1) from None
