"""evaluate: test-split metrics of the shipped model (neural or classic), its confusion matrix, every candidate's
test scores beside their validation scores, and a TF-IDF baseline on raw text with the paired test against it.

The shipped model is scored before export, in its own runtime (PyTorch or scikit-learn): metrics.json's
``fp32`` entry is the reference compress and the register gate measure the ONNX variants against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from quantflow.core.baseline import tfidf_baseline
from quantflow.core.bundle import Manifest
from quantflow.core.candidates import family_of, predict_scores
from quantflow.core.errors import DataError
from quantflow.core.features import load_features
from quantflow.core.headline import write_headline
from quantflow.core.layout import EvaluationReports, TrainOutputs, split_file
from quantflow.core.params import EvaluateParams
from quantflow.core.stats import compare_paired

logger = logging.getLogger(__name__)

HEADLINE = ("accuracy", "macro_f1")  # per model in metrics.json: the headline figures DVC compares


@dataclass(frozen=True)
class EvaluateResult:
    """What the evaluate step wrote: the metrics (model and baseline) and where they and the plot are."""

    metrics: dict
    metrics_path: Path
    plot_path: Path


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1 and the same per class."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class = {
        label: {
            "precision": round(float(p[i]), 6),
            "recall": round(float(r[i]), 6),
            "f1": round(float(f[i]), 6),
            "support": int(s[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "macro_precision": round(float(mp), 6),
        "macro_recall": round(float(mr), 6),
        "macro_f1": round(float(mf), 6),
        "per_class": per_class,
    }


def plot_confusion(y_true: list[str], y_pred: list[str], labels: list[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title=title,
    )
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})  # no version stamp: same figure, same bytes
    plt.close(fig)


def read_selection(path: Path) -> dict:
    """candidates.json as the train step wrote it, or a DataError naming the file and the step to rerun."""
    if not path.is_file():
        raise DataError(f"{path}: the train step's selection report is missing; rerun the train step")
    selection = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(selection, dict) or "winner" not in selection or "candidates" not in selection:
        raise DataError(f"{path}: expected the keys winner and candidates; rerun the train step")
    return selection


def candidate_rows(
    selection: dict, trained: TrainOutputs, ids: np.ndarray, y_true: list[str], labels: list[str]
) -> dict[str, dict]:
    """Every candidate's validation scores (from the selection), test scores, size and whether it won."""
    rows = {}
    for name, row in selection["candidates"].items():
        predicted = [labels[i] for i in predict_scores(trained.candidate_dir(name), ids).argmax(axis=1)]
        test = classification_metrics(y_true, predicted, labels)
        rows[name] = {
            **{k: row[k] for k in ("family", "arch", "val_accuracy", "val_macro_f1", "size_bytes")},
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "winner": name == selection["winner"],
        }
    return rows


def versus_baseline(y_pred: list[str], baseline: list[str], y_true: list[str]) -> dict:
    """The shipped model against the raw-text baseline on the same test texts: exact McNemar and a paired CI."""
    cmp = compare_paired(y_pred, baseline, y_true)
    return {
        "difference": round(cmp.difference, 6),
        "ci_low": round(cmp.ci_low, 6),
        "ci_high": round(cmp.ci_high, 6),
        "p_value": cmp.p_value,
        "only_model_right": cmp.only_candidate_right,
        "only_baseline_right": cmp.only_champion_right,
    }


def evaluate(
    params: EvaluateParams,
    trained: TrainOutputs,
    features_dir: Path,
    split_dir: Path,
    reports: EvaluationReports,
    seed: int,
) -> EvaluateResult:
    """Write the metrics (shipped model, candidates, baseline), the predictions and the confusion matrix plot."""
    selection = read_selection(trained.selection)
    manifest = Manifest.load(trained.model_dir)
    labels = manifest.labels
    ids, y = load_features(features_dir, "test")
    y_true = [labels[i] for i in y]
    y_pred = [labels[i] for i in predict_scores(trained.model_dir, ids).argmax(axis=1)]
    train_df, test_df = (pd.read_parquet(split_file(split_dir, s)) for s in ("train", "test"))
    baseline_pred = tfidf_baseline(train_df, test_df, params, seed)
    arch = str(manifest.config["arch"])
    metrics = {
        "test_rows": len(y_true),
        "model": {"candidate": selection["winner"], "family": family_of(manifest.config), "arch": arch},
        "fp32": classification_metrics(y_true, y_pred, labels),
        "baseline": classification_metrics(test_df["label"].tolist(), baseline_pred, labels),
        "versus_baseline": versus_baseline(y_pred, baseline_pred, test_df["label"].tolist()),
        "candidates": candidate_rows(selection, trained, ids, y_true, labels),
        "selection": {"winner": selection["winner"], "reason": selection["reason"]},
    }
    metrics_path, plot_path = reports.metrics, reports.confusion_plot
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    pd.DataFrame({"actual": y_true, "predicted": y_pred}).to_csv(reports.predictions, index=False)
    plot_confusion(y_true, y_pred, labels, f"{arch} on the test split", plot_path)
    for model, path in (("fp32", reports.headline), ("baseline", reports.baseline_headline)):
        write_headline(path, {key: metrics[model][key] for key in HEADLINE})
    logger.info(
        "evaluate: %s (%s) accuracy %.4f macro-F1 %.4f | TF-IDF baseline accuracy %.4f macro-F1 %.4f | "
        "McNemar p %.3g",
        selection["winner"],
        arch,
        metrics["fp32"]["accuracy"],
        metrics["fp32"]["macro_f1"],
        metrics["baseline"]["accuracy"],
        metrics["baseline"]["macro_f1"],
        metrics["versus_baseline"]["p_value"],
    )
    return EvaluateResult(metrics, metrics_path, plot_path)


# The Prefect task is the plain function itself, named for the flow's UI; tests call evaluate() directly.
evaluate_task = task(evaluate, name="evaluate")
