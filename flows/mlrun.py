"""The flow's MLflow run (quantflow/registry/pipeline_run.py), from the night's start to the flow's end.

Opened once the workspace lock is held and the tracking store answered: first it ends the workspace's runs that
killed processes left RUNNING, except the night the journal holds (the recovery settles that one: flows/night.py).
While the flow runs, every finished epoch goes into it (quantflow/core/epochs.py). It ends with the flow: FINISHED,
or FAILED with the error's first line; the run summary goes in as ``run_summary.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from quantflow.core import epochs
from quantflow.core.journal import read_journal
from quantflow.core.params import Params
from quantflow.registry.pipeline_run import LiveCurves, PipelineRun, end_run, log_summary, open_run


@dataclass
class FlowRun:
    """The open run, and what the flow says about its end."""

    run: PipelineRun
    outcome: str = "finished"
    summary: str | None = None  # the run summary (markdown), logged when the run ends

    @property
    def run_id(self) -> str:
        return self.run.run_id


def ended_by(tags: dict[str, str]) -> str:
    return f"flow run {tags.get('prefect_flow_run_name', '?')} ({tags.get('prefect_flow_run_id', '?')})"


@contextmanager
def pipeline_run(params: Params, root: Path, tags: dict[str, str]) -> Iterator[FlowRun]:
    """Open the run, draw the learning curves into it while the block runs, end it with the block's outcome."""
    journal = read_journal(root)
    flow = FlowRun(open_run(params, root, tags, journal.run_id if journal else None, ended_by(tags)))
    try:
        with epochs.listening(LiveCurves(flow.run)):
            yield flow
    except BaseException as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        _close(
            root, flow, "FAILED" if isinstance(exc, Exception) else "KILLED", f"{type(exc).__name__}: {first}"
        )
        raise
    _close(root, flow, "FINISHED", flow.outcome)


def _close(root: Path, flow: FlowRun, status: str, outcome: str) -> None:
    if flow.summary is not None:
        log_summary(flow.run, flow.summary)
    end_run(root, flow.run_id, status, outcome)
