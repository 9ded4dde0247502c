"""Every server of the README has its own default port, written once (quantflow/core/ports.py; params.yaml
``serve.port`` for the service), and a sample request beside its command."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from flows.runinfo import mlflow_run_link
from quantflow import cli
from quantflow.core.ports import MINIO, MLFLOW_MODELS, MLFLOW_UI, PREFECT
from tests.params_helpers import shipped_params
from tests.readme import blocks_starting, port_of, requests_to

REPO = Path(__file__).resolve().parents[2]
SERVICE = shipped_params().serve.port
# a README command that starts a server: (the port it must use, the port it takes when none is passed)
SERVERS = {
    r"make ui\b": (MLFLOW_UI, MLFLOW_UI),
    r"quantflow ui\b": (MLFLOW_UI, MLFLOW_UI),
    r"mlflow models serve\b": (MLFLOW_MODELS, 5000),  # MLflow's own default: the README must pass -p
    r"prefect server start\b": (PREFECT, 4200),  # Prefect's own default
    r"quantflow serve\b": (SERVICE, SERVICE),
}


def test_no_two_servers_share_a_default_port() -> None:
    ports = [MLFLOW_UI, MLFLOW_MODELS, PREFECT, MINIO, SERVICE]
    assert len(set(ports)) == len(ports), ports


@pytest.mark.parametrize("command", list(SERVERS))
def test_each_server_command_uses_its_port_and_has_a_sample_request(command: str) -> None:
    port, default = SERVERS[command]
    blocks = blocks_starting(command)
    if command != r"quantflow ui\b":  # `make ui` is the README's spelling of it
        assert blocks, f"the README never runs {command}"
    for block in blocks:
        for line in (line for line in block if re.match(command, line)):
            assert port_of(line, default) == port, line
        assert requests_to(block, port), f"no curl to 127.0.0.1:{port} beside {command}:\n" + "\n".join(block)


def test_the_mlflow_ui_port_is_the_one_everything_names() -> None:
    assert inspect.signature(cli.ui).parameters["port"].default == MLFLOW_UI
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    [ui_help] = [line for line in makefile.splitlines() if line.startswith("ui:")]
    assert f"http://127.0.0.1:{MLFLOW_UI}" in ui_help
    assert f"http://127.0.0.1:{MLFLOW_UI}/#/experiments/1/runs/r" in mlflow_run_link(
        "sqlite:///x.db", "1", "r"
    )


def test_the_compose_stack_publishes_the_same_ports() -> None:
    services = yaml.safe_load((REPO / "infra" / "docker-compose.yml").read_text(encoding="utf-8"))["services"]

    def published(name: str) -> set[int]:
        return {int(str(p).split(":")[0]) for p in services[name].get("ports", [])}

    assert MLFLOW_UI in published("mlflow") and PREFECT in published("prefect-server")
    assert MINIO in published("minio") and SERVICE in published("quantflow")
