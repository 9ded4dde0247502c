"""Data contracts of the nightly flow: a batch before it is appended, the merged dataset after split.

Both are GX suites in ``expectations/`` (``batch.json``, ``dataset.json``) with ``$PARAMETER`` values from
``params.yaml``. In the batch suite, ``meta.level: row`` marks checks whose failing rows are quarantined
(with ``meta.reason``) while their share stays under ``nightly.max_bad_row_share``; every other failure
blocks the batch. Each result joins the project's Data Docs site (quantflow/core/datadocs.py); a batch's as the
contract judged it: row-level checks with ``mostly = 1 - nightly.max_bad_row_share`` and one more check on the
share of quarantined rows, so an accepted batch whose bad rows were set aside reads "Succeeded" and lists them.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from great_expectations.core import ExpectationSuite
from prefect import task

from quantflow.core.datadocs import record
from quantflow.core.errors import ValidationFailed
from quantflow.core.layout import SPLITS, BatchReports, DataDocsPaths, split_file
from quantflow.core.params import Params
from quantflow.core.suites import COMPLETE, load_suite, validate_frame
from quantflow.core.text import text_key
from quantflow.intake.judged import judged_result, run_id

logger = logging.getLogger(__name__)

SCRIPTS = {"zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")}
MARKUP = re.compile(r"<[^>]{1,200}>|&#?\w{2,8};|https?://|www\.", re.IGNORECASE)
CLIP = 40  # characters of a text shown in a message


class DatasetContractFailed(ValidationFailed):
    """The merged dataset broke ``expectations/dataset.json``: tonight's batches are withdrawn."""


@dataclass
class BatchVerdict:
    """The contract's outcome for one batch: the rows to keep, the rows set aside and why it is blocked."""

    clean: pd.DataFrame  # text, label, key
    quarantined: pd.DataFrame  # row, text, label, reason
    failures: list[str] = field(default_factory=list)  # contract-level: the batch is blocked
    warnings: list[str] = field(default_factory=list)
    data_docs: Path | None = None  # the batch's page in the project's Data Docs site (when recorded)


def batch_parameters(params: Params) -> dict[str, Any]:
    """The suite parameters of expectations/batch.json, from params.yaml."""
    nightly, validate = params.nightly, params.validate_
    return {
        "labels": list(params.labels or ()),
        "min_text_length": validate.min_text_length,
        "max_text_length": validate.max_text_length,
        "min_script_share": nightly.min_script_share,
        "max_markup_share": nightly.max_markup_share,
        "min_unique_share": 1.0 - nightly.max_duplicate_share,
        "max_known_share": nightly.max_known_share,
    }


def dataset_keys(split_dir: Path) -> pd.DataFrame:
    """Normalized text and label of every row of the current split (empty before the first run)."""
    files = [split_file(split_dir, name) for name in SPLITS]
    if not all(f.is_file() for f in files):
        return pd.DataFrame({"key": pd.Series(dtype="str"), "label": pd.Series(dtype="str")})
    return pd.concat([pd.read_parquet(f, columns=["key", "label"]) for f in files], ignore_index=True)


def derive(frame: pd.DataFrame, known: pd.DataFrame, language: str) -> pd.DataFrame:
    """The batch with the columns the suite checks besides text and label.

    key: the split's key of the text (:func:`text_key`, whatever preprocess.lowercase says); script_share: expected-script characters among letters and digits;
    markup: 1 when the text holds HTML or a URL; known: 1 when the key is already in the dataset;
    conflict: the key carries another label in the dataset or in this batch; cleaned_empty: the text has
    characters but its key is empty (markup or URLs only: split would drop it).
    """
    texts = frame["text"].map(lambda t: t if isinstance(t, str) else "")
    key = texts.map(text_key)
    known_labels: dict[str, set] = known.groupby("key")["label"].agg(set).to_dict() if len(known) else {}
    in_batch = pd.DataFrame({"key": key, "label": frame["label"]}).dropna()
    batch_labels = in_batch[in_batch["key"] != ""].groupby("key")["label"].nunique().to_dict()
    conflict = [
        bool(k)
        and (
            batch_labels.get(k, 0) > 1
            or (k in known_labels and pd.notna(label) and label not in known_labels[k])
        )
        for k, label in zip(key, frame["label"], strict=True)
    ]
    return frame.assign(
        key=key,
        script_share=script_share(texts, SCRIPTS.get(language)),
        markup=texts.str.contains(MARKUP).astype(float),
        known=key.isin(known_labels.keys()).astype(float),
        conflict=conflict,
        cleaned_empty=texts.str.contains(r"\S") & key.eq(""),
    )


def script_share(texts: pd.Series, script: re.Pattern[str] | None) -> pd.Series:
    """Per text: characters of the expected script among letters and digits (0 for a text with none)."""
    if script is None:
        return pd.Series(1.0, index=texts.index)
    letters = texts.str.count(r"[^\W_]")
    return (texts.str.count(script.pattern) / letters.where(letters > 0)).fillna(0.0)


def check_batch(
    frame: pd.DataFrame,
    params: Params,
    known: pd.DataFrame,
    expectations_dir: Path,
    reports: BatchReports,
    name: str,
) -> BatchVerdict:
    """Run expectations/<batch_suite>.json; quarantine failing rows; block on contract-level failures."""
    supplied = batch_parameters(params)
    suite = load_suite(expectations_dir / f"{params.nightly.batch_suite}.json", supplied)
    data = derive(frame, known, params.preprocess.language)
    result = _validate(suite, data, supplied)
    verdict = _judge(result, suite, data, params, name)
    verdict.failures[:0] = label_set_change(data, params, name)
    shown, recorded = judged_result(suite, data, verdict.quarantined["row"], params, supplied, name)
    if reports.data_docs is not None:
        [verdict.data_docs] = record(reports.data_docs, [(shown, recorded)], run_id("batch-contract"))
    _write_json(reports.contract, recorded.to_json_dict())
    return verdict


def _validate(
    suite: ExpectationSuite,
    data: pd.DataFrame,
    supplied: dict[str, Any],
    source_name: str = "nightly",
    asset_name: str | None = None,
) -> Any:
    """GX's COMPLETE result of ``suite`` on ``data``; the batch is ``<source_name>-<asset_name>`` in Data Docs."""
    return validate_frame(suite, data, supplied, source_name, asset_name or suite.name, COMPLETE)


def _judge(
    result: Any, suite: ExpectationSuite, data: pd.DataFrame, params: Params, name: str
) -> BatchVerdict:
    """Split the suite's results into quarantined rows (row level) and blocking failures (batch level)."""
    levels = {(c.type, c.kwargs.get("column")): c.meta for c in suite.expectation_configurations}
    reasons: dict[int, list[str]] = {}
    failures, row_lines = [], []
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        meta = levels.get((config.type, config.kwargs.get("column")), {}) or {}
        if meta.get("level") == "row" and not _raised(res.exception_info):
            rows = [int(i) for i in res.result.get("unexpected_index_list") or []]
            for row in rows:
                reasons.setdefault(row, []).append(meta["reason"])
            row_lines.append(_row_line(meta["reason"], rows, data, config.kwargs.get("column"), params))
        else:
            failures.append(_batch_line(config.type, config.kwargs, res.result, name))
    bad = sorted(reasons)
    quarantined = pd.DataFrame(
        {
            "row": bad,
            "text": [data.at[i, "text"] for i in bad],
            "label": [data.at[i, "label"] for i in bad],
            "reason": ["; ".join(reasons[i]) for i in bad],
        }
    )
    clean = data.drop(index=bad)[["text", "label", "key"]].reset_index(drop=True)
    share, limit = len(bad) / max(len(data), 1), params.nightly.max_bad_row_share
    if share > limit:
        failures.insert(
            0,
            f"{name}: {len(bad)} of {len(data)} rows ({share:.0%}) fail row checks, over "
            f"nightly.max_bad_row_share={limit:.0%}{_label_set_note(data, params)}:\n" + "\n".join(row_lines),
        )
        return BatchVerdict(clean, quarantined, failures)
    warnings = [f"{name}: {len(bad)} rows quarantined:\n" + "\n".join(row_lines)] if bad else []
    return BatchVerdict(clean, quarantined, failures, warnings)


def label_set_change(data: pd.DataFrame, params: Params, name: str) -> list[str]:
    """Labels outside the label set change the label set: the batch is blocked whatever their share.

    Not a bad row to quarantine: a new class needs a new model (validate.labels, a retrain from scratch), and
    dropping its rows silently would train tonight's model on a batch that is not what was sent."""
    allowed = list(params.labels or ())
    labels = data["label"].dropna()
    unknown = labels[~labels.isin(allowed)]
    if not allowed or unknown.empty:
        return []
    counts = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown.value_counts().items())
    rows = "; ".join(
        f"row {i}: label={_clip(v)}" for i, v in unknown.head(params.validate_.example_rows).items()
    )
    return [
        f"{name}: labels outside the label set {allowed}: {counts}, e.g. {rows}. A change of the label set "
        "blocks the batch whatever its share: fix the labels, or add the class to validate.labels and retrain"
    ]


def _raised(info: dict[str, Any] | None) -> bool:
    """Whether GX caught an exception evaluating the expectation (one record or a mapping of records)."""
    records = [info] if info and "raised_exception" in info else list((info or {}).values())
    return any(isinstance(r, dict) and r.get("raised_exception") for r in records)


def _row_line(reason: str, rows: list[int], data: pd.DataFrame, column: str | None, params: Params) -> str:
    """``  - unknown label: 3 rows, e.g. row 5: label='sports'; row 9: label='x'``."""
    column = column if column in ("text", "label") else "text"
    examples = "; ".join(_example(data, i, column) for i in rows[: params.validate_.example_rows])
    return f"  - {reason}: {len(rows)} rows, e.g. {examples}"


def _example(data: pd.DataFrame, row: int, column: str) -> str:
    """A failing row as a message shows it; a row without a label by its text (a review file left unlabelled)."""
    value = data.at[row, column]
    if column == "label" and pd.isna(value):
        return f"row {row}: no label, text={_clip(data.at[row, 'text'])}"
    return f"row {row}: {column}={_clip(value)}"


def _label_set_note(data: pd.DataFrame, params: Params) -> str:
    """When no row has an allowed label: say so, and whether the labels look like numbers."""
    labels = set(data["label"].dropna())
    allowed = list(params.labels or ())
    if labels & set(allowed):
        return ""
    note = f"; unknown label set {sorted(labels)[:5]} (allowed: {allowed})"
    if labels and all(str(x).lstrip("-").replace(".", "", 1).isdigit() for x in labels):
        note += "; the label column holds numbers: labels must be the class names"
    return note


def _batch_line(kind: str, kwargs: dict[str, Any], outcome: dict[str, Any], name: str) -> str:
    """A blocking failure: what was expected and what the batch holds."""
    bounds = {k: kwargs[k] for k in ("min_value", "max_value") if kwargs.get(k) is not None}
    what = {
        "script_share": "mean share of expected-script (CJK) characters",
        "markup": "share of rows with HTML or URLs",
        "key": "share of distinct normalized texts (duplicates within the batch)",
        "known": "share of texts already in the dataset (a repeat of earlier data?)",
    }.get(kwargs.get("column", ""), f"{kind}({kwargs.get('column') or ''})")
    observed = outcome.get("observed_value")
    observed = f"{observed:.3f}" if isinstance(observed, float) else observed
    return f"{name}: {what} is {observed}, expected {bounds or kwargs}"


def _clip(value: Any) -> str:
    if isinstance(value, str) and len(value) > CLIP:
        return f"{value[:CLIP] + '…'!r} ({len(value)} chars)"
    return repr(value)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def dataset_frames(split_dir: Path, labels: list[str]) -> dict[str, pd.DataFrame]:
    """The frames dataset.json checks: per class, per normalized text, per (split, class)."""
    parts = [pd.read_parquet(split_file(split_dir, s)).assign(split=s) for s in SPLITS]
    data = pd.concat(parts, ignore_index=True)
    counts = data["label"].value_counts()
    classes = pd.DataFrame({"label": list(counts.index), "share": (counts / max(len(data), 1)).to_list()})
    texts = data.groupby("key").agg(labels=("label", "nunique"), splits=("split", "nunique")).reset_index()
    cells = pd.DataFrame(
        [
            {"split": s, "label": label, "rows": int(((data["split"] == s) & (data["label"] == label)).sum())}
            for s in SPLITS
            for label in labels
        ]
    )
    return {"classes": classes, "texts": texts, "cells": cells}


def check_dataset(
    params: Params,
    split_dir: Path,
    expectations_dir: Path,
    report_path: Path,
    data_docs: DataDocsPaths | None = None,
) -> dict[str, Any]:
    """Run expectations/<dataset_suite>.json on the split, write ``report_path`` (``Layout.dataset_contract``)
    and, given ``data_docs``, add the results to the site; raise DatasetContractFailed with examples."""
    nightly = params.nightly
    supplied = {
        "min_class_share": nightly.min_class_share,
        "max_class_share": nightly.max_class_share,
        "min_rows_per_class_split": nightly.min_rows_per_class_split,
    }
    suite = load_suite(expectations_dir / f"{nightly.dataset_suite}.json", supplied)
    frames = dataset_frames(split_dir, list(params.labels or ()))
    failures, results, outcomes = [], {}, []
    for frame_name, frame in frames.items():
        part = ExpectationSuite(
            name=f"{suite.name}.{frame_name}",
            expectations=[e for e in suite.expectations if (e.meta or {}).get("frame") == frame_name],
        )
        result = _validate(part, frame, supplied, "split", f"{params.ingest.dataset}.{frame_name}")
        outcomes.append((part, result))
        results[frame_name] = result.to_json_dict()
        for res in result.results:
            if not res.success:
                rows = (res.result.get("unexpected_index_list") or [])[: params.validate_.example_rows]
                examples = "; ".join(str(frame.loc[int(i)].to_dict()) for i in rows)
                column = res.expectation_config.kwargs.get("column")
                failures.append(
                    f"  - {frame_name}.{column}: {res.result.get('unexpected_count')} bad, e.g. {examples}"
                )
    report = {"success": not failures, "suite_parameters": supplied, "results": results}
    _write_json(report_path, report)
    if data_docs is not None:
        record(data_docs, outcomes, run_id("dataset-contract"))
    if failures:
        message = f"{split_dir}: the merged dataset breaks expectations/{nightly.dataset_suite}.json:\n"
        raise DatasetContractFailed(message + "\n".join(failures), report)
    logger.info("dataset contract passed on %s", split_dir)
    return report


check_dataset_task = task(check_dataset, name="dataset-contract")
