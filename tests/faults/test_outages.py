"""The tracking store fails a night: a real `mlflow server` stopped before and during register, and a corrupted
embedded store (garbage written over mlflow.db).

An outage ends the run Failed (exit 2) with a message naming the store and saying that the next run registers
the trained model first, and without a traceback on the terminal; the next run, with the server back, does it.
A broken store is found before anything is trained or committed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantflow.core.journal import read_journal
from tests.faults.sandbox import Project, assert_consistent, git_head, wait_for_file
from tests.mlflow_server import QUIET_ENV, free_port, server_command, start_logged, stop, wait_until_healthy

pytestmark = pytest.mark.faults


@dataclass
class Server:
    """An `mlflow server` that a test stops and starts again on the same port and store."""

    folder: Path
    port: int
    proc: object = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")} | QUIET_ENV
        log = self.folder / "server.log"
        self.proc = start_logged(server_command(self.folder, self.port), log, env, cwd=self.folder)
        wait_until_healthy(self.proc, self.uri, log)

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path, free_port())
    running.start()
    try:
        yield running
    finally:
        running.stop()


def outage_at(project: Project, server: Server, failpoint: str) -> str:
    """Run the night with its batch until ``failpoint``, stop the server there, let the run go on; it must fail
    clearly. Returns the run's stderr."""
    project.env["MLFLOW_TRACKING_URI"] = server.uri
    project.drop_batch()
    gate = project.root.parent / f"go-{failpoint.replace(':', '-')}"
    proc = project.start(failpoints=f"{failpoint}=wait:{gate}")
    wait_for_file(gate.with_name(gate.name + ".waiting"), proc)
    server.stop()
    gate.touch()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stdout + stderr
    assert f"MLflow at {server.uri} did not answer" in stderr, stderr
    assert "finishes it first: it versions, commits and registers this model once" in stderr
    assert "Traceback" not in stdout + stderr  # the traceback is in the flow run's log, not on the terminal
    return stderr


@pytest.mark.parametrize("failpoint", ["night:after-committed", "register:after-run"])
def test_a_registry_outage_fails_the_night_and_the_next_run_registers_its_model(
    project: Project, server: Server, failpoint: str
) -> None:
    outage_at(project, server, failpoint)
    night = read_journal(project.root)
    assert night is not None and night.phase == "committed"
    assert (project.root / "data" / "incoming" / "b1.csv").is_file()  # not moved: its model is not registered

    server.start()
    after = project.run()
    assert after.returncode == 0, after.output
    assert f"night {night.night_id} stopped after 'committed': rolled forward" in after.stdout
    assert_consistent(project)
    (version,) = project.versions()  # the server's registry: the outage night's model, once
    assert version.tags["quantflow.night"] == night.night_id and str(version.version) == "1"


def test_a_corrupted_store_is_named_before_anything_is_trained(project: Project) -> None:
    store = project.root / "mlflow.db"
    backup = project.root.parent / "mlflow.db.backup"
    shutil.copy(store, backup)
    head, lock = git_head(project.root), (project.root / "dvc.lock").read_bytes()
    with store.open("r+b") as handle:
        handle.write(os.urandom(4096))
    project.drop_batch()
    broken = project.run()
    assert broken.returncode == 2, broken.output
    assert f"error: {store}: the MLflow store (sqlite) cannot be used" in broken.stderr, broken.stderr
    assert "nothing was trained or committed" in broken.stderr and "Traceback" not in broken.output
    assert (git_head(project.root), (project.root / "dvc.lock").read_bytes()) == (head, lock)
    assert not list((project.root / "data" / "accepted").rglob("*.parquet"))
    assert read_journal(project.root) is None  # refused before the night began

    shutil.copy(backup, store)  # what the message says to do
    after = project.run()
    assert after.returncode == 0, after.output
    assert "| b1 | accepted |" in after.stdout
    assert_consistent(project)
