"""The ``senti`` console script: library commands plus the Prefect-orchestrated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    state = "registered" if result["registered"] else "unchanged inputs, already registered as"
    typer.echo(f"{state} {result['model_uri']}")
    for who in ("model", "baseline"):
        m = result["metrics"][who]
        name = "BiLSTM+attention" if who == "model" else "baseline (TF-IDF+LinearSVC)"
        typer.echo(f"{name:<28} test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")


def main() -> None:
    app(prog_name="senti")
