"""The register run: flattened params, the data version as dataset inputs, learning curves, final metrics,
reports, the gate, dvc.lock, the model; its name, the experiment's and the registered model's descriptions, and
the staging history as a table.

``dvc.lock`` is logged as ``lineage/dvc.lock``: the recorded git commit need not hold it (the flow writes it
after the commit), and ``quantflow reproduce`` needs it to pull the exact data of the run.
"""

from __future__ import annotations

import re
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.models.model import ModelInfo

from quantflow.core.layout import Layout
from quantflow.core.params import Params
from quantflow.registry.candidate import Inputs
from quantflow.registry.model_code import log_pyfunc

LINEAGE_DIR = "lineage"  # run artifact folder: dvc.lock
EXAMPLE_TEXTS = 2  # test texts stored as the model's input example
_UNSAFE_METRIC_CHARS = re.compile(r"[^\w.\- /]")
# parts of compression.json that are configuration (params already: compress.max_drop_pp, parity_atol, ...) or
# listed per variant (variants): not metrics
COMPRESSION_SETTINGS = ("variants", "decision", "measurement")
# reports/ entries other commands make (make quality, quantflow scale): not logged as this run's
OTHER_COMMANDS_REPORTS = ("quality.md", "scale")
# the run's tags name dvc.lock's md5 of each stage output by path: `Lineage.tags` in quantflow/intake/versioning.py
# writes them (the registry may not import the intake; a constant in the core would change every stage's deps)
DATA_MD5_TAG = "data_md5."


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"train.lr": 0.002, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def numeric_leaves(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers → ``{"<prefix>_<k1>_<k2>": x}``, keys made safe for MLflow metric names."""
    out: dict[str, float] = {}
    for key, value in flatten(data, prefix).items():
        if isinstance(value, int | float):
            out[_UNSAFE_METRIC_CHARS.sub("_", key.replace(".", "_"))] = float(value)
    return out


def final_metrics(inputs: Inputs, gate: dict[str, Any]) -> dict[str, float]:
    """fp32_* and baseline_* (metrics.json), onnx_<variant>_* (accuracy, size...), compress_* (ratios, parity
    difference; not its settings), gate_*."""
    metrics = numeric_leaves(inputs.metrics)
    metrics |= numeric_leaves(inputs.compression["variants"], "onnx")
    compression = {k: v for k, v in inputs.compression.items() if k not in COMPRESSION_SETTINGS}
    compression["parity"] = {"max_abs_diff": inputs.compression.get("parity", {}).get("max_abs_diff")}
    metrics |= numeric_leaves(compression, "compress")
    metrics["gate_candidate_test_accuracy"] = gate["candidate_test_accuracy"]
    for check in gate["checks"]:
        if check["value"] is not None:
            metrics[f"gate_{check['name']}_value"] = float(check["value"])
    return metrics


def history_metrics(history: list[dict[str, Any]]) -> list[Metric]:
    """One Metric per (epoch, key), ``step=epoch``: the learning curves in the MLflow UI."""
    now = int(time.time() * 1000)
    return [
        Metric(key=key, value=float(value), timestamp=now, step=int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float)
    ]


def run_name(params: Params, inputs: Inputs, now: datetime | None = None) -> str:
    """``<dataset>-<candidate>-<variant>-<UTC yyyymmdd-HHMM>-<params digest[:6]>``: what was trained, which model
    shipped, when; two override runs in one minute differ by their params digest."""
    model = inputs.metrics.get("model")
    candidate = model.get("candidate", "model") if isinstance(model, dict) else "model"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M")
    return f"{params.ingest.dataset}-{candidate}-{inputs.variant}-{stamp}-{params.digest()[:6]}"


def experiment_description(params: Params) -> str:
    """The experiment's description (MLflow shows the ``mlflow.note.content`` tag as Markdown)."""
    return (
        f"quantflow's nightly retrains of `{params.model_name}`: one run per registered candidate, named "
        "`<dataset>-<candidate>-<variant>-<UTC time>-<params digest>`. Params: the run's params.yaml (overrides "
        "included); metrics: the shipped model's test scores, every ONNX variant's accuracy, size and latency, "
        "the gate's values, and the learning curves by epoch; artifacts: `reports/` (summary, compression, "
        "plots, Data Docs), `gate.json`, `lineage/dvc.lock` (what `quantflow reproduce` rebuilds) and the model."
    )


def model_description(params: Params) -> str:
    """The registered model's description (shown on its page above the versions)."""
    return (
        f"Text classifier for `{params.ingest.dataset}`, retrained every night by quantflow. `@staging` is the "
        "version the service answers from (moved only by the gate in params.yaml's `register`, or by `quantflow "
        "promote` / `rollback`); `@challenger` is the newest candidate. Each version's description is its model "
        "card; the tag `staging.history` records every move; each register run holds it, as of that run, as a "
        "table in `staging_history.md`."
    )


def history_table(history: list[dict[str, Any]]) -> str:
    """The ``staging.history`` tag as a Markdown table, newest move first."""
    lines = ["| # | version | previous | reason | at (UTC) | by |", "|---|---|---|---|---|---|"]
    for index, entry in reversed(list(enumerate(history, start=1))):
        cells = [entry.get(key) or "" for key in ("version", "previous", "reason", "at", "by")]
        lines.append("| " + " | ".join([str(index), *map(str, cells)]) + " |")
    return "\n".join(lines) + "\n"


def data_inputs(params: Params, run_tags: dict[str, str], root: Path) -> list[tuple[MetaDataset, str]]:
    """The data version as MLflow dataset inputs: the raw dataset ("raw") and its split ("split"), each named by
    its project path, its digest the dvc.lock md5 the run's ``data_md5.<path>`` tag holds; none without a lock."""
    layout = Layout.of(params, root)
    inputs = []
    for path, context in ((layout.raw, "raw"), (layout.split_dir, "split")):
        shown = str(layout.relative(path))
        md5 = run_tags.get(f"{DATA_MD5_TAG}{shown}")
        if md5:
            # MLflow warns that a local path "can be interpreted in multiple ways": both are the local source
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(shown)
            digest = md5.removesuffix(".dir")[:8]
            inputs.append(
                (MetaDataset(source, name=f"{params.ingest.dataset}:{shown}", digest=digest), context)
            )
    return inputs


def log_reports(reports_dir: Path) -> None:
    """``reports/`` into the active run under ``reports/``, without what other commands wrote there."""
    for entry in sorted(reports_dir.iterdir()):
        if entry.name in OTHER_COMMANDS_REPORTS:
            continue
        if entry.is_dir():
            mlflow.log_artifacts(str(entry), artifact_path=f"reports/{entry.name}")
        else:
            mlflow.log_artifact(str(entry), artifact_path="reports")


def log_run(
    client: mlflow.MlflowClient,
    experiment_id: str,
    params: Params,
    inputs: Inputs,
    gate: dict[str, Any],
    run_tags: dict[str, str],
    root: Path,
) -> tuple[str, ModelInfo]:
    """One run: flattened params, learning curves, final metrics, reports, gate, dvc.lock and the pyfunc model;
    returns the run id and the logged model."""
    name = run_name(params, inputs)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params(flatten(params.model_dump(mode="json", by_alias=True)))
        for dataset, context in data_inputs(params, run_tags, root):
            mlflow.log_input(dataset, context=context)
        client.log_batch(run_id, metrics=history_metrics(inputs.history))
        mlflow.log_metrics(final_metrics(inputs, gate))
        log_reports(inputs.reports_dir)
        mlflow.log_dict(gate, "gate.json")
        if (root / "dvc.lock").is_file():
            mlflow.log_artifact(str(root / "dvc.lock"), artifact_path=LINEAGE_DIR)
        info = log_pyfunc(inputs.variant_dir, inputs.texts[:EXAMPLE_TEXTS])
    return run_id, info
