"""A real ``mlflow server`` for integration tests: sqlite backend, proxied local artifacts, 127.0.0.1 only.

Import both fixtures where they are used (``from tests.mlflow_server import mlflow_server,
mlflow_server_process  # noqa: F401``) or list the module in ``pytest_plugins``. ``mlflow_server`` gives the
http URI of a healthy server; ``mlflow_server_process`` only starts it, so slow set-up can overlap the start.
``start_logged``, ``wait_until_healthy`` and ``stop`` serve any server with a ``/health`` route (the infra
tests' ``prefect server`` too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
# no telemetry, no background job runner (huey consumer processes), no AI gateway: nothing reaches out
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_ENABLE_AI_GATEWAY": "false",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(
    folder: Path, port: int, backend_store_uri: str | None = None, proxied: bool = True
) -> list[str]:
    """``mlflow server`` on 127.0.0.1:``port``, artifacts proxied to ``folder/artifacts`` (or, ``proxied=False``,
    written there by the clients themselves: ``--no-serve-artifacts``); the backend store is
    ``folder/mlflow.db`` (sqlite) unless ``backend_store_uri`` names another (a PostgreSQL URL, say)."""
    artifacts = (
        ["--artifacts-destination", str(folder / "artifacts")]
        if proxied
        else ["--no-serve-artifacts", "--default-artifact-root", str(folder / "artifacts")]
    )
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}",
        *artifacts,
    ]


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def is_healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(
    proc: subprocess.Popen,
    uri: str,
    log_path: Path,
    what: str = "mlflow server",
    timeout: float = START_TIMEOUT_S,
) -> float:
    """Seconds until ``uri/health`` answered; fails the session with the log's tail if ``what`` exits first or
    does not answer within ``timeout`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode}; log tail:\n{log_tail(log_path)}")
        if is_healthy(uri):
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"{what} not healthy after {timeout:.0f} s; log tail:\n{log_tail(log_path)}")


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to a process started by :func:`start_logged` (the mlflow CLI forwards it to its uvicorn child);
    SIGKILL to its process group if it is still running after ``timeout`` seconds, and to any child it left.

    The process runs in a session of its own, so its process group id is its PID: nothing else is hit.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning(
                "pid %d ignored SIGTERM for %.0f s: killing its group (%s)", proc.pid, timeout, proc.args
            )
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):  # raised when the whole group is gone: the normal case
        os.killpg(proc.pid, signal.SIGKILL)  # a uvicorn child left behind by a CLI that died first


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen
    uri: str
    log_path: Path


def start_logged(
    command: list[str], log_path: Path, env: dict[str, str], cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``command`` in a session of its own (its process group is its PID, for :func:`stop`), stdout and
    stderr to ``log_path``, no stdin."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def spawn(folder: Path, backend_store_uri: str | None = None, proxied: bool = True) -> ServerProcess:
    """Start (not wait for) ``mlflow server`` in its own session, output to ``folder/server.log``, with no
    ``MLFLOW_TRACKING_*`` of the caller and nothing that reaches out (``QUIET_ENV``). Stop it with :func:`stop`."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    env.update(QUIET_ENV)
    log_path = folder / "server.log"
    proc = start_logged(server_command(folder, port, backend_store_uri, proxied), log_path, env, cwd=folder)
    return ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A started, not yet ready ``mlflow server``: request it before slow set-up (a model export...) so the
    server starts meanwhile, then request ``mlflow_server``. Stopped by its PID when the session ends."""
    server = spawn(tmp_path_factory.mktemp("mlflow_server"))
    try:
        yield server
    finally:
        stop(server.proc)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: ServerProcess) -> str:
    """The http URI of a fresh, healthy ``mlflow server`` (sqlite + local proxied artifacts)."""
    server = mlflow_server_process
    seconds = wait_until_healthy(server.proc, server.uri, server.log_path)
    logger.info(
        "mlflow server pid %d ready on %s after %.1f s of waiting (log: %s)",
        server.proc.pid,
        server.uri,
        seconds,
        server.log_path,
    )
    return server.uri
