"""One run at a time in a project folder: a workspace lock, and the folder that holds the run's state.

Two `quantflow run` (or a scheduled run, `simulate-nights`, `reproduce`) in the same folder would write the same
DVC outputs, dvc.lock, git index and incoming folders and register each other's models. The lock is an
``fcntl.flock`` on ``.quantflow/run.lock``: the kernel releases it when its process dies, however it dies
(kill -9 included), so a lock of a dead process is taken over without any staleness rule. The file also holds
the holder's pid, host, command and start time, so the message of a refused run names the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantflow.core.errors import QuantflowError

STATE_DIR = ".quantflow"  # per-project run state (git-ignored): the lock, the journal of the current night
LOCK_FILE = "run.lock"


class WorkspaceBusy(QuantflowError):
    """Another run holds the project folder's lock."""


def state_dir(root: Path) -> Path:
    folder = root / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (no details recorded)"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started_at')} "
        f"({holder.get('command')})"
    )


@contextmanager
def workspace_lock(root: Path, command: str, wait_s: float = 0.0) -> Iterator[dict[str, Any]]:
    """Hold the project's run lock for the block; ``wait_s`` > 0 waits that long for a running holder.

    Raises :class:`WorkspaceBusy` naming the holder when the lock stays taken. Re-entrant within one process
    (a flow called from a command that already holds the lock): the inner call is a no-op.
    """
    path = state_dir(root.resolve()) / LOCK_FILE
    if _HELD.get(path):
        yield _HELD[path]
        return
    handle = path.open("a+", encoding="utf-8")
    try:
        _acquire(handle, path, wait_s)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "argv": " ".join(sys.argv[:4]),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        _HELD[path] = info
        try:
            yield info
        finally:
            _HELD.pop(path, None)
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


_HELD: dict[Path, dict[str, Any]] = {}


def _acquire(handle: Any, path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = describe_holder(_holder(path))
                raise WorkspaceBusy(
                    f"{path.parent.parent}: another quantflow run holds the project ({holder}); wait for it "
                    f"to finish or stop it. The lock ({path}) is released when that process ends."
                ) from None
            time.sleep(0.2)
