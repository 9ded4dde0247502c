"""Params for tests: the repo's params.yaml, with the changes a test makes written out where it makes them.

The pydantic models carry no defaults: params.yaml is the one place a shipped value is written, so a test either
runs the shipped configuration or says, key by key, what it changes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quantflow.core.params import Params, load_params

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


@cache
def shipped_params() -> Params:
    """The repo's params.yaml as shipped (parsed once per test process; Params is frozen)."""
    return load_params(PARAMS_FILE)


def params_with(changes: dict[str, Any]) -> Params:
    """params.yaml with dotted keys changed, e.g. ``{"train.epochs": 1}``; validated like the file."""
    return shipped_params().with_overrides(changes) if changes else shipped_params()


def section_with(section: str, **changes: Any) -> BaseModel:
    """One section of params.yaml (``train``, ``split``...) with some of its keys changed."""
    params = params_with({f"{section}.{key}": value for key, value in changes.items()})
    return getattr(params, "validate_" if section == "validate" else section)
