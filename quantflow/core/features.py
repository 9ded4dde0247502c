"""The splits on disk: ``<split_dir>/<split>.parquet`` (text, label) as split writes them, and their encoded
form ``<features_dir>/<split>.npz`` (ids, y) with ``labels.json`` (the class order) as preprocess writes them.

train, evaluate, compress, the DDP ranks and the studies read them back through here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from quantflow.core.errors import DataError
from quantflow.core.layout import features_file


def load_features(features_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` (N, max_len) int64 and ``y`` (N,) int64 of split ``name``."""
    with np.load(features_file(features_dir, name)) as data:
        return data["ids"], data["y"]


def load_labels(features_dir: Path) -> list[str]:
    """The class names in index order (``y == i`` means ``labels[i]``)."""
    return json.loads((features_dir / "labels.json").read_text(encoding="utf-8"))


def read_split(path: Path, role: str, purpose: str) -> tuple[list[str], list[str]]:
    """Texts and labels of the ``role`` split file; errors name the file, what is wrong and what the split was
    read for (``purpose``, e.g. "evaluate the variants on")."""
    if not path.is_file():
        raise DataError(f"{path}: {role} split not found; run the split step first")
    frame = pd.read_parquet(path)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{path}: the {role} split is empty; nothing to {purpose}")
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
