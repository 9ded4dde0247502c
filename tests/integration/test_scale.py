"""The scaling study, shrunk: 2 sizes on a real 2-process Dask LocalCluster, a real `prefect server` started by
the command's own helper, a real `mlflow server`; checks the runs, their metrics, the plots and `dvc plots`."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.scale import ScaleResult, drain_api_workers, run_scale, start_prefect_server, stop_server
from tests.integration.test_pipeline import dvc, make_project
from tests.mlflow_server import ServerProcess, mlflow_server_process, wait_until_healthy  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long: a sweep on Dask

SWEEP = {
    "scale.grid.embed_dim": [8, 24],
    "scale.grid.num_filters": [8],
    "scale.experiment": "scale-test",
    "compress.calibration_samples": 64,
    "compress.parity_samples": 16,
    "compress.latency_texts": 10,
    "train.epochs": 1,
    "compress.throughput_texts": 64,
}
METRICS = {
    "accuracy_fp32",
    "macro_f1_fp32",
    "accuracy_int8",
    "params",
    "latency_p50_ms_fp32",
    "latency_p50_ms_int8",
    "size_bytes_fp32",
    "size_bytes_int8",
}


@pytest.fixture(scope="module")
def sweep(
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_server_process: ServerProcess,  # noqa: F811
) -> Iterator[tuple[Path, ScaleResult, str]]:
    """The project is built while both servers start: `prefect server start` by the command's own helper (what
    `quantflow scale` does without PREFECT_API_URL), on a database of this test's own, and `mlflow server`."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    folder = tmp_path_factory.mktemp("scale")
    os.environ["PREFECT_HOME"] = str(folder / "prefect-home")
    server = mlflow_server_process
    with ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_prefect_server, folder / "prefect-server.log")
        project = make_project(folder / "project")
        wait_until_healthy(server.proc, server.uri, server.log_path)
        prefect_server, api_url = starting.result()
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield project, run_scale(project, overrides=SWEEP, workers=2), server.uri
    finally:
        drain_api_workers()
        stop_server(prefect_server)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_each_size_ran_on_a_dask_worker_with_its_metrics(sweep: tuple[Path, ScaleResult, str]) -> None:
    _, result, _ = sweep
    rows = sorted(result.rows, key=lambda r: r["params"])
    assert [r["size"] for r in rows] == ["textcnn-e8-f8", "textcnn-e24-f8"]
    assert rows[0]["params"] < rows[1]["params"]
    pids = {r["worker_pid"] for r in rows}
    assert os.getpid() not in pids and len(pids) == 2, pids  # two worker processes, not the flow's
    for r in rows:
        assert r["accuracy_fp32"] >= 0.6 and abs(r["accuracy_int8"] - r["accuracy_fp32"]) <= 0.05
        assert r["size_bytes_int8"] < r["size_bytes_fp32"]
        assert r["latency_p50_ms_fp32"] > 0 and r["latency_p50_ms_int8"] > 0


def test_mlflow_parent_run_with_a_child_per_size_and_the_plots(sweep: tuple[Path, ScaleResult, str]) -> None:
    _, result, uri = sweep
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(result.parent_run_id)
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(r["size"] for r in result.rows)
    for child in children:
        row = next(r for r in result.rows if r["size"] == child.info.run_name)
        assert set(child.data.metrics) >= METRICS
        assert child.data.metrics["params"] == row["params"]
        assert child.data.params["embed_dim"] == str(row["embed_dim"])
        assert child.info.status == "FINISHED"
    assert parent.data.params["workers"] == "2" and parent.data.metrics["sweep_seconds"] > 0
    assert "mlflow.parentRunId" not in parent.data.tags
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "scale")}
    assert logged == {"scale/scale.csv", "scale/accuracy_vs_params.png", "scale/latency_vs_params.png"}


def test_table_and_dvc_plots(sweep: tuple[Path, ScaleResult, str]) -> None:
    project, result, _ = sweep
    with (project / "reports/scale/scale.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["params"]) for r in table] == sorted(r["params"] for r in result.rows)
    for name in ("accuracy_vs_params.png", "latency_vs_params.png"):
        assert (project / "reports/scale" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = json.loads(
        dvc(["plots", "show", "--json"], project)
    )  # the pipeline's own plots are not built here
    assert {"scale_accuracy", "scale_latency"} <= set(
        shown["data"]
    )  # the PNGs are outputs, not declared plots
    points = shown["data"]["scale_accuracy"][0]["content"]["data"]["values"]
    assert {p["size"] for p in points} == {r["size"] for r in result.rows}
    assert not [e for e in shown.get("errors", []) if "scale" in e["source"]], shown["errors"]
