"""The nightly deployment, three ways that must agree: ``quantflow schedule``'s RunnerDeployment,
infra/prefect.yaml (read by Prefect's own ``prefect deploy`` loader) and params.yaml's ``schedule:``."""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import pytest
from prefect.cli.deploy._config import _load_deploy_configs_and_actions
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.flows import load_flow_from_entrypoint
from rich.console import Console

from flows.logs import PREFECT_ENV
from flows.nightly import nightly_retrain
from flows.schedule import build_deployment
from quantflow.core.params import ParamsError, load_params, parse_params
from tests.params_helpers import shipped_params

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "infra" / "prefect.yaml"


@pytest.fixture(scope="module")
def yaml_deployment() -> dict[str, Any]:
    out = io.StringIO()
    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(file=out))
    assert "Skipping" not in out.getvalue(), out.getvalue()
    assert [c["name"] for c in configs] == [load_params(REPO / "params.yaml").schedule.deployment]
    assert actions["pull"], "the worker needs a pull step that enters the project checkout"
    return configs[0]


def test_prefect_yaml_entrypoint_is_the_nightly_flow(yaml_deployment: dict[str, Any]) -> None:
    flow = load_flow_from_entrypoint(str(REPO / yaml_deployment["entrypoint"]))
    assert flow.name == nightly_retrain.name
    signature = inspect.signature(nightly_retrain.fn).parameters
    assert set(yaml_deployment["parameters"]) <= set(signature)
    assert (
        REPO / yaml_deployment["parameters"]["root"] / yaml_deployment["parameters"]["params_file"]
    ).is_file()


def test_prefect_yaml_matches_params_schedule(yaml_deployment: dict[str, Any]) -> None:
    schedule = load_params(REPO / "params.yaml").schedule
    [entry] = yaml_deployment["schedules"]
    assert (entry["cron"], entry["timezone"]) == (schedule.cron, schedule.timezone)
    limit = yaml_deployment["concurrency_limit"]
    assert (limit["limit"], limit["collision_strategy"]) == (
        schedule.concurrency_limit,
        schedule.collision_strategy,
    )


def test_served_deployment_matches_prefect_yaml(yaml_deployment: dict[str, Any], tmp_path: Path) -> None:
    schedule = load_params(REPO / "params.yaml").schedule
    deployment = build_deployment(schedule, tmp_path)
    assert deployment.name == yaml_deployment["name"]
    [entry] = deployment.schedules
    assert (entry.schedule.cron, entry.schedule.timezone) == (
        yaml_deployment["schedules"][0]["cron"],
        yaml_deployment["schedules"][0]["timezone"],
    )
    assert deployment.concurrency_limit == schedule.concurrency_limit
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert deployment.parameters == {"root": str(tmp_path.resolve()), "params_file": "params.yaml"}
    assert set(deployment.parameters) <= set(deployment._parameter_openapi_schema.properties)
    module, _, name = deployment.entrypoint.rpartition(".")
    assert (module, name) == ("flows.nightly", "nightly_retrain")


def test_overrides_travel_with_the_runs(tmp_path: Path) -> None:
    params = load_params(
        REPO / "params.yaml", {"schedule.cron": "30 1 * * 1-5", "schedule.timezone": "Asia/Shanghai"}
    )
    deployment = build_deployment(params.schedule, tmp_path, overrides={"train.epochs": 1})
    [entry] = deployment.schedules
    assert (entry.schedule.cron, entry.schedule.timezone) == ("30 1 * * 1-5", "Asia/Shanghai")
    assert deployment.parameters["overrides"] == {"train.epochs": 1}


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"cron": "every night"}, "schedule.cron"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone"),
        ({"notify_block": "slack"}, "schedule.notify_block"),
        ({"collision_strategy": "DROP"}, "schedule.collision_strategy"),
        ({"concurrency_limit": 0}, "schedule.concurrency_limit"),
    ],
)
def test_bad_schedule_params_name_the_key(section: dict[str, Any], fragment: str) -> None:
    data = shipped_params().model_dump(mode="json", by_alias=True)
    data["schedule"] |= section
    with pytest.raises(ParamsError, match=rf"{fragment}\b.*\(got: ") as caught:
        parse_params(data)
    assert "missing key" not in str(caught.value)  # the one bad value is named, nothing else


def test_prefect_yaml_runs_send_the_step_loggers(yaml_deployment: dict[str, Any]) -> None:
    """A worker's flow runs get Prefect's extra loggers from the deployment, as `quantflow` processes get them
    from the CLI: quantflow's own lines in the run's logs."""
    assert yaml_deployment["work_pool"]["job_variables"]["env"] == PREFECT_ENV
