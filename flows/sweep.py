"""The scaling study's steps: one model size trained, compressed and scored; the table, the plots, MLflow.

A size is a set of ``train.*`` overrides (``scale.grid``): embedding width x filters for a TextCNN, layers x
width for a Transformer (feed-forward width 2 x width). Each size reuses the pipeline's own functions —
:func:`quantflow.core.candidates.train_neural` and :func:`tasks.compress.compress` with
``compress.variants = scale.variants`` (ONNX fp32 and one int8 variant) — on the data prepared once for the
whole sweep, so its accuracy, macro-F1, parameter count, sizes and latency p50 are exactly what the nightly
pipeline would report for that size.
Latency is timed while other sizes train on the other workers: compare the fp32/int8 pair of one size, and
sizes against each other only as a trend.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from prefect import task

from quantflow.core.candidates import train_neural
from quantflow.core.layout import CompressionReports, Layout
from quantflow.core.params import Params, ScaleParams
from tasks.compress import compress

logger = logging.getLogger(__name__)

METRICS = (
    "params",
    "accuracy_fp32",
    "macro_f1_fp32",
    "accuracy_int8",
    "macro_f1_int8",
    "latency_p50_ms_fp32",
    "latency_p50_ms_int8",
    "size_bytes_fp32",
    "size_bytes_int8",
    "best_epoch",
    "train_seconds",
    "seconds",
)


@dataclass(frozen=True)
class Size:
    """One point of the grid: a name for runs and folders, and the ``train.*`` keys it sets."""

    name: str
    overrides: dict[str, Any]


def grid_sizes(scale: ScaleParams) -> list[Size]:
    """Every combination of the chosen architecture's two lists, smallest first."""
    g = scale.grid
    if scale.model == "textcnn":
        return [
            Size(
                f"textcnn-e{e}-f{f}", {"train.model": "textcnn", "train.embed_dim": e, "train.num_filters": f}
            )
            for e, f in product(sorted(g.embed_dim), sorted(g.num_filters))
        ]
    return [
        Size(
            f"transformer-l{layers}-w{width}",
            {
                "train.model": "transformer",
                "train.transformer_layers": layers,
                "train.embed_dim": width,
                "train.transformer_ff_dim": 2 * width,
            },
        )
        for layers, width in product(sorted(g.layers), sorted(g.width))
    ]


def size_params(params: Params, size: Size) -> Params:
    """The project's params with the size's keys, one process and one torch thread (a Dask worker's share),
    and only the variants the study compares. Validated like params.yaml: a bad width fails here, by name."""
    return params.with_overrides(
        {
            **size.overrides,
            "train.workers": 1,
            "train.device": "cpu",
            "train.threads": 1,
            "compress.variants": list(params.scale.variants),
        }
    )


def int8_variant(scale: ScaleParams) -> str:
    return next(v for v in scale.variants if v != "fp32")


def train_size(params: Params, size: Size, layout: Layout, out_dir: Path) -> dict[str, Any]:
    """Train one size on the shared features, build its ONNX fp32 + int8 variants, score and time them.

    Everything lands under ``out_dir/<size>/``; returns one row of the study's table.
    """
    started = time.perf_counter()
    p = size_params(params, size)
    folder = out_dir / size.name
    trained = train_neural(
        p.train, layout.features_dir, layout.tokenizer_dir, folder / "model", folder / "history.json", p.seed
    )
    train_seconds = time.perf_counter() - started
    result = compress(
        p.compress,
        p.calibrate,
        folder / "model",
        layout.split_dir,
        folder / "variants",
        CompressionReports.under(folder),
        p.seed,
    )
    fp32, int8 = result.variants["fp32"], result.variants[int8_variant(p.scale)]
    row = {
        "size": size.name,
        **{key.split(".", 1)[1]: value for key, value in size.overrides.items() if key != "train.model"},
        "params": fp32["params"],
        **{f"{m}_fp32": fp32[m] for m in ("accuracy", "macro_f1", "latency_p50_ms", "size_bytes")},
        **{f"{m}_int8": int8[m] for m in ("accuracy", "macro_f1", "latency_p50_ms", "size_bytes")},
        "best_epoch": trained.best_epoch,
        "worker_pid": os.getpid(),  # which Dask worker process ran it (a tag in MLflow, not a metric)
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    logger.info("scale: %s done: %s", size.name, row)
    return row


# A Dask worker runs this task: the plain function, named for the flow's UI.
train_size_task = task(train_size, name="train-compress-size", task_run_name="size {size.name}")


# --- table and plots ----------------------------------------------------------------------------------------


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """scale.csv, one row per size sorted by parameter count: what ``dvc plots show`` draws."""
    rows = sorted(rows, key=lambda r: r["params"])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_vs_params(rows: list[dict[str, Any]], metric: str, ylabel: str, int8_name: str, path: Path) -> Path:
    """One PNG: ``metric`` of ONNX fp32 and of the int8 variant against parameters (log x), sizes labelled."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["params"])
    x = [r["params"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for suffix, label, marker in (("fp32", "ONNX fp32", "o"), ("int8", f"ONNX {int8_name}", "s")):
        ax.plot(x, [r[f"{metric}_{suffix}"] for r in rows], marker=marker, label=label)
    for r in rows:
        ax.annotate(
            r["size"],
            (r["params"], r[f"{metric}_fp32"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs parameters")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(rows: list[dict[str, Any]], layout: Layout, int8_name: str) -> list[Path]:
    """scale.csv and the two plots (Layout.scale_table, Layout.scale_plots): accuracy vs parameters and latency
    p50 vs parameters, fp32 vs int8."""
    accuracy_plot, latency_plot = layout.scale_plots
    return [
        write_table(rows, layout.scale_table),
        plot_vs_params(rows, "accuracy", "test accuracy", int8_name, accuracy_plot),
        plot_vs_params(rows, "latency_p50_ms", "latency p50, ms (1 text)", int8_name, latency_plot),
    ]


# --- MLflow -------------------------------------------------------------------------------------------------


# MLflow and matplotlib are imported where used: a Dask worker runs train_size only and starts faster without.


def _metrics(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if isinstance(v, int | float)]


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in values.items()]


def log_sweep(
    root: Path,
    params: Params,
    rows: list[dict[str, Any]],
    files: list[Path],
    summary: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """One parent run (the sweep: grid, data, wall time, the table and plots) and a child run per size."""
    import mlflow

    from quantflow.registry.tracking import ensure_experiment, resolve_tracking_uri

    uri, artifact_dir = resolve_tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = ensure_experiment(client, params.scale.experiment, artifact_dir)
    parent = client.create_run(
        experiment_id, run_name=f"scale-{params.scale.model}-{len(rows)}-sizes", tags=tags
    ).info.run_id
    client.log_batch(
        parent,
        metrics=_metrics({k: v for k, v in summary.items() if k != "workers"}),
        params=_params(
            {
                "scale.model": params.scale.model,
                "scale.variants": params.scale.variants,
                "scale.grid": params.scale.grid.model_dump(),
                "workers": summary["workers"],
                "ingest.dataset": params.ingest.dataset,
                "ingest.max_rows_per_class": params.ingest.max_rows_per_class,
                "train.epochs": params.train.epochs,
            }
        ),
    )
    for row in sorted(rows, key=lambda r: r["params"]):
        child = client.create_run(
            experiment_id,
            run_name=row["size"],
            tags={**tags, "mlflow.parentRunId": parent, "worker_pid": str(row["worker_pid"])},
        ).info.run_id
        hyper = {k: v for k, v in row.items() if k not in (*METRICS, "size", "worker_pid")}
        client.log_batch(child, metrics=_metrics({k: row[k] for k in METRICS}), params=_params(hyper))
        client.set_terminated(child)
    for path in files:
        client.log_artifact(parent, str(path), artifact_path="scale")
    client.set_terminated(parent)
    logger.info("scale: MLflow parent run %s with %d child runs (%s)", parent, len(rows), uri)
    return parent
