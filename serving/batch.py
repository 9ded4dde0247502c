"""Batch prediction from a CSV, Parquet or JSONL file with the service's inference code (serving.model)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from quantflow.core.tables import read_table, table_kind, write_table
from serving.model import ServedModel

logger = logging.getLogger(__name__)


def predict_file(
    model: ServedModel, src: Path, dst: Path, text_column: str = "text", batch_size: int = 256
) -> pd.DataFrame:
    """Input rows plus ``label``, ``proba_<label>`` per class, ``model_version`` and ``variant``; a progress bar
    on stderr counts the texts."""
    from tqdm import tqdm

    table_kind(dst)  # an unsupported --output suffix fails before any text is predicted
    frame = read_table(src, {text_column: "--text-column"}, setting="--input")
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
