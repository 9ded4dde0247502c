"""Named failpoints: places where the fault suite can kill, stall or fail a run on purpose.

A failpoint costs one dictionary lookup when ``QUANTFLOW_FAILPOINTS`` is unset (always, outside tests). The
fault suite (``make test-faults``) sets it in the environment of a real ``quantflow run`` subprocess, e.g.
``QUANTFLOW_FAILPOINTS="register:after-version=kill"``, to stop the night exactly between two of its writes, as
failpoint libraries do in storage engines (TiKV's fail-rs, FoundationDB's buggify). Actions:

- ``kill``: SIGKILL this process (nothing is flushed, no handler runs: a power cut as far as the run can tell);
- ``raise``: raise :class:`FailpointError`, a plain crash with a traceback;
- ``wait:<file>``: write ``<file>.waiting`` (the run got there), then block until ``<file>`` exists (lets a test
  stop a server at exactly that point), at most 120 s.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

ENV = "QUANTFLOW_FAILPOINTS"
WAIT_LIMIT_S = 120.0

logger = logging.getLogger(__name__)


class FailpointError(RuntimeError):
    """Raised by a failpoint set to ``raise``: stands for any unexpected crash."""


def _armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {name.strip(): action.strip() for name, action in pairs}


def failpoint(name: str) -> None:
    """Do what ``QUANTFLOW_FAILPOINTS`` says for ``name``; nothing when it does not name it."""
    if ENV not in os.environ:
        return
    action = _armed().get(name)
    if action is None:
        return
    logger.warning("failpoint %s: %s", name, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(f"failpoint {name}")
    elif action.startswith("wait:"):
        target, deadline = Path(action.removeprefix("wait:")), time.monotonic() + WAIT_LIMIT_S
        target.with_name(target.name + ".waiting").write_text(f"{name} {os.getpid()}\n", encoding="utf-8")
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for {name} (kill, raise or wait:<file>)")
