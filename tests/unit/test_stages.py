"""tasks/stages.py: each step gets its own params sections (never the whole Params), and the wiring fits the
step's signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from quantflow.core.layout import Layout
from quantflow.core.params import Params
from tasks.stages import SECTIONS, STAGES, Sections, stage_args, step_function
from tests.params_helpers import shipped_params


@pytest.mark.parametrize("stage", STAGES)
def test_step_takes_its_sections_not_the_whole_params(stage: str, tmp_path: Path) -> None:
    params = shipped_params()
    args = stage_args(stage, params, Layout.of(params, tmp_path))
    signature = inspect.signature(step_function(stage))
    assert len(args) == len(signature.parameters)
    assert not any(isinstance(arg, Params) for arg in args)
    assert "Params" not in [str(p.annotation) for p in signature.parameters.values()]
    assert stage in SECTIONS[stage]  # its own section, passed first
    assert args[0] is getattr(params, "validate_" if stage == "validate" else stage)


def test_the_wiring_cannot_read_an_undeclared_section() -> None:
    view = Sections(shipped_params(), "split")
    assert view.split is shipped_params().split
    with pytest.raises(AttributeError, match=r"stage 'split' reads params section\(s\) \['train'\]"):
        _ = view.train
    with pytest.raises(AttributeError, match=r"\['validate', 'ingest'\]"):
        _ = view.labels  # derived from two sections split does not declare


def test_unknown_stage_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage 'register'; choose one of ingest, validate"):
        stage_args("register", shipped_params(), Layout.of(shipped_params(), tmp_path))
