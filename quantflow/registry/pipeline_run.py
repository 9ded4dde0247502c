"""The pipeline's MLflow run: one per `quantflow run`, opened when the night starts, fed the learning curves while
the candidates train, ended with the flow's state.

The register step logs the rest into the same run (registration.py: reports, gate, dvc.lock, the model), so the
run's duration is the pipeline's and its learning curves are drawn as training goes. How it ends:

- FINISHED when the flow run completes (a night that did not retrain included: its ``quantflow.outcome`` says so);
- FAILED when the flow fails (a blocked batch, a bad input, an outage in register...);
- a run whose process was killed stays RUNNING until the next `quantflow run` of the same workspace: that run
  ends it KILLED when its night is rolled back, or registers into it and ends it FINISHED when its night is rolled
  forward (flows/night.py), and ends any other run of the workspace still RUNNING as KILLED. The workspace lock
  guarantees the process behind such a run is gone.

Ending a run or a live curve point is best effort: the tracking server being down then never fails a night (the
register step has its own retries, and the curves are completed from the history file when it registers).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric

from quantflow.core.params import Params
from quantflow.registry.promotion import Retry, no_inner_http_retries, retrying
from quantflow.registry.runlog import curve_metrics, experiment_description, log_params
from quantflow.registry.tracking import ensure_experiment, make_client, resolve_tracking_uri

logger = logging.getLogger(__name__)

WORKSPACE_TAG = "quantflow.workspace"  # host:project folder: which workspace's lock guarded the run
OUTCOME_TAG = "quantflow.outcome"  # what the pipeline run did, in a few words
ENDED_BY_TAG = "quantflow.ended_by"  # the later run that ended a run left RUNNING
SUMMARY_ARTIFACT = "run_summary.md"  # the flow's run summary (the Prefect artifact), as the run ended


@dataclass(frozen=True)
class PipelineRun:
    run_id: str
    uri: str
    client: mlflow.MlflowClient


def workspace_id(root: Path) -> str:
    return f"{socket.gethostname()}:{root.resolve()}"


def opening_name(params: Params, now: datetime | None = None) -> str:
    """The run's name until register names the model that shipped (runlog.run_name): dataset, UTC time, digest."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M")
    return f"{params.ingest.dataset}-night-{stamp}-{params.digest()[:6]}"


def open_run(params: Params, root: Path, tags: dict[str, str], keep: str | None, by: str) -> PipelineRun:
    """Create the pipeline run (the experiment when missing), with the params it runs with; first end the
    workspace's runs left RUNNING by killed processes, except ``keep`` (the journal's night: the recovery
    settles it). Raises RegistryUnavailable when the tracking server does not answer after register.retries."""
    uri, artifact_dir = resolve_tracking_uri(root)
    client, rp = make_client(uri), params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)

    def call(what: str, fn: Any) -> Any:
        return retrying(fn, what, retry, uri)

    with no_inner_http_retries():
        experiment_id = call(
            "experiment",
            lambda: ensure_experiment(client, rp.experiment, artifact_dir, experiment_description(params)),
        )
        call("end runs left running", lambda: end_orphans(client, experiment_id, root, keep, by))
        all_tags = {**tags, WORKSPACE_TAG: workspace_id(root)}
        run = call(
            "open the run",
            lambda: client.create_run(experiment_id, run_name=opening_name(params), tags=all_tags),
        )
        run_id = run.info.run_id
        call("log params", lambda: log_params(client, run_id, params))
    logger.info("MLflow run %s (%s) opened on %s", run.info.run_name, run_id, uri)
    return PipelineRun(run_id, uri, client)


def end_orphans(
    client: mlflow.MlflowClient, experiment_id: str, root: Path, keep: str | None, by: str
) -> list[str]:
    """End as KILLED the workspace's runs still RUNNING (their processes are gone: we hold its lock)."""
    mine = workspace_id(root)
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    ended = [
        r.info.run_id for r in running if r.data.tags.get(WORKSPACE_TAG) == mine and r.info.run_id != keep
    ]
    for run_id in ended:
        client.set_tag(run_id, ENDED_BY_TAG, by)
        client.set_tag(run_id, OUTCOME_TAG, "killed: its process was gone when the next run started")
        client.set_terminated(run_id, "KILLED")
        logger.warning("MLflow run %s was left RUNNING by a killed run: ended as KILLED", run_id)
    return ended


def end_run(root: Path, run_id: str, status: str, outcome: str, by: str | None = None) -> bool:
    """Tag the run's outcome and end it with ``status``; False (and a warning) when the store does not answer:
    the run stays RUNNING until the next run of the workspace ends it."""
    client = make_client(resolve_tracking_uri(root)[0])
    try:
        with no_inner_http_retries():
            if by:
                client.set_tag(run_id, ENDED_BY_TAG, by)
            client.set_tag(run_id, OUTCOME_TAG, outcome)
            client.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - best effort: the next run ends it
        logger.warning(
            "MLflow run %s could not be ended %s (%s: %s); the next quantflow run ends it",
            run_id,
            status,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        return False
    return True


def log_summary(run: PipelineRun, markdown: str) -> None:
    """The flow's run summary as ``run_summary.md`` in the run (best effort, like ending it)."""
    try:
        with no_inner_http_retries():
            run.client.log_text(run.run_id, markdown, SUMMARY_ARTIFACT)
    except Exception as exc:  # noqa: BLE001 - best effort
        logger.warning("the run summary could not be logged to MLflow run %s: %s", run.run_id, exc)


def log_live_drift(
    root: Path, run_id: str, folder: Path, artifact_path: str, metrics: dict[str, float]
) -> bool:
    """The night's live-drift report (``folder``'s files, under ``artifact_path``) and its ``live_*`` metrics into
    the pipeline's run, on nights that retrain or not. Best effort, like the summary: False (and a warning)
    when the store does not answer; the report stays in the run summary and the workspace."""
    client = make_client(resolve_tracking_uri(root)[0])
    now = int(datetime.now(UTC).timestamp() * 1000)
    try:
        with no_inner_http_retries():
            client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
            if metrics:
                client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    except Exception as exc:  # noqa: BLE001 - best effort
        logger.warning("the live-drift report could not be logged to MLflow run %s: %s", run_id, exc)
        return False
    return True


class LiveCurves:
    """An epoch listener (quantflow/core/epochs.py): each finished epoch's row into the run at once, as
    ``<candidate>/<key>`` at ``step=epoch``. A failure raises, and epochs.report drops the listener; the
    register step completes the winner's curve from its history file."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run

    def __call__(self, candidate: str, row: dict[str, Any]) -> None:
        metrics: list[Metric] = curve_metrics(candidate, [row])
        with no_inner_http_retries():
            self.run.client.log_batch(self.run.run_id, metrics=metrics)
