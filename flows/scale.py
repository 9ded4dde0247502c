"""The scaling study: how accuracy, size and latency grow with model size, one Prefect task per size on Dask.

The data is prepared once (ingest → validate → split → preprocess, the pipeline's own tasks, in the flow's
process) under ``scale.work_dir``, so the project's DVC-tracked outputs are left alone. Then every size of
``scale.grid`` is submitted to a ``DaskTaskRunner``: a ``LocalCluster`` of ``workers`` processes with one
thread each by default, or the scheduler at ``dask_address``. Results: ``scale.reports_dir/scale.csv`` (DVC
plots), two PNG plots and an MLflow parent run with one child run per size.

Prefect API. A task on a Dask worker process reports its state to the Prefect API named in the settings the
flow serialises to it (prefect-dask 0.3.7 sends the flow's settings context with every task). Without
``PREFECT_API_URL`` those settings name no API, so each worker process would start a temporary API server of
its own (prefect 3.9.1's ephemeral mode, a uvicorn subprocess per process, on the same database), and a worker
on another machine could not reach the flow's at all. Measured here (2 workers, load ~7 on 2 cores): the flow
and both workers each started a temporary server, the workers' timed out after the default 20 s and failed
the flow, and they outlived their killed workers. :func:`prefect_api` therefore starts one
``prefect server start`` on 127.0.0.1 for the run (stopped after it) unless ``PREFECT_API_URL`` is set.
"""

from __future__ import annotations

import dataclasses
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.sweep import grid_sizes, int8_variant, log_sweep, train_size_task, write_reports
from quantflow.core.errors import QuantflowError
from quantflow.core.layout import Layout
from quantflow.core.params import Params, load_params
from tasks.stages import stage_args, step_function

logger = logging.getLogger(__name__)

PREPARE = ("ingest", "validate", "split", "preprocess")
SERVER_START_TIMEOUT_S = 120.0


class ScaleError(QuantflowError):
    """The sweep could not run: a size failed, or the Prefect API or the Dask cluster is unreachable."""


@dataclass
class ScaleResult:
    """The study's table (one row per size), its files, the MLflow parent run and the sweep's wall time."""

    rows: list[dict[str, Any]]
    files: list[Path]
    parent_run_id: str
    seconds: float  # the whole flow: data preparation, every size, reports and MLflow
    prepare_seconds: float  # ingest → preprocess, once
    workers: str  # the LocalCluster's process count, or the scheduler address


# --- the Prefect API for process workers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_prefect_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on 127.0.0.1 and a free port, without UI or background services."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            + ["--no-services", "--no-ui", "--analytics-off"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    started = time.monotonic()
    while not _healthy(api_url):
        if proc.poll() is not None or time.monotonic() - started > SERVER_START_TIMEOUT_S:
            stop_server(proc)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ScaleError(
                f"prefect server start did not become healthy on {api_url}; its log ({log_path}):\n{tail}"
            )
        time.sleep(0.2)
    logger.info(
        "scale: Prefect server pid %d on %s (%.1f s to start)", proc.pid, api_url, time.monotonic() - started
    )
    return proc, api_url


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), SIGKILL if it hangs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@contextmanager
def prefect_api(log_dir: Path) -> Iterator[str]:
    """The API every Dask worker talks to: ``PREFECT_API_URL`` when set, else a server started for this run.

    The URL is also exported to the environment, so worker processes the cluster spawns inherit it.
    """
    configured = PREFECT_API_URL.value()
    if configured:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = configured
        try:
            yield configured
        finally:
            _restore_env("PREFECT_API_URL", previous)
        return
    proc, api_url = start_prefect_server(log_dir / "prefect-server.log")
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        _restore_env("PREFECT_API_URL", previous)
        drain_api_workers()
        stop_server(proc)


def drain_api_workers(timeout: float = 5) -> None:
    """Send the run's last log lines and events to the API before its server stops.

    An events worker left behind for a stopped server makes a later ``EventsWorker.drain_all()`` (every
    ``prefect_test_harness`` exit calls it, without a timeout) wait forever on the dead address.
    """
    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


# --- the flow -----------------------------------------------------------------------------------------------


def task_runner(workers: int, dask_address: str | None) -> Any:
    """A LocalCluster of ``workers`` processes x 1 thread (torch is told 1 thread per task too), or a
    connection to an existing scheduler."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",  # a free port: 8787 may be taken
        }
    )


def scale_layout(params: Params, root: Path) -> Layout:
    """The pipeline's layout moved under ``scale.work_dir`` (its own data and models); expectations, user data
    and the accepted nightly batches still come from the project, so the study sees the nightly's dataset."""
    project = Layout.of(params, root)
    moved = Layout.of(params, project.scale_dir)
    return dataclasses.replace(
        moved, root=project.root, expectations_dir=project.expectations_dir, accepted_dir=project.accepted_dir
    )


def prepare_data(params: Params, layout: Layout) -> None:
    """ingest → validate → split → preprocess once, in the flow's process: every size shares the split."""
    for name in PREPARE:
        step_function(name, as_task=True)(*stage_args(name, params, layout))


@flow(name="scale_study", log_prints=False)
def scale_study(
    root: str = ".",
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    workers: str = "unknown",
) -> ScaleResult:
    """Train, compress and score every size of scale.grid in parallel; table, plots and MLflow runs."""
    started = time.perf_counter()
    project = Path(root).resolve()
    params = load_params(project / params_file, overrides)
    layout = scale_layout(params, project)
    home = Layout.of(params, project)
    prepare_data(params, layout)
    prepared = time.perf_counter()
    sizes = grid_sizes(params.scale)
    logger.info("scale: %d sizes: %s", len(sizes), ", ".join(s.name for s in sizes))
    sizes_dir = home.scale_dir / "sizes"
    futures = [train_size_task.submit(params, size, layout, sizes_dir) for size in sizes]
    rows = [future.result() for future in futures]
    files = write_reports(rows, home, int8_variant(params.scale))
    seconds = time.perf_counter() - started
    timing = {"sweep_seconds": round(seconds, 2), "prepare_seconds": round(prepared - started, 2)}
    tags = {
        "params_sha": params.digest(),
        "prefect_flow_run_id": str(flow_run.id or "none"),
        "quantflow.study": "scale",
    }
    parent = log_sweep(project, params, rows, files, {**timing, "workers": workers}, tags)
    return ScaleResult(rows, files, parent, seconds, timing["prepare_seconds"], workers)


def run_scale(
    root: Path,
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
) -> ScaleResult:
    """Run the study on a LocalCluster (``workers``, default scale.workers) or the cluster at ``dask_address``,
    with a Prefect API every worker can reach."""
    project = root.resolve()
    params = load_params(project / params_file, overrides)
    n = workers or params.scale.workers
    runner = task_runner(n, dask_address)
    with prefect_api(Layout.of(params, project).scale_dir):
        return scale_study.with_options(task_runner=runner)(
            str(project), params_file, overrides, dask_address or str(n)
        )
