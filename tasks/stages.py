"""The pipeline's steps in order, each wired to its inputs and outputs once.

``quantflow stage <name>`` (what ``dvc.yaml`` runs) calls the plain function; the Prefect flow calls the
step's ``@task`` wrapper with the very same arguments. A step receives only the params sections it reads,
named in :data:`SECTIONS` (and under the stage's ``params:`` in dvc.yaml); the wiring sees ``params`` through
:class:`Sections`, so it cannot hand a step anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantflow.core.layout import Layout
from quantflow.core.params import Params

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "compress")

# The params.yaml sections each step reads. Paths are not listed: they reach dvc.yaml as ${paths.*}.
SECTIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("seed", "ingest"),
    "validate": ("validate", "ingest"),  # the label set (validate.labels or the built-in dataset's), its name
    "split": ("seed", "split"),  # the seed: the label audit's folds and model
    "preprocess": ("preprocess", "validate", "ingest"),  # the label set orders the classes
    "train": ("seed", "train"),
    "evaluate": ("seed", "evaluate"),
    "compress": ("seed", "compress", "calibrate"),
}
# values derived from more than one section, and the sections each is derived from
_DERIVED = {"labels": ("validate", "ingest")}
_ATTRIBUTE = {"validate": "validate_"}  # the Params field behind a section name


class Sections:
    """``params`` as one stage may read it: its :data:`SECTIONS` and the values derived from them only."""

    def __init__(self, params: Params, stage: str) -> None:
        self._params, self._stage = params, stage

    def __getattr__(self, name: str) -> Any:
        undeclared = [s for s in _DERIVED.get(name, (name,)) if s not in SECTIONS[self._stage]]
        if undeclared:
            raise AttributeError(
                f"stage {self._stage!r} reads params section(s) {undeclared}, which tasks/stages.py SECTIONS "
                "does not give it; add them there and under the stage's params: in dvc.yaml"
            )
        return getattr(self._params, _ATTRIBUTE.get(name, name))


def _wiring(s: Sections, lay: Layout) -> dict[str, Callable[[], tuple[Any, ...]]]:
    """Each step's positional arguments: its params sections first, then paths, then derived values."""
    return {
        "ingest": lambda: (s.ingest, lay.raw, s.seed, lay.root, lay.accepted_dir),
        "validate": lambda: (
            s.validate,
            lay.raw,
            lay.validation_report,
            lay.expectations_dir,
            s.labels,
            s.ingest.dataset,
            lay.data_docs,
        ),
        "split": lambda: (
            s.split,
            lay.raw,
            lay.split_dir,
            lay.split_stats,
            s.seed,
            lay.split_headline,
            lay.label_issues,
        ),
        "preprocess": lambda: (s.preprocess, lay.split_dir, lay.features_dir, lay.tokenizer_dir, s.labels),
        "train": lambda: (s.train, lay.features_dir, lay.tokenizer_dir, lay.training, s.seed),
        "evaluate": lambda: (
            s.evaluate,
            lay.training,
            lay.features_dir,
            lay.split_dir,
            lay.evaluation,
            s.seed,
        ),
        "compress": lambda: (
            s.compress,
            s.calibrate,
            lay.model_dir,
            lay.split_dir,
            lay.variants_dir,
            lay.compression,
            s.seed,
        ),
    }


def stage_args(name: str, params: Params, layout: Layout) -> tuple[Any, ...]:
    """The positional arguments of step ``name`` (for its plain function and its task alike)."""
    if name not in SECTIONS:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return _wiring(Sections(params, name), layout)[name]()


def step_function(name: str, as_task: bool = False) -> Callable[..., Any]:
    """The plain function of a step, or its Prefect task. Imports lazily: GX and torch load in seconds."""
    import importlib

    module = importlib.import_module(f"tasks.{name}")
    return getattr(module, f"{name}_task" if as_task else name)


def run_stage(name: str, params: Params, layout: Layout) -> Any:
    """Run one step as DVC does: the plain function, no Prefect."""
    return step_function(name)(*stage_args(name, params, layout))
