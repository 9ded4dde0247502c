"""The compress step's last part: calibrate the variant it chose, and say what that changed.

The map (quantflow/core/calibration.py, ``calibrate:`` in params.yaml) is fitted on the validation split, after
compression, on the shipped variant's own logits (an int8 graph's logits are not fp32's), and stored in that
folder's model.json, where the service, ``quantflow predict`` and the MLflow pyfunc read it. Only the shipped
folder is changed. fp32 gets the same method fitted on its own validation logits for comparison, reported but
not stored. Both are scored on the test split before (plain softmax) and after: ECE, Brier, NLL and accuracy,
and a reliability diagram (JSON rows for DVC, a PNG).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantflow.core.calibration import (
    Calibration,
    calibration_metrics,
    fit_calibration,
    plot_reliability,
    reliability,
    softmax,
)
from quantflow.core.features import read_split
from quantflow.core.layout import CompressionReports, shown_path, split_file
from quantflow.core.onnx_model import OnnxClassifier, calibrate_folder
from quantflow.core.params import CalibrationParams

logger = logging.getLogger(__name__)

FP32 = "fp32"
SHIPPED = "shipped"  # the chosen variant's column in the reliability rows, whatever its name
STAGES = ("before", "after")
Split = tuple[Path, list[str], list[str]]  # a split file, its texts and its labels


def calibration_splits(split_dir: Path) -> tuple[Split, Split]:
    """The validation split (fit) and the test split (measure), each with its path; DataError when missing."""
    val, test = split_file(split_dir, "val"), split_file(split_dir, "test")
    test_split = (test, *read_split(test, "test", "evaluate the variants on"))
    return (val, *read_split(val, "val", "calibrate the chosen variant on")), test_split


def label_index(classifier: OnnxClassifier, labels: Sequence[str], source: Path) -> np.ndarray:
    """(N,) class indices of ``labels`` in the model's order; a label the model does not know names the file."""
    index = {label: i for i, label in enumerate(classifier.labels)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{source}: labels {unknown} are not the model's {classifier.labels}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def measure_model(
    folder: Path,
    calibration: Calibration | None,
    val: Split,
    test: Split,
    params: CalibrationParams,
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[dict[str, float]]]]:
    """Test-split metrics and reliability rows of one folder, before and after ``calibration`` (None: fit
    ``params.method`` on the validation split here, for comparison only)."""
    classifier = OnnxClassifier(folder)
    if calibration is None:
        val_path, val_texts, val_labels = val
        y_val = label_index(classifier, val_labels, val_path)
        calibration = fit_calibration(classifier.text_logits(val_texts), y_val, params, seed).calibration
    test_path, test_texts, test_labels = test
    y = label_index(classifier, test_labels, test_path)
    logits = classifier.text_logits(test_texts).astype(np.float64)  # (N, C)
    proba = {"before": softmax(logits), "after": calibration.apply(logits)}
    row = {"calibration": calibration.to_dict()}
    row |= {stage: calibration_metrics(proba[stage], y, params.bins) for stage in STAGES}
    return row, {stage: reliability(proba[stage], y, params.bins) for stage in STAGES}


def reliability_rows(curves: Mapping[str, Mapping[str, list[dict[str, float]]]]) -> list[dict[str, Any]]:
    """One row per bin for DVC's plot: its centre (x, and the ``perfect`` diagonal) and the accuracy of each curve
    (``fp32_before`` ... ``shipped_after``; null in an empty bin). ``curves``: column prefix → stage → rows."""
    columns = {f"{prefix}_{stage}": table for prefix, by in curves.items() for stage, table in by.items()}
    first = next(iter(columns.values()))
    rows = []
    for b, edges in enumerate(first):
        centre = round((edges["lower"] + edges["upper"]) / 2, 6)
        row: dict[str, Any] = {"confidence": centre, "perfect": centre}
        for name, table in columns.items():
            accuracy = table[b]["accuracy"]
            row[name] = None if math.isnan(accuracy) else round(accuracy, 6)
        rows.append(row)
    return rows


def calibrate_shipped(
    folders: Mapping[str, Path],
    chosen: str,
    val: Split,
    test: Split,
    params: CalibrationParams,
    reports: CompressionReports,
    seed: int,
) -> dict[str, Any]:
    """Fit the chosen variant's calibration on ``val`` and store it in its folder, measure it beside fp32's on
    ``test``, write calibration.json, the reliability rows and the diagram; returns calibration.json's content."""
    fitted = calibrate_folder(folders[chosen], val[1], val[2], params, seed)
    same = params.model_copy(update={"method": fitted.calibration.method})  # fp32: the shipped one's method
    models: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name in dict.fromkeys([FP32, chosen]):  # fp32 once when it is the chosen one
        stored = fitted.calibration if name == chosen else None
        models[name], curves[SHIPPED if name == chosen else FP32] = measure_model(
            folders[name], stored, val, test, same, seed
        )
        models[name]["role"] = "shipped" if name == chosen else "reference, not stored"
    curves.setdefault(FP32, curves[SHIPPED])
    report = {
        "variant": chosen,
        "stored_in": shown_path(folders[chosen] / "model.json"),
        "calibration": fitted.calibration.to_dict(),
        "choice": fitted.report,
        "bins": params.bins,
        "fitted_on": {"split": "val", "rows": len(val[1])},
        "measured_on": {"split": "test", "rows": len(test[1])},
        "models": models,
    }
    write_calibration(reports, report, curves)
    shipped = models[chosen]
    logger.info(
        "calibrate: %s %s, test ECE %.4f -> %.4f, Brier %.4f -> %.4f; stored in %s",
        chosen,
        describe(report["calibration"]),
        shipped["before"]["ece"],
        shipped["after"]["ece"],
        shipped["before"]["brier"],
        shipped["after"]["brier"],
        report["stored_in"],
    )
    return report


def write_calibration(reports: CompressionReports, report: dict[str, Any], curves: dict[str, Any]) -> None:
    """calibration.json, the reliability rows (DVC plots) and the diagram (fp32 and shipped, before and after)."""
    reports.calibration.parent.mkdir(parents=True, exist_ok=True)
    reports.calibration.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ordered = {FP32: curves[FP32], SHIPPED: curves[SHIPPED]}
    reports.reliability.write_text(json.dumps(reliability_rows(ordered), indent=2) + "\n", encoding="utf-8")
    chosen = report["variant"]
    plot_reliability(
        {
            f"{chosen if key == SHIPPED else key} {stage}": ordered[key][stage]
            for key in ordered
            for stage in STAGES
        },
        reports.reliability_plot,
        f"test split, {describe(report['calibration'])} fitted on val",
    )


def describe(calibration: Mapping[str, Any]) -> str:
    """A calibration entry in a few words: ``temperature T=1.42``, ``platt (slope 0.9, offset 0.1)``, ``none``."""
    method = calibration["method"]
    if method == "temperature":
        return f"temperature T={calibration['temperature']:.3f}"
    if method == "platt":
        return f"platt (slope {calibration['slope']:.3f}, offset {calibration['offset']:.3f})"
    if method == "isotonic":
        return f"isotonic ({len(calibration['x'])} steps)"
    return method
