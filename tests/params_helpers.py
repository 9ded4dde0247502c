"""Params for tests: the repo's params.yaml, with the changes a test makes written out where it makes them.

The pydantic models carry no defaults: params.yaml is the one place a shipped value is written, so a test either
runs the shipped configuration or says, key by key, what it changes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from quantflow.core.params import (
    ClassicParams,
    IngestParams,
    Params,
    PreprocessParams,
    SplitParams,
    TrainParams,
    load_params,
)

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


@cache
def shipped_params() -> Params:
    """The repo's params.yaml as shipped (parsed once per test process; Params is frozen)."""
    return load_params(PARAMS_FILE)


def params_with(changes: dict[str, Any]) -> Params:
    """params.yaml with dotted keys changed, e.g. ``{"train.epochs": 1}``; validated like the file."""
    return shipped_params().with_overrides(changes) if changes else shipped_params()


def _section(name: str, changes: dict[str, Any]) -> Any:
    params = params_with({f"{name}.{key}": value for key, value in changes.items()})
    return getattr(params, "validate_" if name == "validate" else name)


def ingest_with(**changes: Any) -> IngestParams:
    """params.yaml's ingest section with ``changes``; user data needs validate.labels too: use params_with."""
    return _section("ingest", changes)


def split_with(**changes: Any) -> SplitParams:
    return _section("split", changes)


def preprocess_with(**changes: Any) -> PreprocessParams:
    return _section("preprocess", changes)


def train_with(**changes: Any) -> TrainParams:
    return _section("train", changes)


def classic_with(**changes: Any) -> ClassicParams:
    """params.yaml's train.classic section (the classic candidates' settings) with ``changes``."""
    return train_with(**{f"classic.{key}": value for key, value in changes.items()}).classic


def write_params(path: Path, changes: dict[str, Any] | None = None) -> Path:
    """A complete params.yaml at ``path``: the repo's, with dotted keys changed (validated first)."""
    import yaml

    data = params_with(changes or {}).model_dump(mode="json", by_alias=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
