"""The architecture, checked: what each DVC stage runs, and which module may import which tool.

Both rules are read from the import statements of the code (``ast``, every import at any
depth, ``if TYPE_CHECKING:`` blocks excepted), so they hold for the code as it is, not as it
was documented.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

# Each heavy tool lives behind the modules listed here; importing it anywhere else fails.
TOOL_HOMES = {
    "prefect": {"flows"},
    "dvc": {"senti.versioning"},
    "dvc_data": {"senti.versioning"},
    "mlflow": {"senti.registry", "senti.lineage", "senti.serve", "senti.server",
               "senti.pyfunc_model"},
    "great_expectations": {"senti.validate"},
    "jieba": {"senti.segment"},
    "gensim": {"senti.embeddings"},
    "keras": {"senti.model", "senti.train", "senti.inference"},
    "tensorflow": {"senti.train", "senti.inference"},
    "dask": {"senti.cluster"},
    "distributed": {"senti.cluster"},
}


def module_file(module: str) -> Path | None:
    """The source file of a ``senti`` module (a package's ``__init__.py``), if it exists."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST) -> Iterator[str]:
    """Every module an AST imports (``from a import b`` gives ``a`` and ``a.b``)."""
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            nodes.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        nodes.extend(ast.iter_child_nodes(node))


def senti_closure(module: str) -> set[str]:
    """``module`` and every ``senti`` module it imports, directly or not, with the packages
    that hold them (their ``__init__`` runs too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in seen or module_file(prefix) is None:
                continue
            seen.add(prefix)
            tree = ast.parse(module_file(prefix).read_text(encoding="utf-8"))  # type: ignore[union-attr]
            todo.extend(n for n in imported_names(tree) if n.split(".")[0] == "senti")
    return seen


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.startswith("src/")}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_each_stage_depends_on_exactly_the_code_it_runs(name):
    stage = dvc_stages()[name]
    assert stage["cmd"] == f"python -m senti.stages.{name}"
    runs = {module_file(m).relative_to(REPO).as_posix()  # type: ignore[union-attr]
            for m in senti_closure(f"senti.stages.{name}")}
    declared = code_deps(stage)
    assert not runs - declared, f"stage {name} runs code dvc.yaml does not list"
    assert not declared - runs, f"dvc.yaml lists code stage {name} does not run"


def test_every_stage_module_is_a_dvc_stage():
    modules = {p.stem for p in (SRC / "senti" / "stages").glob("*.py") if p.stem != "__init__"}
    assert modules == set(dvc_stages())


def test_serving_does_not_import_training():
    assert "senti.train" not in senti_closure("senti.serve")
    assert "senti.train" not in senti_closure("senti.pyfunc_model")


def _python_files() -> Iterator[tuple[str, Path]]:
    for path in sorted((SRC / "senti").rglob("*.py")):
        yield ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(
            ".__init__"), path
    for path in sorted((REPO / "flows").rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts), path


@pytest.mark.parametrize("tool", sorted(TOOL_HOMES))
def test_each_tool_is_imported_only_by_its_modules(tool):
    homes = TOOL_HOMES[tool]
    offenders = []
    for module, path in _python_files():
        allowed = any(module == home or module.startswith(f"{home}.") for home in homes)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not allowed and any(n.split(".")[0] == tool for n in imported_names(tree)):
            offenders.append(module)
    assert not offenders, f"{tool} imported outside {sorted(homes)}: {offenders}"


def test_flows_hold_only_flows_and_deployments():
    """flows/: a module of flows defines at least one flow and no public plain function
    (library code belongs in senti/); flows/deployments.py declares the deployments."""
    import inspect

    from prefect import Flow, Task

    for path in sorted((REPO / "flows").glob("*.py")):
        if path.stem in ("__init__", "deployments"):
            continue
        module = __import__(f"flows.{path.stem}", fromlist=["*"])
        own = {n: v for n, v in vars(module).items() if not n.startswith("_")
               and getattr(v, "__module__", None) == module.__name__}
        assert any(isinstance(v, Flow) for v in own.values()), f"{path.name} has no flow"
        plain = [n for n, v in own.items() if inspect.isfunction(v)]
        assert not plain, f"{path.name}: {plain} are neither flows nor tasks"
        assert all(isinstance(v, Flow | Task) or inspect.isclass(v) for v in own.values())


# A host whose stderr is neither a terminal nor sys.__stderr__ (a notebook, pytest's capture):
# TensorFlow's absl handler holds that stream, senti's DVC module is imported, then Prefect's
# import configures logging, closing every existing handler.
_HOST = """
import io, sys, tempfile
host = io.TextIOWrapper(tempfile.TemporaryFile(), encoding="utf-8")
sys.stdout = sys.stderr = host
import absl.logging
from senti import versioning
try:  # DVC is imported by the first call that needs it at the latest
    versioning.outputs(tempfile.mkdtemp())
except Exception as exc:
    assert type(exc).__name__ == "NotDvcRepoError", exc
assert sys.stdout is host and sys.stderr is host, (sys.stdout, sys.stderr)
import prefect
sys.__stdout__.write("open" if not host.closed else "closed")
"""


def test_importing_senti_leaves_the_hosts_streams_alone():
    done = subprocess.run([sys.executable, "-c", _HOST], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0 and done.stdout == "open", done.stdout + done.stderr
