"""Imports point down only, between every pair of rooms, and no module imports itself back through others.

The rooms, top to bottom: the CLI (quantflow/cli.py) → flows/ → tasks/ (the steps) → the nightly intake
(quantflow/intake/) and the registry (quantflow/registry/) → the core (quantflow/core/); the service (serving/)
stands on the core alone. The graph is read from the source (every import statement, function-level ones
included), so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("quantflow", "tasks", "flows", "serving")
ROOMS = ("cli", "flows", "tasks", "intake", "registry", "serving", "core")
ALLOWED = {
    "cli": {"flows", "tasks", "intake", "registry", "serving", "core"},
    "flows": {"tasks", "intake", "registry", "core"},
    "tasks": {"intake", "registry", "core"},
    "intake": {"core"},
    "registry": {"core"},
    "serving": {"core"},
    "core": set(),
}
# third-party packages a room must not import (the service stays light; the core is plain Python + ML libs)
BANNED = {"core": {"prefect", "mlflow"}, "serving": {"prefect", "mlflow", "torch"}}


def room(module: str) -> str | None:
    """The room of a project module, None for anything else (the root package counts as the core)."""
    parts = module.split(".")
    if parts[0] == "quantflow":
        if len(parts) == 1 or parts[1] == "core":
            return "core"
        return {"cli": "cli", "registry": "registry", "intake": "intake"}.get(parts[1])
    return parts[0] if parts[0] in ("tasks", "flows", "serving") else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str) -> set[str]:
    """Every module an import statement in ``path`` names (absolute, as written; relative ones resolved)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@cache
def graph() -> dict[str, set[str]]:
    """Project module → the project modules it imports."""
    known = modules()
    return {
        name: {m for m in imported(path, name) if m in known and m != name} for name, path in known.items()
    }


@cache
def third_party() -> dict[str, set[str]]:
    return {name: {m.split(".")[0] for m in imported(path, name)} for name, path in modules().items()}


def edges(source: str, target: str) -> list[str]:
    return sorted(
        f"{a} imports {b}"
        for a, deps in graph().items()
        for b in deps
        if room(a) == source and room(b) == target
    )


@pytest.mark.parametrize(("source", "target"), list(itertools.permutations(ROOMS, 2)))
def test_imports_between_rooms_point_down(source: str, target: str) -> None:
    if target not in ALLOWED[source]:
        assert edges(source, target) == [], f"{source} must not import {target}"


def test_every_project_module_is_in_a_room() -> None:
    assert [m for m in modules() if room(m) is None] == []


def test_a_step_imports_no_other_step() -> None:
    steps = [m for m in modules() if m.startswith("tasks.")]
    bad = [f"{a} imports {b}" for a in steps for b in graph()[a] if b.startswith("tasks.") and b != a]
    assert bad == []


@pytest.mark.parametrize("source", sorted(BANNED))
def test_rooms_import_no_banned_library(source: str) -> None:
    bad = sorted(
        f"{name} imports {lib}"
        for name, libs in third_party().items()
        if room(name) == source
        for lib in libs & BANNED[source]
    )
    assert bad == []


def test_no_import_circle() -> None:
    """Depth-first search over the module graph; a back edge is a circle (named by its modules)."""
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph()[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph()):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize("source", ["core", "serving"])
def test_at_run_time_too(source: str) -> None:
    """Importing every module of the room in a fresh interpreter loads nothing above it (nor a banned library)."""
    names = sorted(m for m in modules() if room(m) == source and not m.endswith("__main__"))
    above = sorted(
        {"prefect", "mlflow", "tasks", "flows", "quantflow.cli", "quantflow.registry", "quantflow.intake"}
        | BANNED[source]
    )
    if source == "core":
        above.append("serving")
    probe = (
        "import importlib, sys\n"
        f"for m in {names!r}: importlib.import_module(m)\n"
        f"print(','.join(m for m in {above!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == ""
