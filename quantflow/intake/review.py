"""The nightly review queue: served texts worth a human label, exported as a batch file waiting for its labels.

Each night the served texts of the prediction log (quantflow/core/prediction_log.py) are keyed by
:func:`~quantflow.core.text.text_key` (the key split, the contracts and drift use), so a text served a hundred
times, or in another case or width, is one candidate. Candidates already in the dataset (the raw data and the
accepted batches) or in an earlier review file are left out; the rest are ranked: texts the shadow model
(``@challenger``) labelled otherwise first (two models disagree: one of them is wrong), then the lowest
confidence of the served answer. The first ``nightly.review_size`` go to ``<review_dir>/<YYYY-MM-DD>.csv`` with
the columns of a nightly batch, ``text`` and an empty ``label``: once labelled, the file is dropped into
``nightly.incoming_dir`` and judged by the batch contract like any batch (a row left without a label is
quarantined as "missing label", naming the row and its text).

A line logged without its text (``serve.log_text: false``) cannot be queued: the report counts those texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantflow.core.errors import DataError
from quantflow.core.layout import Layout, accepted_files
from quantflow.core.tables import read_table, write_table
from quantflow.core.text import text_key

logger = logging.getLogger(__name__)


@dataclass
class ReviewQueue:
    """What the night queued for review, and what it could not."""

    path: Path | None = None  # the exported file (None: nothing to queue)
    rows: int = 0
    disagreements: int = 0  # of the rows: the shadow model labelled them otherwise
    lowest: float | None = None  # the served confidence range of the queued rows
    highest: float | None = None
    candidates: int = 0  # distinct served texts (by text key) that carry their text
    known: int = 0  # of those: already in the dataset or in an earlier review file
    without_text: int = 0  # distinct served texts logged without their text (serve.log_text: false)

    def describe(self, shown: str) -> str:
        """One line for the report; ``shown``: the file as the report names it."""
        if self.path is None:
            what = "nothing to queue"
            if self.candidates:
                what += (
                    f" ({self.candidates} served texts, all already in the dataset or an earlier review file)"
                )
        else:
            order = (
                f"{self.disagreements} shadow disagreements, then the lowest confidence"
                if self.disagreements
                else "lowest confidence first"
            )
            span = (
                f", served confidence {self.lowest:.2f} to {self.highest:.2f}"
                if self.lowest is not None
                else ""
            )
            what = f"{self.rows} texts in `{shown}` to label ({order}{span})"
            if self.known:
                what += (
                    f"; {self.known} served texts left out: already in the dataset or an earlier review file"
                )
        if self.without_text:
            what += (
                f"; {self.without_text} served texts were logged without their text (serve.log_text: false) "
                "and cannot be queued"
            )
        return f"Review queue: {what}."


def candidates(log: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per text key of the window's served texts (and shadow disagreements): ``key``, ``text`` (as first
    served), ``confidence`` (the lowest served), ``disagree``; and how many texts came without their text."""
    served = log[log["kind"] == "served"]
    shadow = log[log["kind"] == "shadow"]
    differs = shadow[shadow["agree"].eq(False)]
    rows = pd.concat(
        [
            served[["text", "text_sha256", "confidence"]],
            differs[["text", "text_sha256"]].assign(confidence=np.nan),
        ]
    )
    without_text = rows.loc[rows["text"].isna(), "text_sha256"].nunique()
    rows = rows[rows["text"].notna()]
    rows = rows.assign(
        key=rows["text"].map(text_key),
        confidence=pd.to_numeric(rows["confidence"]),
        disagree=rows["text_sha256"].isin(set(differs["text_sha256"])),
    )
    rows = rows[rows["key"] != ""]  # markup or spaces only: split would drop it, the contract quarantines it
    grouped = rows.groupby("key", sort=False).agg(
        text=("text", "first"), confidence=("confidence", "min"), disagree=("disagree", "any")
    )
    return grouped.reset_index(), int(without_text)


def rank(found: pd.DataFrame, known: set[str], size: int) -> pd.DataFrame:
    """The texts to queue: not ``known``, disagreements first, then the lowest confidence; at most ``size``."""
    fresh = found[~found["key"].isin(known)]
    ordered = fresh.sort_values(
        ["disagree", "confidence"], ascending=[False, True], na_position="last", kind="stable"
    )
    return ordered.head(size).reset_index(drop=True)


def known_keys(layout: Layout) -> set[str]:
    """Text keys of the dataset (the raw data, the accepted batches) and of every earlier review file."""
    keys: set[str] = set()
    if layout.raw.is_file():
        keys |= set(pd.read_parquet(layout.raw, columns=["text"])["text"].dropna().map(text_key))
    for path in accepted_files(layout.accepted_dir):
        keys |= set(pd.read_parquet(path, columns=["key"])["key"])
    for path in sorted(layout.review_dir.glob("*.csv")) if layout.review_dir.is_dir() else []:
        try:
            keys |= set(read_table(path, {"text": ""})["text"].dropna().map(text_key))
        except (
            DataError
        ) as exc:  # a reviewer's half-edited file must not stop the night: its texts may repeat
            logger.warning("review queue: %s is not read (%s); its texts may be queued again", path, exc)
    return keys


def export_queue(queue: pd.DataFrame, layout: Layout, day: str) -> Path:
    """``<review_dir>/<day>.csv`` (``<day>-2.csv``... when a night of that day queued already: a file someone is
    labelling is never written over) with ``text`` and an empty ``label``."""
    n = 1
    while layout.review_file(day, n).exists():
        n += 1
    path = layout.review_file(day, n)
    write_table(
        pd.DataFrame({"text": queue["text"], "label": pd.Series([None] * len(queue), dtype="str")}), path
    )
    return path


def review_queue(log: pd.DataFrame, layout: Layout, size: int, day: str) -> ReviewQueue:
    """Rank the window's served texts and export the first ``size`` (none: no file)."""
    found, without_text = candidates(log)
    known = known_keys(layout) if len(found) else set()
    queue = rank(found, known, size)
    result = ReviewQueue(
        candidates=len(found), known=int(found["key"].isin(known).sum()), without_text=without_text
    )
    if queue.empty:
        return result
    result.path = export_queue(queue, layout, day)
    result.rows, result.disagreements = len(queue), int(queue["disagree"].sum())
    served = queue["confidence"].dropna()
    if len(served):
        result.lowest, result.highest = float(served.min()), float(served.max())
    logger.info("review queue: %d texts in %s", result.rows, result.path)
    return result
