"""The nightly deployment: ``nightly_retrain`` on a cron schedule, at most ``schedule.concurrency_limit`` at once.

``quantflow schedule`` serves it from one long-lived process (Prefect's ``serve``: the process polls the API
for due runs and runs each in a subprocess); ``infra/prefect.yaml`` declares the same deployment for a
``process`` work pool. Both read ``params.yaml``'s ``schedule`` section, so the two cannot drift apart
(tests/infra/test_prefect_yaml.py checks the file against it).

Overlap is prevented by the *deployment* concurrency limit, not a global one: Prefect enforces it on the
server when a run of the deployment moves to Pending, for both ``serve`` and workers, and with
``CANCEL_NEW`` a night whose predecessor still runs is cancelled (visible in the UI) instead of piling up
behind a stuck run. A hand-made ``quantflow run`` is not a run of the deployment and is not counted: the
project's workspace lock (quantflow/core/workspace.py, taken by the flow itself) stops whichever comes second.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from quantflow.core.params import ScheduleParams

logger = logging.getLogger(__name__)

FLOW_NAME = "nightly_retrain"
TAGS = ["quantflow", "nightly"]


def concurrency(schedule: ScheduleParams) -> ConcurrencyLimitConfig:
    return ConcurrencyLimitConfig(
        limit=schedule.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(schedule.collision_strategy),
    )


def flow_parameters(root: Path, params_file: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters every scheduled run gets: an absolute project root, so the runner's cwd does not matter."""
    parameters: dict[str, Any] = {"root": str(root.resolve()), "params_file": params_file}
    if overrides:
        parameters["overrides"] = overrides
    return parameters


def build_deployment(
    schedule: ScheduleParams,
    root: Path,
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> RunnerDeployment:
    """``nightly_retrain/<schedule.deployment>`` with its cron schedule and concurrency limit.

    The entrypoint is the module path ``flows.nightly.nightly_retrain`` (not a file path): the runner's
    subprocess imports it from the installed package wherever it starts.
    """
    from flows.nightly import nightly_retrain

    return nightly_retrain.to_deployment(
        name=schedule.deployment,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        concurrency_limit=concurrency(schedule),
        parameters=flow_parameters(root, params_file, overrides),
        description=f"quantflow nightly retrain of {root.resolve()}: {schedule.cron} ({schedule.timezone})",
        tags=TAGS,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_nightly(deployment: RunnerDeployment) -> None:
    """Register the deployment and execute its runs until SIGTERM/Ctrl-C (which pauses the schedule).

    Each run is a subprocess with this process's environment: ``quantflow schedule`` set Prefect's extra
    loggers (flows/logs.py) before importing Prefect, so the runs' step lines reach their logs. (A served
    deployment takes no ``job_variables``: those are for work pools, as in infra/prefect.yaml.)
    """
    logger.info(
        "serving %s/%s on %s: %s",
        FLOW_NAME,
        deployment.name,
        deployment.schedules[0].schedule if deployment.schedules else "no schedule",
        deployment.parameters,
    )
    serve(deployment, pause_on_shutdown=True, print_starting_message=True)
