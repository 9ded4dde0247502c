"""split: normalize, drop duplicates and conflicting labels, then a stable hash split into train/val/test;
then the label-noise audit of the training split (``split.label_issues``: off, report or drop).

The split of a text depends only on its normalized form and the salt, so a text keeps its split as the
dataset grows and the test set stays comparable night after night.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import task

from quantflow.core.headline import write_headline
from quantflow.core.label_audit import audit_training_split, write_label_issues
from quantflow.core.layout import SPLITS, split_file
from quantflow.core.params import SplitParams
from quantflow.core.text import hash_unit, text_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitResult:
    paths: dict[str, Path]
    stats: dict


def assign_split(key: str, params: SplitParams) -> str:
    u = hash_unit(key, params.salt)
    if u < params.test_fraction:
        return "test"
    return "val" if u < params.test_fraction + params.val_fraction else "train"


def deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep one row per normalized text; drop blank texts and every text seen with two or more labels."""
    frame = frame.assign(key=frame["text"].map(text_key))
    blank = frame["key"].eq("")
    frame = frame[~blank]
    labels_per_key = frame.groupby("key")["label"].nunique()
    conflicting = set(labels_per_key[labels_per_key > 1].index)
    conflict_rows = frame["key"].isin(conflicting)
    kept = frame[~conflict_rows].drop_duplicates("key", keep="first")
    counts = {
        "rows_in": int(len(blank)),
        "blank_dropped": int(blank.sum()),
        "conflict_texts_dropped": len(conflicting),
        "conflict_rows_dropped": int(conflict_rows.sum()),
        "duplicates_dropped": int((~conflict_rows).sum() - len(kept)),
        "rows_out": int(len(kept)),
    }
    return kept.reset_index(drop=True), counts


def split(
    params: SplitParams,
    raw_path: Path,
    out_dir: Path,
    stats_path: Path,
    seed: int,
    headline: Path | None = None,
    issues_path: Path | None = None,
) -> SplitResult:
    """Write ``train/val/test.parquet`` (columns text, label, key), the split statistics and, when given, the
    headline figures (rows kept and dropped: ``Layout.split_headline``) and the label audit's flagged training
    rows (``Layout.label_issues``; only its header when the audit is off)."""
    frame, counts = deduplicate(pd.read_parquet(raw_path))
    frame = frame.assign(split=frame["key"].map(lambda k: assign_split(k, params)))
    parts = {n: frame[frame["split"] == n].drop(columns="split").reset_index(drop=True) for n in SPLITS}
    parts["train"], issues, audit = audit_training_split(parts["train"], params, seed)
    if issues_path is not None:
        write_label_issues(issues, issues_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, per_split = {}, {}
    for name, part in parts.items():
        paths[name] = split_file(out_dir, name)
        part.to_parquet(paths[name], index=False)
        per_split[name] = {"rows": len(part), "labels": _label_counts(part)}
    stats = {**counts, "label_audit": audit, "splits": per_split}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if headline is not None:
        write_headline(
            headline, {"rows": counts["rows_out"], "dropped": counts["rows_in"] - counts["rows_out"]}
        )
    logger.info(
        "split: %d rows in, %d duplicates and %d conflicting rows dropped → train %d, val %d, test %d; "
        "label audit (%s): %d training rows flagged, %d dropped (%.1f s)",
        counts["rows_in"],
        counts["duplicates_dropped"],
        counts["conflict_rows_dropped"],
        *(per_split[s]["rows"] for s in SPLITS),
        *(audit[k] for k in ("action", "flagged", "dropped", "seconds")),
    )
    return SplitResult(paths=paths, stats=stats)


def _label_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}


# The Prefect task is the plain function itself, named for the flow's UI; tests call split() directly.
split_task = task(split, name="split")
