"""The README's sample requests work: each server its commands start (the MLflow UI, MLflow's model server, the
quantflow service, a Prefect API) runs here on a free port, on a project with a registered model in the embedded
store, and the README's own ``curl`` lines (port swapped) get the answers the README promises."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

import tests.integration.test_register as fake
from quantflow.core.ports import MLFLOW_MODELS, MLFLOW_UI, PREFECT
from tasks.register import register
from tests.mlflow_server import QUIET_ENV, free_port, start_logged, stop, wait_until_healthy
from tests.params_helpers import shipped_params
from tests.readme import blocks_starting, requests_to

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = shipped_params().model_name  # quantflow-news_vs_comment: the name the README's commands use


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder as `make run` leaves it for the servers: params.yaml, the embedded store
    (mlflow.db, mlartifacts/) holding v1 of the README's model behind @staging."""
    root = tmp_path_factory.mktemp("readme-project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    split = fake.synthetic_split()
    fake.build_variant(root / "artifacts" / "variants" / "int8", split)
    fake.write_reports(root / "reports", 0.988)  # 0.2 points behind fp32: within compress.max_drop_pp
    (root / "data" / "split").mkdir(parents=True)
    split.to_parquet(root / "data" / "split" / "test.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert register(shipped_params(), root).promoted
    return root


def server_env() -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the embedded store of the project, as after `make run`
    return env


@pytest.fixture
def serving(project: Path, tmp_path: Path) -> Iterator[Any]:
    """Start a README server command (``{port}``: a free one) in the project, wait for its ``/health``; stopped
    by its PID."""
    started = []

    def start(command: list[str]) -> int:
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in command]
        log = tmp_path / f"server-{len(started)}.log"
        proc = start_logged(command, log, server_env(), cwd=project)
        started.append(proc)
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", log, " ".join(command[2:5]), timeout=180)
        return port

    yield start
    for proc in started:
        stop(proc)


def readme_requests(command: str, default_port: int) -> list[str]:
    """The README's curl lines beside ``command`` that call its default port."""
    lines = [line for block in blocks_starting(command) for line in requests_to(block, default_port)]
    assert lines, command
    return lines


def curl(line: str, default_port: int, port: int) -> Any:
    """Run a README curl line against ``port``; its JSON answer."""
    command = (
        line.replace(f"127.0.0.1:{default_port}", f"127.0.0.1:{port}") + " --fail-with-body --max-time 60"
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def test_the_mlflow_ui_request_shows_the_model_and_its_aliases(serving: Any) -> None:
    port = serving([sys.executable, "-m", "quantflow.cli", "ui", "--root", ".", "--port", "{port}"])
    [line] = readme_requests(r"make ui\b", MLFLOW_UI)
    model = curl(line, MLFLOW_UI, port)["registered_model"]
    assert model["name"] == MODEL and {"alias": "staging", "version": "1"} in model["aliases"]


def test_the_mlflow_models_serve_request_predicts(serving: Any) -> None:
    [[command]] = [
        [line for line in block if line.startswith("mlflow models serve")]
        for block in blocks_starting(r"mlflow models serve\b")
    ]
    argv = command.split("#")[0].replace('"', "").split()
    argv[argv.index("-p") + 1] = "{port}"
    port = serving([sys.executable, "-m", *argv])
    [line] = readme_requests(r"mlflow models serve\b", MLFLOW_MODELS)
    [prediction] = curl(line, MLFLOW_MODELS, port)["predictions"]
    assert prediction["label"] in fake.LABELS and sum(prediction["probabilities"].values()) == pytest.approx(
        1
    )


def test_the_quantflow_serve_requests_answer(serving: Any) -> None:
    default = shipped_params().serve.port
    port = serving([sys.executable, "-m", "quantflow.cli", "serve", "--port", "{port}"])
    wait_ready(f"http://127.0.0.1:{port}")
    lines = readme_requests(r"quantflow serve\b", default)  # the Serve and Production feedback sections
    for line in lines:
        answer = curl(line, default, port)
        if "/explain" in line:
            assert answer["tokens"], line
        else:
            texts = json.loads(line.split("-d ", 1)[1].strip().split("'")[1])["texts"]
            assert answer["model"]["name"] == MODEL and len(answer["predictions"]) == len(texts), line
    assert any("/explain" in line for line in lines) and any("/predict" in line for line in lines)


def wait_ready(uri: str, timeout: float = 60) -> None:
    """Until ``/ready`` answers 200: the service has loaded the version behind @staging."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{uri}/ready", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"{uri}/ready: no model loaded after {timeout:.0f} s")


def test_the_prefect_requests_answer() -> None:
    with prefect_test_harness(server_startup_timeout=120):
        api = PREFECT_API_URL.value()  # http://127.0.0.1:<port>/api
        port = int(api.rsplit(":", 1)[1].split("/")[0])
        health, logs = readme_requests(r"prefect server start\b", PREFECT)
        assert curl(health, PREFECT, port) is True
        assert isinstance(curl(logs, PREFECT, port), list)
