"""dvc.yaml declares everything each stage runs and reads, so `dvc repro` never skips work it should redo.

Code: a stage's ``deps`` must cover every project module its step reaches through imports (its own module, the
core modules it calls, ...), read from the source like the layer test; and list no project module it does not
reach. (Params: tests/unit/test_shape.py compares dvc.yaml with tasks/stages.py SECTIONS, and
tests/unit/test_stages.py checks a step can read no other section.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.stages import STAGES
from tests.unit.test_layers import ROOT, graph, modules

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def reached(start: str) -> set[str]:
    """Project modules reachable from ``start`` through imports (package __init__ files left out: they hold no
    code a step runs)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph()[name])
    return {m for m in seen if modules()[m].name != "__init__.py"}


def code_deps(stage: str) -> list[str]:
    return [
        d
        for d in DVC[stage]["deps"]
        if d.endswith(".py")
        or (ROOT / d).is_dir()
        and d.split("/")[0] in ("quantflow", "tasks", "flows", "serving")
    ]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_lists_the_code_it_runs(stage: str) -> None:
    files = {m: modules()[m] for m in reached(f"tasks.{stage}")}
    deps = code_deps(stage)
    missing = sorted(str(p.relative_to(ROOT)) for p in files.values() if not covered(p, deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs these files but does not list them in deps"
    unused = sorted(d for d in deps if not any(covered(p, [d]) for p in files.values()))
    assert unused == [], f"dvc.yaml stage {stage!r} lists code it never runs"
