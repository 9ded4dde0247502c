"""The nightly deployment on a real ``prefect server``: ``quantflow schedule`` registers it with its cron
schedule, the server's scheduler creates the nightly runs, a run triggered now is executed by the serving
process on a tiny git + DVC project and registers a model version in a real ``mlflow server``; a second
run triggered meanwhile is cancelled by the deployment's concurrency limit. ``prefect deploy`` registers
infra/prefect.yaml's deployment on the same server. Every process is stopped by its PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from quantflow.core.params import load_params
from quantflow.intake.versioning import lock_md5s
from tests.integration.test_pipeline import make_project
from tests.mlflow_server import (  # noqa: F401
    QUIET_ENV,
    free_port,
    log_tail,
    mlflow_server,
    mlflow_server_process,
    start_logged,
    stop,
    wait_until_healthy,
)

pytestmark = [pytest.mark.infra, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# `quantflow schedule --name`: apart from prefect.yaml's deployment on the same server
SERVED = "nightly-test"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0  # SIGTERM: `quantflow schedule` pauses the schedule before it exits
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    log_path: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, **QUIET_ENV, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        value = check()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not after {timeout:.0f} s" + (f"; log tail:\n{log_tail(log, 60)}" if log else ""))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    folder = tmp_path_factory.mktemp("prefect_server")
    port = free_port()
    server = PrefectServer(f"http://127.0.0.1:{port}/api", folder / "home", folder / "server.log")
    env = server.env() | {
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # nightly runs created within seconds
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_logged(command, server.log_path, env)
    try:
        wait_until_healthy(proc, server.api_url, server.log_path, "prefect server", START_TIMEOUT_S)
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home}):
            yield server
    finally:
        stop(proc, STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def served(
    prefect_server: PrefectServer,
    mlflow_server: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
) -> Iterator[tuple[Path, Any]]:
    """`quantflow schedule` serving the tiny project; yields (project, deployment) once registered."""
    project = make_project(tmp_path_factory.mktemp("project"))
    log_path = project.parent / "schedule.log"
    env = prefect_server.env() | {"MLFLOW_TRACKING_URI": mlflow_server}
    command = [sys.executable, "-m", "quantflow.cli", "schedule", "--root", str(project), "--name", SERVED]
    proc = start_logged(command, log_path, env, cwd=project)
    try:
        with get_client(sync_client=True) as client:

            def deployment() -> Any:
                assert proc.poll() is None, f"quantflow schedule exited:\n{log_tail(log_path)}"
                try:
                    return client.read_deployment_by_name(f"nightly_retrain/{SERVED}")
                except Exception:  # noqa: BLE001 - not registered yet
                    return None

            yield project, wait_for("deployment registered", deployment, START_TIMEOUT_S, log_path)
    finally:
        stop(proc, STOP_TIMEOUT_S)  # SIGTERM: serve pauses the schedule and stops


def runs_of(deployment_id: Any, *states: StateType) -> list[FlowRun]:
    flow_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=flow_filter,
        )


def test_schedule_registers_cron_deployment_and_nightly_runs(served: tuple[Path, Any]) -> None:
    project, deployment = served
    schedule = load_params(project / "params.yaml").schedule
    [entry] = deployment.schedules
    assert (entry.schedule.cron, entry.schedule.timezone, entry.active) == (
        schedule.cron,
        schedule.timezone,
        True,
    )
    assert deployment.global_concurrency_limit.limit == schedule.concurrency_limit
    assert deployment.concurrency_options.collision_strategy.value == schedule.collision_strategy
    assert deployment.parameters["root"] == str(project.resolve())
    scheduled = wait_for("scheduled runs", lambda: runs_of(deployment.id, StateType.SCHEDULED), 60)
    hour, minute = int(schedule.cron.split()[1]), int(schedule.cron.split()[0])
    for run in scheduled:
        start = run.expected_start_time
        assert (start.hour, start.minute) == (hour, minute) and start.tzinfo is not None


def test_run_now_completes_registers_a_version_and_never_overlaps(
    served: tuple[Path, Any],
    mlflow_server: str,  # noqa: F811
) -> None:
    project, deployment = served
    # two runs triggered together: the runner submits both, the server gives the one slot to one of them
    triggered = [run_deployment(f"nightly_retrain/{SERVED}", timeout=0) for _ in range(2)]
    with get_client(sync_client=True) as client:

        def all_final() -> list[FlowRun] | None:
            runs = [client.read_flow_run(run.id) for run in triggered]
            return runs if all(run.state and run.state.is_final() for run in runs) else None

        runs = wait_for("triggered runs finished", all_final, RUN_TIMEOUT_S, project.parent / "schedule.log")
    states = sorted(run.state.type.value for run in runs)
    assert states == ["CANCELLED", "COMPLETED"], f"limit 1 with CANCEL_NEW: {[r.state for r in runs]}"
    [done] = [run for run in runs if run.state.is_completed()]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name = load_params(project / "params.yaml").model_name
    versions = client.search_model_versions(f"name = '{name}'")
    mine = [
        v for v in versions if client.get_run(v.run_id).data.tags.get("prefect_flow_run_id") == str(done.id)
    ]
    assert len(mine) == 1 and mine[0].tags["quantflow.state"] == "complete"
    assert len(versions) == 1, "the cancelled run registered nothing"
    summary = run_summary(done.id)
    experiment = client.get_run(mine[0].run_id).info.experiment_id
    assert f"{mlflow_server}/#/experiments/{experiment}/runs/{mine[0].run_id}" in summary
    lock_md5 = lock_md5s(project / "dvc.lock")
    assert all(f"`{path}` {md5[:12]}" in summary for path, md5 in lock_md5.items()) and lock_md5
    assert f"`models:/{name}/{mine[0].version}`" in summary


def run_summary(flow_run_id: Any) -> str:
    """The markdown artifact the run published."""
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nightly-retrain-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return artifact.data


def test_prefect_deploy_registers_prefect_yaml(prefect_server: PrefectServer) -> None:
    env = prefect_server.env() | {"QUANTFLOW_ROOT": str(REPO)}
    for command in (
        ["work-pool", "create", "quantflow-process", "--type", "process", "--overwrite"],
        ["--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "prefect", *command],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"prefect {' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    schedule = load_params(REPO / "params.yaml").schedule
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"nightly_retrain/{schedule.deployment}")
    assert deployment.work_pool_name == "quantflow-process"
    [entry] = deployment.schedules
    assert (entry.schedule.cron, entry.schedule.timezone) == (schedule.cron, schedule.timezone)
    assert deployment.global_concurrency_limit.limit == schedule.concurrency_limit
    assert deployment.concurrency_options.collision_strategy.value == schedule.collision_strategy
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]
