"""Headline figures: the few numbers per step that ``dvc metrics show`` and ``dvc exp show`` compare.

One small flat JSON file per step (``Layout.*_headline``), declared under ``metrics:`` in dvc.yaml and cached by
DVC, so an experiment's commit (``dvc exp run``) records them through ``dvc.lock``. Files share key names where
the figure means the same (``accuracy``, ``macro_f1``): ``dvc metrics show`` then prints one narrow table with a
row per file. The detailed reports (split.json, metrics.json, compression.json) are plain outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

DECIMALS = 5  # what `dvc metrics show` prints by default


def write_headline(path: Path, figures: Mapping[str, float | int | str]) -> Path:
    """Write ``figures`` (flat: one value per key) as JSON; floats rounded to :data:`DECIMALS`."""
    nested = [key for key, value in figures.items() if isinstance(value, dict | list)]
    if nested:
        raise ValueError(f"{path}: headline figures must be flat, got nested values under {nested}")
    flat = {
        key: round(value, DECIMALS) if isinstance(value, float) else value for key, value in figures.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(flat, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
