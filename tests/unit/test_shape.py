"""The house's shape (STYLE.md; imports: test_layers.py): tasks/ holds the steps and nothing else, steps stay short, functions stay
short, and tasks/stages.py gives each stage the params sections dvc.yaml lists for it.

Checked per file, so a failure names the file (and the function) to shorten.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tasks.stages import SECTIONS, STAGES

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tasks"
MAX_STEP_LINES = 300
MAX_FUNCTION_LINES = 60
FUNCTION_ROOTS = ("quantflow", "tasks", "flows", "serving")


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts)


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_tasks_holds_exactly_the_stages_register_and_the_wiring() -> None:
    expected = {f"{name}.py" for name in dvc_stages()} | {"register.py", "stages.py", "__init__.py"}
    assert {p.name for p in TASKS.glob("*.py")} == expected
    assert [p.name for p in TASKS.iterdir() if p.is_dir() and p.name != "__pycache__"] == []


def test_stages_follow_dvc_yaml() -> None:
    assert list(STAGES) == list(dvc_stages())


@pytest.mark.parametrize("path", python_files("tasks"), ids=ids(python_files("tasks")))
def test_step_module_is_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_STEP_LINES, (
        f"{path.relative_to(REPO)} has {lines} lines (at most {MAX_STEP_LINES} in tasks/): move helpers that "
        "are not the step itself to quantflow/core"
    )


def long_functions(path: Path) -> list[str]:
    """``name (N lines, line L)`` for every def over the limit, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("path", python_files(*FUNCTION_ROOTS), ids=ids(python_files(*FUNCTION_ROOTS)))
def test_no_function_over_60_lines(path: Path) -> None:
    assert long_functions(path) == [], f"{path.relative_to(REPO)}: split these functions"


@pytest.mark.parametrize("stage", list(SECTIONS))
def test_wiring_gives_each_stage_the_sections_dvc_yaml_lists(stage: str) -> None:
    declared = dvc_stages()[stage].get("params", [])
    assert sorted(SECTIONS[stage]) == sorted(declared), (
        f"tasks/stages.py SECTIONS[{stage!r}] = {SECTIONS[stage]} but dvc.yaml's {stage} params: {declared}"
    )
