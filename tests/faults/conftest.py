"""Session fixtures of the fault suite: one Prefect server for every `quantflow run` process (no temporary API
per run), the trained template project kept as snapshots, and a fresh copy of one for each case.

Snapshots (each restored at the same path: the DVC remote, the DVC cache and the store's artifact locations are
absolute paths inside the project):

- ``night1``: the template after its first night (the embedded sqlite store holds v1 behind both aliases);
- ``trained``: night 1, then a night with batch ``b1`` killed right after its steps (journal phase ``trained``).
  The cases that kill a run after ``trained`` start from it: their run is the one that finishes that night
  (flows/night.py's roll-forward runs the same phases, failpoints included, as the night itself), so each costs
  two short runs instead of a training each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.sandbox import Project, environment, make_template
from tests.mlflow_server import QUIET_ENV, START_TIMEOUT_S, free_port, start_logged, stop, wait_until_healthy


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A `prefect server` of the session: (API URL, PREFECT_HOME)."""
    folder = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = environment(api, folder / "home") | QUIET_ENV | {"PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_logged(command, folder / "server.log", env)
    try:
        wait_until_healthy(proc, api, folder / "server.log", "prefect server", START_TIMEOUT_S)
        yield api, folder / "home"
    finally:
        stop(proc)


def copy(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


@pytest.fixture(scope="session")
def night1(tmp_path_factory: pytest.TempPathFactory, prefect_api: tuple[str, Path]) -> tuple[Path, Path]:
    """(the project path every case uses, the snapshot of the template after night 1)."""
    base = tmp_path_factory.mktemp("faults")
    root = make_template(base / "project")
    first = Project(root, environment(*prefect_api)).run()
    assert first.returncode == 0, first.output
    copy(root, base / "night1")
    return root, base / "night1"


@pytest.fixture(scope="session")
def trained(night1: tuple[Path, Path], prefect_api: tuple[str, Path]) -> Path:
    """The snapshot of night 1, then a night with batch b1 killed right after its steps."""
    root, snapshot = night1
    copy(snapshot, root)
    project = Project(root, environment(*prefect_api))
    project.drop_batch()
    killed = project.run(failpoints="night:after-trained=kill")
    assert killed.returncode == -signal.SIGKILL, killed.output
    copy(root, snapshot.with_name("trained"))
    return snapshot.with_name("trained")


@pytest.fixture
def restore(
    night1: tuple[Path, Path], prefect_api: tuple[str, Path], request: pytest.FixtureRequest
) -> Callable[[str], Project]:
    """``restore("night1")`` or ``restore("trained")``: that snapshot at the project's path, as a Project."""
    root, first = night1

    def restore_snapshot(name: str) -> Project:
        snapshot = first if name == "night1" else request.getfixturevalue(name)
        copy(snapshot, root)
        baseline = {n["night_id"] for n in Project(first, {}).nights()}
        return Project(root, environment(*prefect_api), baseline)

    return restore_snapshot


@pytest.fixture
def project(restore: Callable[[str], Project]) -> Project:
    """The template after night 1."""
    return restore("night1")
