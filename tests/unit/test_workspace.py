"""The workspace lock, the night journal and failpoints: the pieces a night's transaction is built from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantflow.core.failpoints import FailpointError, failpoint
from quantflow.core.journal import PHASES, JournalError, close, journal_path, new_night, read_journal, record
from quantflow.core.workspace import LOCK_FILE, STATE_DIR, WorkspaceBusy, workspace_lock

HOLDER = """
import sys, time
from pathlib import Path
from quantflow.core.workspace import workspace_lock
with workspace_lock(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with (
            pytest.raises(WorkspaceBusy, match=rf"pid {holder.pid} on .* \(test holder\)"),
            workspace_lock(tmp_path, "second"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with workspace_lock(tmp_path, "after the kill") as info:
        assert info["pid"] == os.getpid()
    assert (tmp_path / STATE_DIR / LOCK_FILE).read_text() == ""  # released: no holder recorded


def test_waiting_gets_the_lock_once_the_holder_ends(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    with workspace_lock(tmp_path, "patient", wait_s=30):
        assert time.monotonic() - started >= 0.9
    holder.wait()


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with workspace_lock(tmp_path, "outer") as outer, workspace_lock(tmp_path, "inner") as inner:
        assert inner is outer


def test_the_journal_records_phases_and_is_archived_when_closed(tmp_path: Path) -> None:
    night = new_night("params.yaml", {"train.epochs": 1})
    for phase in PHASES[1:4]:
        record(tmp_path, night, phase, f"did {phase}")
    again = read_journal(tmp_path)
    assert again is not None and again.phase == "versioned" and again.overrides == {"train.epochs": 1}
    assert again.reached("trained") and not again.reached("committed")
    archived = close(tmp_path, again, "registered")
    assert read_journal(tmp_path) is None and archived.is_file()
    assert not list(journal_path(tmp_path).parent.glob("*.tmp-*"))


def test_an_unreadable_journal_names_its_file(tmp_path: Path) -> None:
    journal_path(tmp_path).write_text("{not json", encoding="utf-8")
    with pytest.raises(JournalError, match=r"journal.json: the night journal is unreadable"):
        read_journal(tmp_path)


def test_failpoints_act_only_when_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failpoint("anything")  # unset: nothing happens
    monkeypatch.setenv("QUANTFLOW_FAILPOINTS", "a=raise,b=wait:" + str(tmp_path / "go"))
    failpoint("c")
    with pytest.raises(FailpointError, match="failpoint a"):
        failpoint("a")
    (tmp_path / "go").touch()
    failpoint("b")  # returns at once: the file exists


def test_a_kill_failpoint_kills_the_process() -> None:
    probe = "from quantflow.core.failpoints import failpoint; failpoint('x'); print('survived')"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "QUANTFLOW_FAILPOINTS": "x=kill"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout


def quantflow_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "quantflow"), "run", "--root", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=root)


def test_quantflow_run_refuses_a_busy_project_with_exit_3(tmp_path: Path) -> None:
    from tests.params_helpers import write_params

    write_params(tmp_path / "params.yaml")
    holder = start_holder(tmp_path)
    try:
        done = quantflow_run(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"pid {holder.pid} on " in done.stderr and "(test holder)" in done.stderr
    assert "Traceback" not in done.stderr


def test_quantflow_run_checks_params_before_the_prefect_api_starts(tmp_path: Path) -> None:
    from tests.params_helpers import write_params

    write_params(tmp_path / "params.yaml")
    done = quantflow_run(tmp_path, "--set", "train.epochs=many")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "train.epochs" in done.stderr and "Traceback" not in done.stderr
    assert "temporary server" not in done.stdout + done.stderr  # no Prefect API was started to say so
    assert not (tmp_path / STATE_DIR / LOCK_FILE).exists()  # refused before the workspace was locked
