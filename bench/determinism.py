"""Deterministic training: is a retrain bit-identical, and what does determinism cost?

``train`` (the default) reads the last pipeline run's data (data/processed/, as the other
benchmarks do) and trains the model of params.yaml four times, each run in its own process:
``train.deterministic`` on, off, on, off. The second on/off pair runs while busy loops (one
per core) load the CPU. For each run: the training's wall and CPU seconds, the sha256 of the
weights, the test metrics and the sha256 of the test probabilities; then whether the runs of
each setting are identical and what determinism costs. ``--samples`` and ``--epochs`` make
the run smaller (with ``--epochs``, early stopping is off, so every run trains as long).

``pipeline`` runs ``senti retrain`` (ingest to evaluate, registration, gate) twice, each in a
fresh throw-away project copied from this checkout (own git, DVC repo, remote and MLflow
store; ``--set`` values are written into its params.yaml before its first commit), and
compares every output hash in the two dvc.lock files, the test metrics and the weights'
sha256 (a ``.keras`` file records when it was saved, so the model directory's own hash
differs between two identical trainings).

    python bench/determinism.py train [--samples 5000] [--epochs 3]
    python bench/determinism.py pipeline [--set key=value ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "config", "src", ".gitignore")


@contextmanager
def cpu_load(busy: bool) -> Iterator[None]:
    """While inside: one busy-loop process per core (none unless ``busy``)."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count() or 1)] if busy else []
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def train_once(deterministic: bool, samples: int, epochs: int) -> dict:
    """One training as the train stage does it (in this process); its timings and results."""
    import numpy as np
    import pandas as pd

    from senti import evaluate as ev
    from senti.config import load_context
    from senti.inference import predict_proba
    from senti.io import read_json
    from senti.model import weights_sha256
    from senti.train import train_model
    from senti.vocab import encode_split, load_vocab

    params, layout = load_context(".")
    tokens, vocab = pd.read_parquet(layout.tokens), load_vocab(layout.vocab)
    labels = read_json(layout.labels)

    def encode(split: str, limit: int = 0):
        part = tokens[tokens["split"] == split]  # the corpus lists one label, then the other
        part = part.sample(limit, random_state=0) if 0 < limit < len(part) else part
        return encode_split(part["tokens"], part["label"], vocab, params.model.maxlen, labels)

    update: dict = {"deterministic": deterministic}
    if epochs:
        update |= {"epochs": epochs, "patience": epochs}
    train_params = params.train.model_copy(update=update)
    train = encode("train", samples)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as backup:
        model, history = train_model(
            train, encode("val"), len(vocab), len(labels), params.model, train_params,
            Path(backup) / "backup", "bench",
            initial_embedding=np.load(layout.embeddings, allow_pickle=False))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    test_x, test_y = encode("test")
    proba = predict_proba(model, test_x)
    metrics = ev.classification_metrics(test_y, proba, labels)
    return {"deterministic": deterministic, "train_texts": len(train[1]),
            "epochs": len(history["loss"]), "train_wall_s": round(wall, 1),
            "train_cpu_s": round(cpu, 1), "weights_sha256": weights_sha256(model),
            "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
            "test_proba_sha256": hashlib.sha256(proba.tobytes()).hexdigest()}


def bench_training(samples: int, epochs: int) -> None:
    runs = []
    for loaded in (False, True):
        for deterministic in (True, False):
            command = [sys.executable, __file__, "_one", f"--samples={samples}",
                       f"--epochs={epochs}", f"--deterministic={int(deterministic)}"]
            with cpu_load(loaded):
                done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"training run failed:\n{done.stderr[-3000:]}")
            runs.append({"cpu_loaded": loaded, **json.loads(done.stdout.splitlines()[-1])})
            print(json.dumps(runs[-1]), flush=True)
    summary: dict = {}
    for setting, deterministic in (("on", True), ("off", False)):
        same = [r for r in runs if r["deterministic"] == deterministic]
        summary[f"identical_{setting}"] = len({
            (r["weights_sha256"], r["test_accuracy"], r["test_macro_f1"], r["test_proba_sha256"])
            for r in same}) == 1
    for loaded in (False, True):
        on, off = (next(r for r in runs if r["cpu_loaded"] == loaded and r["deterministic"] == d)
                   for d in (True, False))
        condition = "loaded" if loaded else "quiet"
        for clock in ("wall", "cpu"):
            summary[f"cost_{clock}_{condition}"] = round(
                on[f"train_{clock}_s"] / off[f"train_{clock}_s"] - 1, 3)
    print(json.dumps(summary))


def _lock_outputs(project: Path) -> dict[str, str]:
    """Every output path in ``project``'s dvc.lock with its recorded hash."""
    lock = yaml.safe_load((project / "dvc.lock").read_text(encoding="utf-8"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage.get("outs", [])}


def retrain_fresh_project(project: Path, overrides: list[str]) -> dict:
    """Copy the checkout's pipeline into ``project`` with ``overrides`` in its params.yaml
    (new git and DVC repos, the default remote beside it), run ``senti retrain`` there; its
    time, outputs and results."""
    from senti.config import parse_overrides, write_overrides

    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, project / name)
    write_overrides(project, parse_overrides(overrides))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GX_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)

    for command in (("git", "init", "-q"), ("git", "add", "-A"),
                    ("git", "-c", "user.email=bench@senti.invalid", "-c", "user.name=bench",
                     "commit", "-qm", "bench"),
                    ("dvc", "init", "-q")):
        run(*command).check_returncode()
    shutil.copy2(REPO / ".dvc" / "config", project / ".dvc" / "config")
    started = time.perf_counter()
    done = run("senti", "retrain")
    if done.returncode:
        sys.exit(f"senti retrain failed in {project}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    reports = project / "reports"
    return {"seconds": round(time.perf_counter() - started, 1),
            "outputs": _lock_outputs(project),
            "metrics": json.loads((reports / "metrics.json").read_text(encoding="utf-8")),
            "weights_sha256": json.loads(
                (reports / "train.json").read_text(encoding="utf-8"))["weights_sha256"]}


def bench_pipeline(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as work:
        first, second = (retrain_fresh_project(Path(work) / f"run{i}" / "project", overrides)
                         for i in (1, 2))
    model = {k: first["metrics"]["model"][k] for k in ("accuracy", "macro_f1")}
    print(json.dumps({
        "seconds": [first["seconds"], second["seconds"]],
        "test_metrics": model,
        "metrics_identical": first["metrics"] == second["metrics"],
        "weights_identical": first["weights_sha256"] == second["weights_sha256"],
        "outputs_differing": sorted(path for path, digest in first["outputs"].items()
                                    if second["outputs"].get(path) != digest),
        "outputs_compared": len(first["outputs"]),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="training twice with determinism, twice without")
    one = commands.add_parser("_one")  # one training run: the processes `train` starts
    for sub in (train, one):
        sub.add_argument("--samples", type=int, default=0,
                         help="train on a fixed sample of N training texts (0 = all)")
        sub.add_argument("--epochs", type=int, default=0,
                         help="train exactly N epochs (0 = train.epochs, early stopping on)")
    one.add_argument("--deterministic", type=int, choices=(0, 1), required=True)
    pipeline = commands.add_parser("pipeline", help="senti retrain twice in fresh projects")
    pipeline.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="a param of both projects (repeatable)")
    args = parser.parse_args()
    if args.command == "_one":
        print(json.dumps(train_once(bool(args.deterministic), args.samples, args.epochs)))
    elif args.command == "pipeline":
        bench_pipeline(args.overrides)
    else:
        bench_training(getattr(args, "samples", 0), getattr(args, "epochs", 0))


if __name__ == "__main__":
    main()
