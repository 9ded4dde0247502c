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

from quantflow.registry.model_code import log_pyfunc
from tests.integration.test_register import build_variant, register_legacy, synthetic_split
from tests.mlflow_server import ServerProcess, free_port, mlflow_server, mlflow_server_process  # noqa: F401
from tests.params_helpers import write_params

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


def register_version(
    tracking_uri: str, folder: Path, name: str = MODEL_NAME, experiment_id: str | None = None
) -> str:
    """Log ``folder`` as the register step does (quantflow.registry.model_code) and register it; returns the
    version."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log_pyfunc(run.info.run_id, folder, ["国家经济发展", "质量很好"])
        return str(mlflow.register_model(info.model_uri, name).version)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def registry(
    mlflow_server_process: ServerProcess,  # noqa: F811 (starts while the variant exports)
    variant: Path,
    mlflow_server: str,  # noqa: F811
) -> mlflow.MlflowClient:
    """``MODEL_NAME`` v1 behind @staging, logged as the register step did before models-from-code (the
    service serves such versions too); the alias-move test registers a current one."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = register_legacy(mlflow_server, MODEL_NAME, variant)
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


# Run ``quantflow serve`` under watch: an audit hook notes every attempt to start a process, and at exit the
# facts (which of MLflow, torch, Prefect got imported; what was spawned) go to the JSON file named by argv[1].
WATCHED_SERVE = """
import atexit, json, signal, sys
facts_path, args = sys.argv[1], sys.argv[2:]
SPAWNS = {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system"}
spawned = []
sys.addaudithook(lambda event, _: spawned.append(event) if event in SPAWNS else None)

def facts():
    heavy = sorted({name.split(".")[0] for name in sys.modules} & {"mlflow", "torch", "prefect"})
    with open(facts_path, "w") as out:
        json.dump({"heavy": heavy, "spawned": spawned}, out)

atexit.register(facts)
# uvicorn re-raises the SIGTERM it caught once it has shut down: exit normally then, so atexit runs
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.argv = ["quantflow", *args]
from quantflow.cli import app
app()
"""


def launch(root: Path, serve: dict, env: dict[str, str], facts: Path | None = None) -> Running:
    """``quantflow serve`` with ``serve`` as its params on a free port, root ``root``, output to
    ``root/serve.log``; watched (see ``WATCHED_SERVE``) when ``facts`` is given. Not waited for."""
    write_params(root / "params.yaml", {f"serve.{key}": value for key, value in serve.items()})
    port = free_port()
    args = ["serve", "--params", str(root / "params.yaml"), "--root", str(root), "--port", str(port)]
    prefix = ["-c", WATCHED_SERVE, str(facts)] if facts else ["-m", "quantflow.cli"]
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *prefix, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Running(f"http://127.0.0.1:{port}", proc, log)


def shutdown(running: Running) -> None:
    """SIGTERM (uvicorn shuts down, atexit handlers run), then SIGKILL to its group after 15 s."""
    running.proc.send_signal(signal.SIGTERM)
    try:
        running.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(timeout=15)


@pytest.fixture(scope="session")
def service(registry: mlflow.MlflowClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``quantflow serve`` on the registry (poll every 0.3 s, small limits); stopped by its PID."""
    root = tmp_path_factory.mktemp("serve_root")
    serve = {"model_name": MODEL_NAME, "poll_interval_s": 0.3, "cache_dir": str(root / "cache"), **LIMITS}
    running = launch(root, serve, {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri})
    try:
        wait_ready(running)
        yield running
    finally:
        shutdown(running)
