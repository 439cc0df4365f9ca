"""The ``senti`` console script: library commands plus the Prefect-orchestrated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows import lineage
from senti.cli import ROOT_OPTION, app, fail
from senti.config import ParamsError, apply_overrides, load_params, parse_overrides


@app.command("retrain")
def retrain_command(
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a param for this run: section.key=value (repeatable).")] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Validate, segment, build the vocabulary, train, evaluate and register (Prefect + DVC)."""
    from flows.retrain import StageFailed, retrain

    try:
        overrides = parse_overrides(set_ or [])
        apply_overrides(load_params(root).raw, overrides)  # reject bad keys before starting
    except ParamsError as exc:
        raise fail(str(exc), code=2) from exc
    try:
        result = retrain(root=str(root), overrides=overrides)
    except (StageFailed, ParamsError) as exc:
        raise fail(str(exc)) from exc
    skipped = [s for s, status in result["stages"].items() if status == "skipped"]
    typer.echo(f"stages skipped (unchanged): {', '.join(skipped) or 'none'}")
    if result.get("nothing_changed"):
        typer.echo("nothing changed: data and params as for the registered version below")
    state = "registered" if result["registered"] else "unchanged inputs, already registered as"
    typer.echo(f"{state} {result['model_uri']}")
    for who in ("model", "baseline"):
        m = result["metrics"][who]
        name = "BiLSTM+attention" if who == "model" else "baseline (TF-IDF+LinearSVC)"
        typer.echo(f"{name:<28} test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    promotion = result["promotion"]
    typer.echo(f"promotion gate: {promotion['decision']}: {promotion['reason']}")


@app.command("promote")
def promote_command(
    version: Annotated[str | None, typer.Option(
        help="Model version to judge; default: the @challenger.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if the gate rejects it (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden.")] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Run the promotion gate: challenger vs champion on the current test split.

    Exits 0 when the version became the champion, 1 when the gate rejected it.
    """
    from flows.promote import promote
    from senti.promote import PromotionError

    if force and not (reason and reason.strip()):
        raise fail("--force needs --reason \"...\": the override is recorded", code=2)
    try:
        decision = promote(root=str(root), version=version, force=force, reason=reason)
    except (PromotionError, ParamsError) as exc:
        raise fail(str(exc)) from exc
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
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Make the previous champion the champion again."""
    from flows.promote import rollback
    from senti.promote import PromotionError

    try:
        restored = rollback(root=str(root), reason=reason)
    except (PromotionError, ParamsError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"@champion: version {restored['from_version']} -> {restored['to_version']}")


@app.command("schedule")
def schedule_command(
    root: Annotated[Path, ROOT_OPTION] = Path("."),
    prefect_yaml: Annotated[Path | None, typer.Option(
        help="The deployments file; default: prefect.yaml in --root.")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Only check prefect.yaml and print the next run times.")] = False,
) -> None:
    """Serve prefect.yaml's deployments on this machine (its cron schedules included) until
    Ctrl-C. With PREFECT_API_URL set they are registered on that server; otherwise a local
    Prefect server runs for as long as this command does.
    """
    from flows import schedule

    path = prefect_yaml or root / schedule.PREFECT_YAML
    try:
        specs = schedule.load_deployments(path)
        if check:
            for spec in specs:
                flow = schedule.resolve_flow(spec, path.parent)
                per_run = schedule.check_parameters(spec, flow)
                schedule.check_overrides(spec, root)
                typer.echo(f"{flow.name}/{spec.name}: {spec.entrypoint}, parameters "
                           f"{spec.parameters}" + (f" (per run: {', '.join(per_run)})"
                                                   if per_run else ""))
                for cron in spec.schedules:
                    times = ", ".join(t.strftime("%Y-%m-%d %H:%M %Z")
                                      for t in schedule.next_runs(cron))
                    typer.echo(f"    cron {cron.cron!r} ({cron.timezone}); next runs: {times}")
            return
        schedule.serve(specs, root, path.parent, echo=typer.echo)
    except (schedule.DeploymentConfigError, ParamsError) as exc:
        raise fail(str(exc), code=2) from exc
    except schedule.Stopped as exc:
        typer.echo(f"{exc} received before serving began: nothing registered is left "
                   "running.")
    typer.echo("senti schedule stopped.")


app.add_typer(lineage.app, name="lineage")


def main() -> None:
    app(prog_name="senti")
