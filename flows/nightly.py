"""The nightly retrain: take the incoming batches, run every step of dvc.yaml as a Prefect task, then DVC
versioning and MLflow registration, as one transaction (flows/night.py: the phases, the journal, recovery).

The run holds the project's workspace lock throughout, checks the tracking store before anything is trained,
and first settles the previous night when it stopped half-way. A night whose batches are all blocked (or that
brings nothing new to an up-to-date pipeline) does not retrain. When any batch was blocked the flow run ends
Failed (after training on the night's accepted batches, if any), so schedulers and notifications see it; the
summary says why, with example rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.hooks import on_failure
from flows.live import watch_traffic
from flows.logs import send_step_logs
from flows.mlrun import pipeline_run
from flows.night import (
    Recovery,
    check_store_first,
    complete_night,
    finish_night,
    open_night,
    overrides_change,
    record_intake,
    recover,
    roll_back,
    write_overrides,
)
from flows.runinfo import run_links
from quantflow.core.errors import QuantflowError, ValidationFailed
from quantflow.core.failpoints import failpoint
from quantflow.core.journal import Night, record
from quantflow.core.label_audit import count_flagged, read_label_issues
from quantflow.core.layout import Layout
from quantflow.core.params import Params, load_params
from quantflow.core.shipped_calibration import describe
from quantflow.core.workspace import workspace_lock
from quantflow.intake.contracts import check_dataset_task
from quantflow.intake.incoming import Intake, take_incoming_task, withdraw
from quantflow.intake.live import LiveDrift, render_live
from quantflow.intake.nightly import retrain_reason
from quantflow.intake.versioning import lineage, require_dvc_repo
from quantflow.registry.candidate import shipped_label
from quantflow.registry.card import shipped_lines
from quantflow.registry.promotion import Retry
from tasks.stages import STAGES, stage_args, step_function

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did: per-step wall times, the metrics that matter and the registry outcome."""

    dataset: str
    layout: Layout | None = None  # the project's paths: the summary names the night's folders by them
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    registered: Any = None
    intake: Intake = field(default_factory=Intake)
    retrain: str | None = None  # why the night retrains; None: it does not
    git_commit: str | None = None  # the commit holding the night's dvc.lock and .dvc files
    recovered: Recovery | None = None  # what this run did with a previous night that stopped half-way
    live: LiveDrift | None = None  # the service's traffic since the last night (quantflow/intake/live.py)
    # per accepted batch: how many of its rows the split step's label audit flagged
    flagged: dict[str, int] = field(default_factory=dict)
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

    def timed_recovery(self, name: str, call: Any, *args: Any) -> Any:
        return self.timed(f"recover: {name}", call, *args)


class BatchesBlocked(QuantflowError):
    """At least one incoming batch was blocked: the flow run fails after doing what the others allowed."""

    def __init__(self, summary: RunSummary) -> None:
        lines = ["\n".join(b.reasons) for b in summary.intake.blocked]  # each reason names its file
        super().__init__(f"{len(lines)} incoming batch(es) blocked:\n" + "\n".join(lines))
        self.summary = summary


def run_steps(summary: RunSummary, params: Any, layout: Layout) -> None:
    """ingest … compress, each as its task; the dataset contract runs right after split."""
    for name in STAGES:
        summary.timed(name, step_function(name, as_task=True), *stage_args(name, params, layout))
        if name == "split":
            summary.timed(
                "dataset contract",
                check_dataset_task,
                params,
                layout.split_dir,
                layout.expectations_dir,
                layout.dataset_contract,  # not under reports/validation: a DVC output of validate
                layout.data_docs,
            )
        failpoint(f"steps:after-{name}")


def train_night(summary: RunSummary, params: Params, layout: Layout, night: Night) -> None:
    """The ``--set`` overrides written into the params file (what DVC records is what was built), then the steps
    on tonight's data. On failure the night rolls back at once: the params file as it was, tonight's stored
    batches gone (and rejected when the night's dataset failed its checks), every DVC output back to dvc.lock,
    and a restore that fails reported beside the error, never instead of it."""
    try:
        write_overrides(layout, night, params)
        run_steps(summary, params, layout)
    except Exception as exc:
        reason = None
        if isinstance(exc, ValidationFailed):
            reason = f"the night's dataset failed: {str(exc).splitlines()[0]}"
        withdraw(summary.intake, layout, reason)  # without a reason: left in incoming for the next night
        _, problems = roll_back(layout, night, f"{type(exc).__name__} in the steps")
        if problems and isinstance(exc, QuantflowError):
            exc.args = (f"{exc}\n" + "\n".join(f"Also: {p}" for p in problems), *exc.args[1:])
        for problem in problems:
            logger.error("rolling back the night: %s", problem)
        raise
    record(layout.root, night, "trained", summary.retrain or "")
    failpoint("night:after-trained")


def flow_tags() -> dict[str, str]:
    return {
        "prefect_flow_run_id": str(flow_run.id or "none"),
        "prefect_flow_run_name": str(flow_run.name or "none"),
    }


def run_night(
    summary: RunSummary,
    params: Params,
    layout: Layout,
    params_file: str,
    overrides: dict[str, Any],
    run_id: str,
) -> None:
    """Tonight, phase by phase (flows/night.py): intake, the steps, versions, commit, register, close; the
    journal names the pipeline's MLflow run ``run_id``, which the register step logs into."""
    night = open_night(layout, params_file, overrides, params, run_id)
    summary.intake = summary.timed("incoming batches", take_incoming_task, params, layout)
    # the traffic, before training: against the model that served it and the data it was built from
    summary.live = watch_traffic(summary.timed, params, layout, night)
    overridden = overrides_change(layout, night, params)
    summary.retrain = retrain_reason(params, layout, summary.intake, overridden)
    record_intake(layout, night, summary.intake, summary.retrain)
    if not summary.retrain:
        complete_night(layout, night, "not retrained")
        return
    train_night(summary, params, layout, night)
    summary.flagged = flagged_per_batch(summary, layout)
    summary.registered = finish_night(params, layout, night, summary.timed, flow_tags())
    summary.git_commit = night.git_commit
    summary.results["lineage"] = lineage(layout.root)
    complete_night(layout, night, f"registered v{summary.registered.version}")


def flagged_per_batch(summary: RunSummary, layout: Layout) -> dict[str, int]:
    """How many rows of each batch accepted tonight the split step's label audit flagged (by text key): the
    audit runs on the merged training split, so only a batch's rows that landed in it can be flagged."""
    if summary.results["split"].stats["label_audit"]["action"] == "off":
        return {}
    issues = read_label_issues(layout.label_issues)
    return {
        b.name: count_flagged(pd.read_parquet(layout.accepted_file(b.name)), issues)
        for b in summary.intake.accepted
    }


@flow(name="nightly_retrain", log_prints=False, on_failure=[on_failure])
def nightly_retrain(
    root: str = ".", params_file: str = "params.yaml", overrides: dict[str, Any] | None = None
) -> RunSummary:
    """Settle the previous night if it stopped half-way, then retrain on the configured dataset and tonight's
    batches, compress, version the data and register the chosen variant, holding the workspace lock."""
    send_step_logs()
    project = Path(root).resolve()
    params = load_params(project / params_file, overrides)
    require_dvc_repo(project)
    layout = Layout.of(params, project)
    summary = RunSummary(dataset=params.ingest.dataset, layout=layout)
    summary.results["root"] = project
    with workspace_lock(project, f"nightly_retrain (flow run {flow_run.name or '?'})"):
        retry = Retry(params.register.retries + 1, params.register.retry_backoff_s)
        summary.timed("tracking store", check_store_first, project, retry)
        with pipeline_run(params, project, flow_tags()) as mlrun:
            summary.recovered = recover(project, summary.timed_recovery, flow_tags())
            # the ingest stage's dependency; .gitkeep: a clone (and reproduce's worktree) holds it too
            layout.accepted_dir.mkdir(parents=True, exist_ok=True)
            (layout.accepted_dir / ".gitkeep").touch()
            run_night(summary, params, layout, params_file, overrides or {}, mlrun.run_id)
            mlrun.summary = render_summary(summary)
            mlrun.outcome = _outcome(summary)
            create_markdown_artifact(
                markdown=mlrun.summary,
                key="nightly-retrain-summary",
                description="incoming batches, metrics, compression, gate decision and step timings",
            )
            _log_outcome(summary)
            if summary.intake.blocked:
                raise BatchesBlocked(summary)
    return summary


def _outcome(summary: RunSummary) -> str:
    """The night in a few words, for the MLflow run's ``quantflow.outcome`` tag."""
    reg = summary.registered
    if reg is not None:
        return f"registered {reg.model_name} v{reg.version}: {reg.outcome}"
    return "not retrained: " + ("every batch blocked" if summary.intake.blocked else "nothing new")


def _log_outcome(summary: RunSummary) -> None:
    reg, log = summary.registered, get_run_logger()
    if summary.recovered is not None:
        log.info("recovered: %s", summary.recovered.describe())
    if reg is None:
        log.info("not retrained: %s", "every batch blocked" if summary.intake.blocked else "nothing new")
        return
    log.info(
        "registered %s v%s: %s (%.0f s)",
        reg.model_name,
        reg.version,
        "promoted to @staging" if reg.promoted else "not promoted",
        summary.total_seconds,
    )


def render_summary(summary: RunSummary) -> str:
    """The run summary as markdown: the night's batches, the model section (when it retrained), timings."""
    lines = render_intake(summary)
    if summary.live is not None:
        lines += ["", *render_live(summary.live).rstrip("\n").splitlines()]
    if summary.registered is None:
        why = (
            "every incoming batch was blocked (a blocked night does not retrain, `--set` or not)"
            if summary.intake.blocked and not summary.intake.accepted
            else "no new accepted data and the pipeline is up to date"
        )
        lines += ["", f"**Not retrained**: {why}; the registry and `staging` are unchanged by tonight."]
    else:
        lines += ["", *render_model(summary)]
    lines += ["", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in summary.timings.items()]
    lines += [f"| **total** | **{summary.total_seconds:.1f}** |"]
    lines += run_links(summary)
    return "\n".join(lines)


def render_intake(summary: RunSummary) -> list[str]:
    """One row per incoming batch, then why each blocked batch was blocked and where its reports are."""
    intake = summary.intake
    lines = [f"## nightly_retrain on `{summary.dataset}`", ""]
    if summary.recovered is not None:
        lines += [f"**Recovered the previous night first**: {summary.recovered.describe()}.", ""]
    lines += [f"- warning: {note}" for note in intake.warnings]
    if intake.warnings:
        lines.append("")
    if not intake.batches:
        lines.append("No incoming batches.")
    else:
        lines += [
            "| batch | verdict | rows | appended | bad rows | drift | label audit flagged |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {b.name} | {b.status} | {b.rows} | {b.accepted_rows} | {b.quarantined_rows} | {b.drift} "
            f"| {summary.flagged.get(b.name, '–')} |"
            for b in intake.batches
        ]
    for b in intake.batches:
        reports = f"{_shown(summary, b.report_dir)}/ (contract.json, drift.md, drift.png)"
        where = f"; also in {_shown(summary, b.rejected)}/" if b.rejected is not None else ""
        lines += ["", f"**{b.name}** ({b.status}): reports in the run's artifacts under `{reports}`{where}"]
        lines += [
            f"- {line}" for text in b.reasons + b.warnings for line in [text.replace(chr(10), chr(10) + "  ")]
        ]
    if summary.retrain:
        lines += ["", f"Retrained: {summary.retrain}."]
    if "split" in summary.results:
        lines.append(audit_line(summary))
    if summary.git_commit:
        accepted = _shown(summary, summary.layout.accepted_dir if summary.layout else None)
        lines += [f"Data version: git commit `{summary.git_commit}` (dvc.lock, {accepted}/*.dvc)."]
    return lines


def audit_line(summary: RunSummary) -> str:
    """The split step's label audit in one line: off, or how many training rows it flagged (and dropped)."""
    audit = summary.results["split"].stats["label_audit"]
    if audit["action"] == "off":
        return "Label audit: off (split.label_issues)."
    where = _shown(summary, summary.layout.label_issues if summary.layout else None)
    dropped = f", {audit['dropped']} dropped from it" if audit["action"] == "drop" else ", all kept"
    return (
        f"Label audit ({audit['action']}): {audit['flagged']} training rows flagged{dropped} "
        f"({audit['seconds']:.1f} s); ranked in `{where}`."
    )


def _shown(summary: RunSummary, path: Path | None) -> str:
    """A path as the summary shows it: relative to the project folder when inside it."""
    if path is None:
        return "(none)"
    return str(summary.layout.relative(path) if summary.layout is not None else path)


def calibration_line(calibration: dict) -> str:
    """The shipped variant's calibration and its test ECE and Brier before → after; fp32's ECE beside it."""
    chosen = calibration["variant"]
    shipped, fp32 = calibration["models"][chosen], calibration["models"]["fp32"]
    return (
        f"Calibration: {chosen} serves {describe(calibration['calibration'])} (fitted on val), test ECE "
        f"{shipped['before']['ece']:.4f} → {shipped['after']['ece']:.4f}, Brier {shipped['before']['brier']:.4f} "
        f"→ {shipped['after']['brier']:.4f}; fp32 ECE {fp32['before']['ece']:.4f} → {fp32['after']['ece']:.4f}."
    )


def render_model(summary: RunSummary) -> list[str]:
    """The candidates and the winner, metrics of fp32 and int8, the registered version and its gate."""
    metrics = summary.results["evaluate"].metrics
    compression = summary.results["compress"]
    reg = summary.registered
    fp32 = metrics["fp32"]
    lines = [  # the family that won, every candidate's scores, the test against the baseline; then the table
        *shipped_lines(metrics),
        "| model | accuracy | macro-F1 | size | p50 ms, 1 text |",
        "|---|---|---|---|---|",
        f"| {shipped_label(metrics)} | {fp32['accuracy']:.4f} | {fp32['macro_f1']:.4f} | | |",
        f"| TF-IDF + LR baseline | {metrics['baseline']['accuracy']:.4f} "
        f"| {metrics['baseline']['macro_f1']:.4f} | | |",
    ]
    for name, variant in compression.variants.items():
        latency = variant.get("latency_p50_ms")
        lines.append(
            f"| ONNX {name} | {variant['accuracy']:.4f} | {variant['macro_f1']:.4f} "
            f"| {variant['size_bytes'] / 1e6:.2f} MB | {'' if latency is None else f'{latency:.3f}'} |"
        )
    lines += ["", calibration_line(compression.calibration)]
    verdict = "promoted to @staging" if reg.promoted else "NOT promoted (staging unchanged)"
    lines += ["", f"Registered **{reg.model_name} v{reg.version}** ({compression.chosen}): {verdict}.", ""]
    lines += [f"- {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}" for c in reg.gate["checks"]]
    lines += ["", f"MLflow run `{reg.run_id}`: the reports above are under its `reports/` artifacts."]
    return lines
