"""How well calibrated are the compressed variants, and what does temperature scaling on validation buy?

For each variant folder under ``--variants-dir`` (read only: nothing is written there), the raw logits of the
validation and test splits; a calibration fitted on validation (temperature, and ``auto``: the cross-fitted
choice of quantflow.core.calibration); ECE (15 equal-width bins of the max probability), Brier, NLL and accuracy
on test before and after. Optionally a reliability diagram per variant.

    python bench/calibration.py --variants-dir artifacts/variants --split-dir data/split [--plots reports/calibration]
        [--write NAME [--made-by "quantflow run ..."]]   # also into BENCHMARKS.md, with the commands and the load

The variants are the last ``quantflow run``'s (``quantflow run --set ingest.dataset=review_sentiment`` for the
other built-in dataset); ``chosen`` in the table is the variant that run ships, whose folder stores its map.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from quantflow.core.benchmarks import uptime, write_section
from quantflow.core.calibration import (
    Calibration,
    calibration_metrics,
    fit_calibration,
    plot_reliability,
    reliability,
)
from quantflow.core.layout import Layout
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.params import CalibrationParams, load_params
from quantflow.core.shipped_calibration import label_index


def logits_and_labels(classifier: OnnxClassifier, split: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(split)
    y = label_index(classifier, frame["label"].astype(str).tolist(), split)
    return classifier.text_logits(frame["text"].astype(str).tolist()), y


def measure(
    folder: Path, split_dir: Path, params: CalibrationParams, seed: int, plots: Path | None
) -> list[dict]:
    """Rows of the table for one variant: uncalibrated, temperature and auto, each scored on test."""
    classifier = OnnxClassifier(folder)
    val_z, val_y = logits_and_labels(classifier, split_dir / "val.parquet")
    test_z, test_y = logits_and_labels(classifier, split_dir / "test.parquet")
    fits = {
        "none": Calibration(),
        "temperature": fit_calibration(
            val_z, val_y, params.model_copy(update={"method": "temperature"}), seed
        ).calibration,
        "auto": fit_calibration(val_z, val_y, params, seed).calibration,
    }
    rows, curves = [], {}
    for name, calibration in fits.items():
        proba = calibration.apply(test_z.astype(np.float64))
        described = {k: v for k, v in calibration.values.items() if k in ("temperature", "slope", "offset")}
        rows.append(
            {"variant": folder.name, "calibration": name, "chosen": calibration.method, "values": described}
            | calibration_metrics(proba, test_y, params.bins)
        )
        curves[f"{name} ({calibration.method})"] = reliability(proba, test_y, params.bins)
    if plots is not None:
        plot_reliability(curves, plots / f"reliability_{folder.name}.png", f"{folder.name}: test split")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | calibration | method (values) | ECE | Brier | NLL | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        values = ", ".join(f"{k} {v:.3f}" for k, v in r["values"].items())
        lines.append(
            f"| {r['variant']} | {r['calibration']} | {r['chosen']}{f' ({values})' if values else ''} "
            f"| {r['ece']:.4f} | {r['brier']:.4f} | {r['nll']:.4f} | {r['accuracy']:.4f} |"
        )
    return "\n".join(lines)


HEADING = "## Calibration (issue #15: scores users can trust)"


def record(
    dataset: str, made_by: str, text: str, load: tuple[str, str], compression: Path, benchmarks: Path
) -> None:
    """One table into ``benchmarks`` between markers of its own name, with the commands and the load;
    ``compression``: the run's compression.json, which names the variant it ships."""
    chosen = json.loads(compression.read_text())["chosen"] if compression.exists() else "unknown"
    start, end = f"<!-- bench-calibration-{dataset}:start -->", f"<!-- bench-calibration-{dataset}:end -->"
    section = "\n".join(
        [
            start,
            f"### {dataset} (shipped variant: {chosen})",
            "",
            f"Command: `{made_by}`, then `python {shlex.join(sys.argv)}`.",
            f"Load: `{load[0]}` before, `{load[1]}` after.",
            "",
            text,
            end,
        ]
    )
    current = benchmarks.read_text(encoding="utf-8")
    write_section(section, benchmarks, start, end, None if HEADING in current else HEADING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants-dir", type=Path, default=Path("artifacts/variants"))
    parser.add_argument("--split-dir", type=Path, default=Path("data/split"))
    parser.add_argument("--plots", type=Path, default=None, help="folder for one reliability PNG per variant")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its calibrate: section")
    parser.add_argument("--seed", type=int, default=None, help="default: params.yaml seed")
    parser.add_argument("--write", metavar="NAME", help="also write the table to BENCHMARKS.md under NAME")
    parser.add_argument(
        "--made-by", help="the run that built the variants (default: quantflow run --set ingest.dataset=NAME)"
    )
    args = parser.parse_args()
    load_before = uptime()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    calibrate, seed = params.calibrate, params.seed if args.seed is None else args.seed
    folders = sorted(p.parent for p in args.variants_dir.glob("*/model.onnx"))
    if not folders:
        sys.exit(f"{args.variants_dir}: no variant folders (*/model.onnx); run the compress step first")
    rows = [row for folder in folders for row in measure(folder, args.split_dir, calibrate, seed, args.plots)]
    text = (
        f"variants: {args.variants_dir}; fitted on {args.split_dir}/val.parquet, scored on test.parquet\n\n"
    )
    text += table(rows)
    print(text)
    if args.write:
        benchmarks = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        made_by = args.made_by or f"quantflow run --set ingest.dataset={args.write}"
        compression = Layout.of(params, Path.cwd()).compression_report
        record(args.write, made_by, text, (load_before, uptime()), compression, benchmarks)


if __name__ == "__main__":
    main()
