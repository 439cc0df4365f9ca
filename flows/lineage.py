"""``senti lineage ...``: audit a model version's lineage; the DVC side of it.

The audit itself is :mod:`senti.audit` (reads MLflow and DVC object stores as files). This
module adds what needs DVC: pushing the cache to the default remote after a retrain, finding
the project's cache, and fetching recorded objects the cache lacks from the remote.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from senti import audit, lineage, registry
from senti.cli import ROOT_OPTION, fail
from senti.config import Layout, ParamsError, load_params

app = typer.Typer(no_args_is_help=True, help=(
    "Model and data lineage: what produced a version, which versions a data version "
    "trained, proof by hashes, and restoring a version's inputs."))



@app.callback()
def _quiet() -> None:
    """MLflow's per-download progress bars would bury the audit's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


REF_ARGUMENT = typer.Argument(help="NAME@ALIAS or NAME/VERSION, e.g. senti-sentiment@champion.")


# ---- DVC ----------------------------------------------------------------------------------

def push(root: str | Path) -> int | None:
    """``dvc push`` of every cached output in dvc.lock to the default remote; the number of
    files transferred, or None when the project has no default remote."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if not repo.config["core"].get("remote"):
            return None
        return repo.push()


def object_dirs(root: str | Path) -> list[Path]:
    """The project's DVC cache objects directory (``.../files/md5``), wherever it is set."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [Path(repo.cache.local.path)]


def _wanted(md5s: list[str], cache: list[Path]) -> list[str]:
    """``md5s`` plus the files listed by those of them that are directory manifests present
    in the cache."""
    manifests = [lineage.find_object(md5, cache) for md5 in md5s if md5.endswith(".dir")]
    entries = [entry for manifest in manifests if manifest is not None
               for _, entry in lineage.dir_entries(manifest)]
    return list(dict.fromkeys([*md5s, *entries]))


def fetch(root: str | Path, md5s: list[str]) -> list[str]:
    """Fetch from the default remote into the cache the objects of ``md5s`` the cache lacks,
    with every file of the directory outputs among them; return the hashes that were missing.
    Objects the remote lacks too stay missing: the audit reports them."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    with Repo(str(root)) as repo:
        cache = [Path(repo.cache.local.path)]
        fetched: list[str] = []
        for _ in range(2):  # the objects, then the files of manifests fetched in round one
            missing = [md5 for md5 in _wanted(md5s, cache)
                       if lineage.find_object(md5, cache) is None and md5 not in fetched]
            if not missing or not repo.config["core"].get("remote"):
                break
            repo.cloud.pull([HashInfo("md5", md5) for md5 in missing])
            fetched += missing
        return fetched


# ---- commands -----------------------------------------------------------------------------

def _version(ref: str, root: Path):
    try:
        registry.configure(Layout(root), load_params(root).registry.experiment)
        return audit.resolve(ref)
    except (audit.LineageError, ParamsError) as exc:
        raise fail(str(exc), code=2) from exc


@app.command("model")
def model_command(
    ref: Annotated[str, REF_ARGUMENT],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """The chain of a version: run, code, params, metrics, data, validation, segmenter,
    vocabulary, Prefect run, artifact hashes, promotion history."""
    chain = audit.model_lineage(_version(ref, root))
    typer.echo(json.dumps(chain, ensure_ascii=False, indent=2, sort_keys=True) if as_json
               else audit.render(chain))


@app.command("data")
def data_command(
    target: Annotated[str, typer.Argument(
        help="A data file or directory (hashed as DVC does) or a DVC hash from dvc.lock.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Every model version trained on a data version. Exits 1 when there is none."""
    try:
        registry.configure(Layout(root), load_params(root).registry.experiment)
    except ParamsError as exc:
        raise fail(str(exc), code=2) from exc
    path = Path(target)
    if not path.exists() and not re.fullmatch(r"[0-9a-f]{32}(\.dir)?", target):
        raise fail(f"{target}: no such file or directory, and not a DVC md5 hash", code=2)
    md5 = lineage.md5_path(path) if path.exists() else target
    versions = audit.trained_on(md5)
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


@app.command("verify")
def verify_command(
    ref: Annotated[str, REF_ARGUMENT],
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Recompute the hashes of the version's model artifacts and training data (fetched from
    the DVC remote when the cache lacks them) and compare with the recorded ones.

    Exits 0 when everything matches, 1 listing each mismatch otherwise."""
    version = _version(ref, root)
    try:
        fetched = fetch(root, audit.recorded_objects(version))
    except audit.LineageError:
        fetched = []  # verify reports the missing record
    if fetched:
        typer.echo(f"fetched {len(fetched)} object(s) from the DVC remote", err=True)
    checks = audit.verify(version, object_dirs(root))
    failed = [c for c in checks if not c.ok]
    for line in audit.summarize(checks):
        typer.echo(line)
    label = f"{version.name}/{version.version}"
    if failed:
        raise fail(f"{label}: {len(failed)} of {len(checks)} checks failed")
    typer.echo(f"{label}: all {len(checks)} recorded hashes match")


@app.command("checkout")
def checkout_command(
    ref: Annotated[str, REF_ARGUMENT],
    dest: Annotated[Path, typer.Argument(help="Directory to restore into.")],
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Restore the exact raw data and params.yaml that produced a version into DEST."""
    version = _version(ref, root)
    try:
        raw_md5 = (audit.training_record(version).get("raw_data") or {}).get("md5")
        fetch(root, [raw_md5] if raw_md5 else [])
        restored = audit.checkout(version, object_dirs(root), dest)
    except audit.LineageError as exc:
        raise fail(str(exc)) from exc
    for relpath, md5 in restored["files"].items():
        typer.echo(f"restored {dest / relpath}  md5 {md5}")
    typer.echo(f"restored {dest / restored['params']}")
    typer.echo(f"code: git {restored['git_commit']} (git worktree add DIR "
               f"{restored['git_commit']})")
