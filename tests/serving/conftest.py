"""Fixtures of the service tests: a tiny ONNX variant folder, registered twice on a real ``mlflow server``,
and ``quantflow serve`` running against it as a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

from quantflow.registry.pyfunc import ARTIFACT_KEY, QuantflowModel
from tests.integration.test_register import build_variant, synthetic_split
from tests.mlflow_server import ServerProcess, free_port, mlflow_server, mlflow_server_process  # noqa: F401

MODEL_NAME = "quantflow-test-serve"
START_TIMEOUT_S = 60.0
LIMITS = {"max_texts": 8, "max_chars": 300, "max_body_bytes": 20_000}


@dataclass(frozen=True)
class Running:
    url: str
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="session")
def texts() -> pd.DataFrame:
    """200 texts of the tiny model's two classes (the evaluation texts of the parity test)."""
    return synthetic_split(per_class=100)


@pytest.fixture(scope="session")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve_variant") / "int8"
    build_variant(folder, synthetic_split())
    return folder


def register_version(tracking_uri: str, folder: Path) -> str:
    """Log ``folder`` as the register step does (a QuantflowModel pyfunc) and register it; returns the version."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=QuantflowModel(),
                artifacts={ARTIFACT_KEY: str(folder)},
                pip_requirements=[],
                registered_model_name=MODEL_NAME,
            )
    finally:
        mlflow.set_tracking_uri(None)
    return str(info.registered_model_version)


@pytest.fixture(scope="session")
def registry(
    mlflow_server_process: ServerProcess,  # noqa: F811 (starts while the variant exports)
    variant: Path,
    mlflow_server: str,  # noqa: F811
) -> mlflow.MlflowClient:
    """``MODEL_NAME`` v1 behind @staging."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = register_version(mlflow_server, variant)
    client.set_registered_model_alias(MODEL_NAME, "staging", version)
    return client


def wait_ready(running: Running) -> None:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if running.proc.poll() is not None:
            pytest.fail(
                f"quantflow serve exited ({running.proc.returncode}):\n{running.log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{running.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(
        f"quantflow serve not ready after {START_TIMEOUT_S:.0f} s:\n{running.log.read_text()[-3000:]}"
    )


@pytest.fixture(scope="session")
def service(registry: mlflow.MlflowClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``quantflow serve`` on the registry (poll every 0.3 s, small limits); stopped by its PID."""
    root = tmp_path_factory.mktemp("serve_root")
    serve = {"model_name": MODEL_NAME, "poll_interval_s": 0.3, "cache_dir": str(root / "cache"), **LIMITS}
    (root / "params.yaml").write_text(yaml.safe_dump({"serve": serve}))
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantflow.cli", "serve", "--params", str(root / "params.yaml")]
            + ["--root", str(root), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(running)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
