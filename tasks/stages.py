"""The pipeline's steps in order, each wired to its inputs and outputs once.

``quantflow stage <name>`` (what ``dvc.yaml`` runs) calls the plain function; the Prefect flow calls the
step's ``@task`` wrapper with the very same arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantflow.core.layout import Layout
from quantflow.core.params import Params

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "compress")


def stage_args(name: str, params: Params, layout: Layout) -> tuple[Any, ...]:
    """The positional arguments of step ``name`` (for its plain function and its task alike)."""
    lay, p = layout, params
    wiring: dict[str, Callable[[], tuple[Any, ...]]] = {
        "ingest": lambda: (p.ingest, lay.raw.parent, p.seed, lay.root, lay.accepted_dir),
        "validate": lambda: (p, lay.raw, lay.validation_dir, lay.expectations_dir),
        "split": lambda: (p.split, lay.raw, lay.split_dir, lay.split_stats),
        "preprocess": lambda: (p.preprocess, lay.split_dir, lay.features_dir, lay.tokenizer_dir, p.labels),
        "train": lambda: (
            p.train,
            lay.features_dir,
            lay.tokenizer_dir,
            lay.model_dir,
            lay.train_history,
            p.seed,
        ),
        "evaluate": lambda: (
            p.evaluate,
            lay.model_dir,
            lay.features_dir,
            lay.split_dir,
            lay.reports_dir,
            p.seed,
        ),
        "compress": lambda: (
            p,
            lay.model_dir,
            lay.split_dir / "test.parquet",
            lay.variants_dir,
            lay.compression_report,
        ),
    }
    if name not in wiring:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return wiring[name]()


def step_function(name: str, as_task: bool = False) -> Callable[..., Any]:
    """The plain function of a step, or its Prefect task. Imports lazily: GX and torch load in seconds."""
    import importlib

    module = importlib.import_module(f"tasks.{name}")
    return getattr(module, f"{name}_task" if as_task else name)


def run_stage(name: str, params: Params, layout: Layout) -> Any:
    """Run one step as DVC does: the plain function, no Prefect."""
    return step_function(name)(*stage_args(name, params, layout))
