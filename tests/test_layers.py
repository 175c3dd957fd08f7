"""The layers run one way: the foundation imports no stage, no stage imports the runner, and no project import is
hidden inside a function (the usual way to dodge an import cycle)."""

from __future__ import annotations

import ast
from importlib.util import find_spec
from pathlib import Path

import pytest

FOUNDATION = ["benchmarks", "clients", "config", "launch", "models", "runs", "stats", "tracking"]
STAGES = ["data", "train", "eval"]
RUNNER = ["runner", "sweep", "ablate", "compare", "fetch"]
# The one import across stages: the data stage guards against the eval's own prompts and vets teacher replies
# with the eval's own classifier.
ACROSS_STAGES = {"data": {"eval"}}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from wherever its folder lives."""
    found = {f"whytune.{name}": Path(find_spec(f"whytune.{name}").origin) for name in FOUNDATION + RUNNER}
    for stage in STAGES:
        folder = Path(find_spec(f"whytune.{stage}").origin).parent
        found |= {f"whytune.{stage}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether the import sits inside a function) for every project import in the file."""
    tree = ast.parse(path.read_text())
    nested = {
        id(node)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("whytune"):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("whytune")]
        else:
            continue
        found += [(name, id(node) in nested) for name in names]
    return found


def layer(module: str) -> str:
    part = module.split(".")[1] if module.count(".") else ""
    if part in FOUNDATION:
        return "foundation"
    return part if part in STAGES else "runner" if part in RUNNER else "other"


def test_the_walk_covers_every_module():
    """Counted, so the walk cannot silently check fewer files than the package has."""
    found = modules()
    assert len(found) > 40 and all(path.exists() for path in found.values())
    shipped = {p.stem for p in Path(find_spec("whytune").origin).parent.glob("*.py") if p.stem != "__init__"}
    assert shipped == set(FOUNDATION + RUNNER), "a new top-level module must be placed in a layer here"


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_run_one_way(module):
    own = layer(module)
    allowed = {
        "foundation": {"foundation", "other"},
        "runner": {"foundation", "runner", "other", *STAGES},
    }.get(own, {"foundation", "other", own, *ACROSS_STAGES.get(own, ())})
    for name, _ in imports(modules()[module]):
        assert layer(name) in allowed, f"{module} ({own}) imports {name} ({layer(name)})"


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_project_import_is_hidden_in_a_function(module):
    hidden = [name for name, inside in imports(modules()[module]) if inside]
    assert hidden == [], f"{module} imports {hidden} inside a function"
