"""What the register step logs into the pipeline's run (pipeline_run.py; a run of its own when the step runs
alone): the data version as dataset inputs, the rest of the winner's learning curve, the headline metrics,
reports, the gate, dvc.lock, the model; the run's name, the experiment's and the registered model's
descriptions, and the staging history as a table. Every call names its run: none uses MLflow's active run.

``dvc.lock`` is logged as ``lineage/dvc.lock``: the recorded git commit need not hold it (the flow writes it
after the commit), and ``quantflow reproduce`` needs it to pull the exact data of the run.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
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
LOCAL_SOURCE = "local"  # the source type MLflow gives a local path
DATASET_CONTEXT_TAG = "mlflow.data.context"  # what mlflow.log_input(context=...) sets
PARAMS_PER_CALL = 100  # the tracking API's limit of params in one log_batch


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


SHIPPED_KEYS = ("accuracy", "macro_f1", "size_bytes", "accuracy_drop_pp", "latency_p50_ms", "throughput_b64")


def headline_metrics(metrics: dict[str, Any], compression: dict[str, Any]) -> dict[str, float]:
    """The run's named metrics from metrics.json and compression.json (the full tables are the run's reports):

    ``test_*`` the trained model before export, ``baseline_*`` TF-IDF + LR, ``versus_baseline_*`` their paired
    difference, ``onnx_fp32_*`` the exported fp32 graph, ``shipped_*`` the chosen variant, ``compress_*`` the
    chosen variant's ratios and the fp32 parity. `quantflow reproduce` rebuilds the same names."""
    out: dict[str, float] = {}
    for name, section in (("test", "fp32"), ("baseline", "baseline")):
        for key in ("accuracy", "macro_f1"):
            out[f"{name}_{key}"] = float(metrics[section][key])
    for key in ("difference", "ci_low", "ci_high"):
        value = metrics.get("versus_baseline", {}).get(key)
        if isinstance(value, int | float):
            out[f"versus_baseline_{key}"] = float(value)
    variants = compression["variants"]
    for prefix, variant, keys in (
        ("onnx_fp32", variants.get("fp32", {}), ("accuracy", "macro_f1", "size_bytes")),
        ("shipped", variants[compression["chosen"]], SHIPPED_KEYS),
    ):
        out |= {f"{prefix}_{k}": float(variant[k]) for k in keys if isinstance(variant.get(k), int | float)}
    ratios = {k: v for k, v in compression.get("ratios", {}).items() if isinstance(v, int | float)}
    out |= numeric_leaves(ratios, "compress")
    diff = compression.get("parity", {}).get("max_abs_diff")
    if isinstance(diff, int | float):
        out["compress_parity_max_abs_diff"] = float(diff)
    return out


def calibration_run_metrics(inputs: Inputs) -> dict[str, float]:
    """calibration.json's test figures as ``calibration_{fp32,shipped}_{ece,brier}_{before,after}``: what the
    issue asks the record to show. NLL and accuracy stay in the run's ``reports/calibration.json``, the map
    itself in the ``quantflow.calibration`` tag (the run's metrics are a short named list)."""
    out: dict[str, float] = {}
    for role, name in (("fp32", "fp32"), ("shipped", inputs.variant)):
        for stage in ("before", "after"):
            figures = inputs.calibration["models"][name][stage]
            out |= {f"calibration_{role}_{k}_{stage}": float(figures[k]) for k in ("ece", "brier")}
    return out


def final_metrics(inputs: Inputs, gate: dict[str, Any]) -> dict[str, float]:
    """The headline metrics, the calibration's (``calibration_*``), then the gate's values (``gate_*``)."""
    metrics = headline_metrics(inputs.metrics, inputs.compression) | calibration_run_metrics(inputs)
    metrics["gate_candidate_test_accuracy"] = gate["candidate_test_accuracy"]
    for check in gate["checks"]:
        if check["value"] is not None:
            metrics[f"gate_{check['name']}_value"] = float(check["value"])
    return metrics


def label_audit_metrics(split_stats: Path) -> dict[str, float]:
    """``label_issues_flagged`` and ``label_issues_dropped`` from split.json's label audit (none without one)."""
    if not split_stats.is_file():
        return {}
    audit = json.loads(split_stats.read_text(encoding="utf-8")).get("label_audit", {})
    return {f"label_issues_{k}": float(audit[k]) for k in ("flagged", "dropped") if k in audit}


def curve_metrics(candidate: str, history: list[dict[str, Any]]) -> list[Metric]:
    """One Metric per (epoch, key) as ``<candidate>/<key>``, ``step=epoch``: the learning curves in the MLflow UI,
    one chart section per candidate."""
    now = int(time.time() * 1000)
    return [
        Metric(key=f"{candidate}/{key}", value=float(value), timestamp=now, step=int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float)
    ]


def missing_curve(
    client: mlflow.MlflowClient, run_id: str, candidate: str, history: list[dict]
) -> list[Metric]:
    """The points of the winner's curve the run does not hold yet (trained in DDP workers, or while the
    tracking server was down, or registered outside a pipeline run)."""
    wanted = curve_metrics(candidate, history)
    logged = {
        (m.key, m.step) for key in {m.key for m in wanted} for m in client.get_metric_history(run_id, key)
    }
    return [m for m in wanted if (m.key, m.step) not in logged]


def log_params(client: mlflow.MlflowClient, run_id: str, params: Params) -> None:
    """The params as they ran (overrides included), flattened, in batches the tracking API accepts."""
    flat = flatten(params.model_dump(mode="json", by_alias=True))
    items = [Param(key, str(value)) for key, value in flat.items()]
    for start in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[start : start + PARAMS_PER_CALL])


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
        f"quantflow's nightly retrains of `{params.model_name}`: one run per `quantflow run`, from the start of "
        "the night to its end (FAILED when the night failed), named `<dataset>-<candidate>-<variant>-<UTC "
        "time>-<params digest>` once a model is registered (`<dataset>-night-...` for a night that trained "
        "nothing). Params: the run's params.yaml (overrides "
        "included); metrics: a short named list (`test_*`, `baseline_*`, `shipped_*`, `onnx_fp32_*`, "
        "`compress_*`, `calibration_*`, `gate_*`, `label_issues_*`) and every candidate's learning curve by epoch "
        "(`<candidate>/<key>`, drawn live); artifacts: `reports/` (every variant's figures, plots, Data Docs, "
        "the label audit's label_issues.csv), `run_summary.md`, `gate.json`, `lineage/dvc.lock` (what "
        "`quantflow reproduce` rebuilds) and the model."
    )


def model_description(params: Params) -> str:
    """The registered model's description (shown on its page above the versions)."""
    return (
        f"Text classifier for `{params.ingest.dataset}`, retrained every night by quantflow. `@staging` is the "
        "version the service answers from (moved only by the gate in params.yaml's `register`, or by `quantflow "
        "promote` / `rollback`); `@challenger` is the newest candidate. Each version's description is its model "
        "card; the tag `staging.history` records every move; each run that registered a version holds it, as of that run, as a "
        "table in `staging_history.md`."
    )


def history_table(history: list[dict[str, Any]]) -> str:
    """The ``staging.history`` tag as a Markdown table, newest move first."""
    lines = ["| # | version | previous | reason | at (UTC) | by |", "|---|---|---|---|---|---|"]
    for index, entry in reversed(list(enumerate(history, start=1))):
        cells = [entry.get(key) or "" for key in ("version", "previous", "reason", "at", "by")]
        lines.append("| " + " | ".join([str(index), *map(str, cells)]) + " |")
    return "\n".join(lines) + "\n"


def data_inputs(params: Params, run_tags: dict[str, str], root: Path) -> list[DatasetInput]:
    """The data version as MLflow dataset inputs: the raw dataset (context "raw") and its split ("split"), each
    named by its project path, its digest the dvc.lock md5 the run's ``data_md5.<path>`` tag holds; none without
    a lock."""
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
            dataset = Dataset(
                name=f"{params.ingest.dataset}:{shown}",
                digest=md5.removesuffix(".dir")[:8],
                source_type=LOCAL_SOURCE,
                source=source.to_json(),
            )
            inputs.append(DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)]))
    return inputs


def log_reports(client: mlflow.MlflowClient, run_id: str, reports_dir: Path) -> None:
    """``reports/`` into the run under ``reports/``, without what other commands wrote there."""
    for entry in sorted(reports_dir.iterdir()):
        if entry.name in OTHER_COMMANDS_REPORTS:
            continue
        if entry.is_dir():
            client.log_artifacts(run_id, str(entry), artifact_path=f"reports/{entry.name}")
        else:
            client.log_artifact(run_id, str(entry), artifact_path="reports")


def start_or_resume(
    client: mlflow.MlflowClient,
    experiment_id: str,
    params: Params,
    inputs: Inputs,
    run_tags: dict[str, str],
    run_id: str | None,
) -> str:
    """The pipeline's run (``run_id``: named now after the model that shipped, tagged), or a new run with the
    params when the register step runs on its own."""
    if run_id is None:
        run = client.create_run(experiment_id, run_name=run_name(params, inputs), tags=run_tags)
        log_params(client, run.info.run_id, params)
        return run.info.run_id
    started = datetime.fromtimestamp(client.get_run(run_id).info.start_time / 1000, UTC)
    client.update_run(run_id, name=run_name(params, inputs, started))
    tags = [RunTag(key, str(value)) for key, value in run_tags.items()]
    for start in range(0, len(tags), PARAMS_PER_CALL):
        client.log_batch(run_id, tags=tags[start : start + PARAMS_PER_CALL])
    return run_id


def log_run(
    client: mlflow.MlflowClient,
    experiment_id: str,
    params: Params,
    inputs: Inputs,
    gate: dict[str, Any],
    run_tags: dict[str, str],
    root: Path,
    run_id: str | None = None,
) -> tuple[str, ModelInfo]:
    """Into the pipeline's run ``run_id`` (left running: the flow ends it), or into a new run ended here: the data
    version, the rest of the winner's learning curve, the headline metrics, reports, gate, dvc.lock and the
    pyfunc model. Returns the run id and the logged model."""
    own = run_id is None
    run_id = start_or_resume(client, experiment_id, params, inputs, run_tags, run_id)
    try:
        client.log_inputs(run_id, datasets=data_inputs(params, run_tags, root))
        candidate = str(inputs.metrics.get("model", {}).get("candidate", "model"))
        curve = missing_curve(client, run_id, candidate, inputs.history)
        logged = client.get_run(run_id).data.metrics  # a retry, or a later run finishing the night: once
        now = int(time.time() * 1000)
        values = final_metrics(inputs, gate) | label_audit_metrics(Layout.of(params, root).split_stats)
        finals = [Metric(k, v, now, 0) for k, v in values.items() if logged.get(k) != v]
        client.log_batch(run_id, metrics=curve + finals)
        log_reports(client, run_id, inputs.reports_dir)
        client.log_dict(run_id, gate, "gate.json")
        if (root / "dvc.lock").is_file():
            client.log_artifact(run_id, str(root / "dvc.lock"), artifact_path=LINEAGE_DIR)
        info = log_pyfunc(run_id, inputs.variant_dir, inputs.texts[:EXAMPLE_TEXTS])
    except BaseException:
        if own:
            client.set_terminated(run_id, "FAILED")
        raise
    if own:
        client.set_terminated(run_id, "FINISHED")
    return run_id, info
