"""The night's live drift in the nightly flow: read the prediction log's window, journal the verdict, publish it.

The measuring is quantflow/intake/live.py's; this module places it in the night (flows/night.py: the journal, the
cursor that moves only when the night completes) and sends the report where the night's reports go: the
pipeline's MLflow run (``reports/nightly/live/`` and ``live_*`` metrics), a Prefect markdown artifact, and the
run summary (flows/nightly.py). It runs on every night, retrained or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_markdown_artifact

from quantflow.core.journal import Night, record
from quantflow.core.layout import Layout
from quantflow.core.params import Params
from quantflow.intake.live import LiveDrift, live_drift_task, render_live, window
from quantflow.registry.pipeline_run import log_live_drift

ARTIFACT_KEY = "live-drift"  # the Prefect artifact (lower case and dashes, as Prefect requires)

Timed = Callable[..., Any]  # (step name, callable, *args) → its result, timed for the run summary


def watch_traffic(timed: Timed, params: Params, layout: Layout, night: Night) -> LiveDrift:
    """Tonight's window of the prediction log, judged; its end and gate check recorded in the journal (a
    roll-forward registers with them; the cursor moves there once the night completes); the report published."""
    since, until = window(layout.root, params.nightly.live_drift.settle_s)
    live = timed("live drift", live_drift_task, params, layout, since, until)
    night.live_until, night.live_check = live.until, live.check()
    record(layout.root, night, night.phase, f"live drift: {live.verdict} ({live.served} served texts)")
    publish(live, layout, night.run_id)
    return live


def publish(live: LiveDrift, layout: Layout, run_id: str | None) -> None:
    """The report into the pipeline's MLflow run (best effort) and as a Prefect markdown artifact."""
    folder = layout.live_reports.folder
    if run_id:
        where = f"reports/{folder.relative_to(layout.reports_dir).as_posix()}"  # where register logs reports/
        log_live_drift(layout.root, run_id, folder, where, live.metrics())
    create_markdown_artifact(
        markdown=render_live(live),
        key=ARTIFACT_KEY,
        description="the service's traffic since the last night against the training data; the review queue",
    )
