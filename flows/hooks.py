"""State hooks of the nightly flow: what an operator finds the morning after a failed night.

``on_failure`` writes one markdown failure summary (the failed task, the error, the params digest, where to
look) to ``schedule.failure_dir`` and as a Prefect artifact on the flow run, and sends it through the Prefect
notification block ``schedule.notify_block`` when one is named. A hook never raises: a broken notifier must not
hide the failure it reports, so its own errors are logged and written into the summary instead.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.utilities.urls import url_for

from quantflow.core.layout import Layout, tracking_uri
from quantflow.core.params import Params, load_params

logger = logging.getLogger(__name__)

FAILURE_ARTIFACT_KEY = "nightly-retrain-failure"


@dataclass(frozen=True)
class Failure:
    """Everything the summary says about one failed run."""

    flow_name: str
    flow_run_id: str
    flow_run_name: str
    failed_tasks: list[str]
    error: str
    error_trace: str
    params_digest: str
    root: Path
    tracking_uri: str
    run_url: str | None
    at: str


def failed_task_names(flow_run_id: Any) -> list[str]:
    """The flow run's tasks that ended Failed (retries exhausted), in start order, as markdown code spans."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]))
            ),
        )
    runs.sort(key=lambda run: run.start_time or run.expected_start_time or datetime.min.replace(tzinfo=UTC))
    # a task run is named <task name>-<3 hex digits>: report the task, with the run for the UI's search box
    return [f"{run.name.rsplit('-', 1)[0]}` (task run `{run.name}`)" for run in runs]


def error_of(state: Any) -> tuple[str, str]:
    """(one-line error, traceback) from a Failed state: its exception when it holds one, else its message."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        trace = "".join(traceback.format_exception(type(result), result, result.__traceback__))
        return f"{type(result).__name__}: {result}", trace
    return state.message or "(no message)", ""


def run_params(flow_run: FlowRun) -> tuple[Path, Params | None, str]:
    """The project root, the params the run asked for (None when they do not load) and their digest."""
    parameters = flow_run.parameters or {}
    root = Path(parameters.get("root", ".")).resolve()
    try:
        params = load_params(root / parameters.get("params_file", "params.yaml"), parameters.get("overrides"))
    except Exception as exc:  # noqa: BLE001 - the summary names why the digest is missing
        return root, None, f"unavailable ({type(exc).__name__}: {exc})"
    return root, params, params.digest()


def describe(flow: Any, flow_run: FlowRun, state: Any) -> tuple[Failure, Params | None]:
    """What failed, read from the run, its state and the API; each part degrades alone when unreadable."""
    root, params, digest = run_params(flow_run)
    try:
        tasks = failed_task_names(flow_run.id)
    except Exception as exc:  # noqa: BLE001 - the API may be what failed
        logger.warning("failure summary: cannot list the failed tasks: %s", exc)
        tasks = []
    error, trace = error_of(state)
    failure = Failure(
        flow_name=flow.name,
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        failed_tasks=tasks,
        error=error,
        error_trace=trace,
        params_digest=digest,
        root=root,
        tracking_uri=tracking_uri(root),
        run_url=url_for(flow_run),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return failure, params


def render_failure(failure: Failure, summary_path: Path | None) -> str:
    """The failure summary as markdown: what failed, why, with which params, and where to look next."""
    tasks = ", ".join(f"`{name}`" for name in failure.failed_tasks) or "none (the flow itself raised)"
    lines = [
        f"## {failure.flow_name} FAILED: run `{failure.flow_run_name}`",
        "",
        f"- at: {failure.at}",
        f"- failed task: {tasks}",
        f"- error: {failure.error}",
        f"- params digest: `{failure.params_digest}` (project `{failure.root}`)",
        "",
        "### Where to look",
        f"- Prefect flow run `{failure.flow_run_id}`" + (f": {failure.run_url}" if failure.run_url else ""),
        f"- `prefect flow-run logs {failure.flow_run_id}` for the full log",
        f"- MLflow: {failure.tracking_uri} (a run that failed before `register` changed nothing there; a night"
        " with blocked batches may still have registered the ones it accepted: see its run summary)",
        "- `dvc status` in the project: which outputs the failed run left uncommitted",
        "- `.quantflow/journal.json` in the project: where the night stopped; the next run rolls it back (before"
        " `trained`) or finishes it (versions, commits and registers its model once) before anything else",
    ]
    if summary_path is not None:
        lines.append(f"- this summary: `{summary_path}`")
    if failure.error_trace:
        lines += ["", "```", failure.error_trace.rstrip()[-4000:], "```"]
    return "\n".join(lines)


def failure_file(failure: Failure, params: Params | None) -> Path:
    """``<schedule.failure_dir>/<time>-<run name>.md`` (Layout.failure_dir: under the project unless absolute).

    When the run's params do not load there is no failure_dir to read: the summary goes to the project folder
    itself, where it is seen, and says why the params are missing.
    """
    folder = Layout.of(params, failure.root).failure_dir if params is not None else failure.root
    folder.mkdir(parents=True, exist_ok=True)
    stamp = failure.at.replace(":", "").replace("+0000", "Z")
    return folder / f"{stamp}-{failure.flow_run_name}.md"


def publish_artifact(failure: Failure, markdown: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=FAILURE_ARTIFACT_KEY,
                type="markdown",
                data=markdown,
                description=f"why {failure.flow_run_name} failed and where to look",
                flow_run_id=failure.flow_run_id,
            )
        )


def notify(block_ref: str, failure: Failure, markdown: str) -> None:
    """Send the summary through the saved notification block ``<type-slug>/<name>``."""
    from prefect.blocks.core import Block

    block = Block.load(block_ref)
    block.notify(body=markdown, subject=f"{failure.flow_name} failed: {failure.error[:120]}")


def _attempt(what: str, call: Any, problems: list[str]) -> None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - a hook must not raise; the problem goes into the log
        logger.exception("failure summary: %s failed", what)
        problems.append(f"{what} failed: {type(exc).__name__}: {exc}")


def on_failure(flow: Any, flow_run: FlowRun, state: Any) -> None:
    """Prefect ``on_failure`` hook of ``nightly_retrain``: file, artifact and (optional) notification."""
    failure, params = describe(flow, flow_run, state)
    path = failure_file(failure, params)
    markdown = render_failure(failure, path)
    problems: list[str] = []
    _attempt("Prefect artifact", lambda: publish_artifact(failure, markdown), problems)
    block = params.schedule.notify_block if params is not None else None
    if block:
        _attempt(f"notification block {block}", lambda: notify(block, failure, markdown), problems)
    if problems:
        markdown += "\n\n### Reporting problems\n" + "\n".join(f"- {p}" for p in problems)
    path.write_text(markdown + "\n", encoding="utf-8")
    logger.error("%s failed (%s); summary in %s", failure.flow_run_name, failure.error, path)
