"""Batch prediction from a CSV, Parquet or JSONL file with the service's inference code (serving.model)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from serving.model import ServedModel

logger = logging.getLogger(__name__)

READERS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}


def file_kind(path: Path) -> str:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(READERS)}")
    return kind


def read_table(path: Path) -> pd.DataFrame:
    kind = file_kind(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (--input)")
    if kind == "csv":
        return pd.read_csv(path)
    if kind == "parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    kind = file_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def predict_file(
    model: ServedModel, src: Path, dst: Path, text_column: str = "text", batch_size: int = 256
) -> pd.DataFrame:
    """Input rows plus ``label``, ``proba_<label>`` per class, ``model_version`` and ``variant``; a progress bar
    on stderr counts the texts."""
    from tqdm import tqdm

    frame = read_table(src)
    if text_column not in frame.columns:
        raise ValueError(f"{src}: no {text_column!r} column (has: {list(frame.columns)}); pass --text-column")
    texts = frame[text_column].fillna("").astype(str).tolist()
    rows: list[dict] = []
    with tqdm(total=len(texts), unit="text", desc=src.name) as bar:
        for start in range(0, len(texts), batch_size):
            rows.extend(model.predict(texts[start : start + batch_size]))
            bar.update(min(batch_size, len(texts) - start))
    out = frame.copy()
    out["label"] = [r["label"] for r in rows]
    for label in model.labels:
        out[f"proba_{label}"] = [r["probabilities"][label] for r in rows]
    out["model_version"], out["variant"] = model.version, model.variant
    write_table(out, dst)
    logger.info("wrote %d predictions to %s", len(out), dst)
    return out
