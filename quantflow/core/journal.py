"""The night's journal: what a run has done so far, so the next run can finish it or undo it.

A night writes to four stores that share no transaction: the project folder (DVC outputs, data/accepted,
data/incoming), the DVC cache and remote, git, and the MLflow registry. The journal
(``.quantflow/journal.json``, beside the workspace lock) records each completed phase *after* its writes, and
is replaced atomically (write to a temporary file, fsync, rename). A run that finds an unfinished journal (the
previous night was killed, or failed after training) finishes or rolls it back before anything else, whether
or not it retrains. Finished journals are kept under ``.quantflow/nights/<night>.json``.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantflow.core.errors import QuantflowError
from quantflow.core.workspace import state_dir

JOURNAL_FILE = "journal.json"
ARCHIVE_DIR = "nights"
# The phases of a night in order; each is recorded once its writes are complete.
PHASES = ("started", "taken", "trained", "versioned", "committed", "registered", "done")


class JournalError(QuantflowError):
    """The night journal cannot be read: the message names the file and what to do."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Night:
    """One night's record. Paths are relative to the project folder."""

    night_id: str
    started_at: str
    pid: int
    host: str
    params_file: str
    overrides: dict[str, Any] = field(default_factory=dict)
    params_digest: str = ""  # of the params the night ran with: a roll-forward warns when the file changed
    # the params file as it was before the night wrote its --set overrides into it (None: not written); a
    # roll-back puts it back, a roll-forward keeps the overrides (the night's commit holds them)
    params_before: str | None = None
    phase: str = "started"
    outcome: str = ""  # done: "registered", "not retrained", "rolled back: ...", "finished by <night>"
    accepted: list[dict[str, str]] = field(default_factory=list)  # {"name", "source", "stored"}
    retrain: str | None = None
    git_commit: str | None = None
    run_id: str | None = None  # the night's MLflow run
    version: str | None = None  # the registered model version
    # live drift (quantflow/intake/live.py): the end of the prediction-log window the night read (the cursor moves
    # there once the night completes) and its gate check, which a roll-forward applies as the night did
    live_until: str | None = None
    live_check: dict[str, Any] | None = None  # {"name", "value", "threshold", "passed", "detail"}
    events: list[str] = field(default_factory=list)  # "<time> <phase>: <what>", for the summary and humans

    def reached(self, phase: str) -> bool:
        return PHASES.index(self.phase) >= PHASES.index(phase)


def new_night(params_file: str, overrides: dict[str, Any], params_digest: str = "") -> Night:
    started = datetime.now(UTC)
    return Night(
        night_id=f"{started:%Y%m%dT%H%M%SZ}-{os.getpid()}",
        started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        pid=os.getpid(),
        host=socket.gethostname(),
        params_file=params_file,
        overrides=dict(overrides),
        params_digest=params_digest,
    )


def journal_path(root: Path) -> Path:
    return state_dir(root) / JOURNAL_FILE


def read_journal(root: Path) -> Night | None:
    """The current (unfinished) night's journal, or None. An unreadable file is an error naming it."""
    path = journal_path(root)
    if not path.is_file():
        return None
    try:
        return Night(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise JournalError(
            f"{path}: the night journal is unreadable ({exc}); inspect it, then delete it to start afresh"
        ) from None


def write_journal(root: Path, night: Night) -> None:
    """Replace the journal atomically: a kill leaves either the old record or the new one, never half."""
    path = journal_path(root)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(asdict(night), handle, indent=2, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def record(root: Path, night: Night, phase: str, what: str = "") -> None:
    """Mark ``phase`` reached (its writes are done) and persist the journal."""
    if phase not in PHASES:
        raise ValueError(f"unknown night phase {phase!r}; one of {PHASES}")
    night.phase = phase
    night.events.append(f"{now_iso()} {phase}" + (f": {what}" if what else ""))
    write_journal(root, night)


def close(root: Path, night: Night, outcome: str) -> Path:
    """The night is over (done or rolled back): archive its record and remove the current journal."""
    night.outcome = outcome
    night.phase = "done"
    night.events.append(f"{now_iso()} done: {outcome}")
    archive = state_dir(root) / ARCHIVE_DIR
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"{night.night_id}.json"
    target.write_text(json.dumps(asdict(night), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    journal_path(root).unlink(missing_ok=True)
    return target
