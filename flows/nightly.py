"""The nightly retrain: every step of dvc.yaml as a Prefect task, then DVC versioning and MLflow registration."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.hooks import on_failure
from flows.runinfo import run_links
from quantflow.errors import ValidationFailed
from quantflow.layout import Layout
from quantflow.params import load_params
from tasks.register import register_task
from tasks.stages import STAGES, stage_args, step_function
from tasks.versioning import commit_outputs_task, lineage, push_data_task, require_dvc_repo, restore_outputs

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did: per-step wall times, the metrics that matter and the registry outcome."""

    dataset: str
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    registered: Any = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def total_seconds(self) -> float:
        return time.perf_counter() - self.started

    def timed(self, name: str, call: Any, *args: Any) -> Any:
        start = time.perf_counter()
        result = call(*args)
        self.timings[name] = time.perf_counter() - start
        self.results[name] = result
        return result


def run_steps(summary: RunSummary, params: Any, layout: Layout) -> None:
    """ingest … compress, each as its task; bad data restores the raw file and stops before split."""
    for name in STAGES:
        try:
            summary.timed(name, step_function(name, as_task=True), *stage_args(name, params, layout))
        except ValidationFailed:
            restore_outputs(layout.root, [layout.raw])
            raise


@flow(name="nightly_retrain", log_prints=False, on_failure=[on_failure])
def nightly_retrain(
    root: str = ".", params_file: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> RunSummary:
    """Retrain on the configured dataset, compress, version the data and register the chosen variant."""
    project = Path(root).resolve()
    params = load_params(project / params_file, overrides)
    require_dvc_repo(project)
    layout = Layout.of(params, project)
    summary = RunSummary(dataset=params.ingest.dataset)
    run_steps(summary, params, layout)
    summary.timed("dvc commit", commit_outputs_task, project)
    summary.timed("dvc push", push_data_task, project)
    summary.results["root"], summary.results["lineage"] = project, lineage(project)
    tags = {
        **summary.results["lineage"].tags(),
        "prefect_flow_run_id": str(flow_run.id or "none"),
        "prefect_flow_run_name": str(flow_run.name or "none"),
    }
    summary.registered = summary.timed("register", register_task, params, project, tags)
    create_markdown_artifact(
        markdown=render_summary(summary),
        key="nightly-retrain-summary",
        description="metrics, compression, gate decision and step timings",
    )
    reg = summary.registered
    get_run_logger().info(
        "registered %s v%s: %s (%.0f s)",
        reg.model_name,
        reg.version,
        "promoted to @staging" if reg.promoted else "not promoted",
        summary.total_seconds,
    )
    return summary


def render_summary(summary: RunSummary) -> str:
    """The run summary as markdown: metrics of fp32 and int8, the registered version, timings."""
    metrics = summary.results["evaluate"].metrics
    compression = summary.results["compress"]
    reg = summary.registered
    lines = [
        f"## nightly_retrain on `{summary.dataset}`",
        "",
        "| model | accuracy | macro-F1 | size | p50 ms, 1 text |",
        "|---|---|---|---|---|",
        f"| PyTorch fp32 | {metrics['fp32']['accuracy']:.4f} | {metrics['fp32']['macro_f1']:.4f} | | |",
        f"| TF-IDF + LR baseline | {metrics['baseline']['accuracy']:.4f} "
        f"| {metrics['baseline']['macro_f1']:.4f} | | |",
    ]
    for name, variant in compression.variants.items():
        latency = variant.get("latency_p50_ms")
        lines.append(
            f"| ONNX {name} | {variant['accuracy']:.4f} | {variant['macro_f1']:.4f} "
            f"| {variant['size_bytes'] / 1e6:.2f} MB | {'' if latency is None else f'{latency:.3f}'} |"
        )
    verdict = "promoted to @staging" if reg.promoted else "NOT promoted (staging unchanged)"
    lines += ["", f"Registered **{reg.model_name} v{reg.version}** ({compression.chosen}): {verdict}.", ""]
    lines += [f"- {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in reg.gate["checks"]]
    lines += ["", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in summary.timings.items()]
    lines += [f"| **total** | **{summary.total_seconds:.1f}** |"]
    lines += run_links(summary, summary.results.get("root"))
    return "\n".join(lines)
