"""A night as a transaction: its phases in the journal, and what the next run does with a night that stopped.

A night writes to stores that share no transaction: the project folder (data/accepted, DVC outputs, the incoming
folders), the DVC cache and remote, git, and the MLflow registry. So it runs in phases, each recorded in the
journal (``.quantflow/journal.json``, quantflow/core/journal.py) once its writes are done:

    started → taken      the batches judged: accepted ones stored in data/accepted/ (still waiting in incoming/)
            → trained    the --set overrides written into the params file (the file as it was kept in the
                         journal), then every step of dvc.yaml ran on tonight's data
            → versioned  dvc add of the accepted batches, dvc commit, dvc push
            → committed  git commit of dvc.lock, the params file and the .dvc files
            → registered the night's model version, complete, with its aliases
            → done       the accepted incoming files moved to processed/, the journal archived under nights/

Between ``started`` and ``taken`` the night also reads the service's prediction log (live drift,
quantflow/intake/live.py): its window end and its gate check go into the journal; the log's cursor moves to that
window end only when the night completes in its own run (:func:`complete_night`), so a night rolled back, killed,
or finished by a later run leaves its lines for the next night to read again. A roll-forward registers with the
night's own live-drift check.

Nothing about a batch is final before ``registered``: its incoming file stays where it was. The next run reads
the journal before anything else (whether or not it retrains) and settles the night:

- stopped before ``trained``: **rolled back**. The params file goes back to what it was before the overrides,
  accepted files no ``.dvc`` file tracks are deleted, the DVC outputs are checked out to ``dvc.lock`` (the next
  intake judges the waiting batches against the last committed dataset, not against half a night), the incoming
  files stay for tonight; ``dvc status`` decides the retrain.
- ``trained`` or later: **rolled forward** with the night's own params file and overrides: dvc add/commit/push
  and the git commit again (idempotent), the model registered exactly once (registration.py reuses the night's
  version), its batches moved to processed/.

A failure inside a night does the same at once: before ``trained`` the night rolls back in process; after it the
journal stays and the error says that the next run finishes the night first.

The night's MLflow run (flows/mlrun.py) is named in the journal from ``started``: a roll-forward registers into
it and ends it FINISHED; a roll-back ends it KILLED.

Failpoints (quantflow/core/failpoints.py) sit at every boundary: ``night:after-<phase>``,
``night:after-overrides``, ``steps:after-<stage>``, ``night:after-moved``, and inside register (``register:after-run``, ``-version``,
``-complete``, ``-challenger``, ``-staging``, ``staging:after-history``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantflow.core.errors import QuantflowError
from quantflow.core.failpoints import failpoint
from quantflow.core.journal import Night, close, new_night, read_journal, record
from quantflow.core.layout import Layout
from quantflow.core.params import Params, load_params
from quantflow.intake.incoming import Intake
from quantflow.intake.live import advance_cursor
from quantflow.intake.nightly import (
    add_accepted_task,
    commit_night_task,
    drop_orphans,
    move_to_processed,
    restore_workspace,
)
from quantflow.intake.versioning import commit_outputs_task, lineage, push_data_task, write_params
from quantflow.registry.gate import Check
from quantflow.registry.pipeline_run import end_run
from quantflow.registry.promotion import Retry
from quantflow.registry.registration import NIGHT_TAG, RegisterResult
from quantflow.registry.tracking import check_store
from tasks.register import register_task_for

logger = logging.getLogger(__name__)

Timed = Callable[..., Any]  # (step name, callable, *args) → its result, timed for the run summary


@dataclass
class Recovery:
    """What this run did with the night the journal held."""

    night_id: str
    phase: str  # where that night stopped
    action: str  # "rolled back" or "rolled forward"
    registered: RegisterResult | None = None
    notes: list[str] = field(default_factory=list)  # what the roll-back dropped, or could not restore

    def describe(self) -> str:
        done = ""
        if self.registered is not None:
            done = f"; its model registered as v{self.registered.version} ({self.registered.outcome})"
        extra = "".join(f"; {p}" for p in self.notes)
        return f"night {self.night_id} stopped after '{self.phase}': {self.action}{done}{extra}"


def open_night(
    layout: Layout, params_file: str, overrides: dict[str, Any], params: Params, run_id: str | None = None
) -> Night:
    night = new_night(params_file, overrides, params.digest())
    night.run_id = run_id  # the pipeline's MLflow run: a roll-forward registers into it, a roll-back ends it
    record(layout.root, night, "started")
    failpoint("night:after-started")
    return night


def record_intake(layout: Layout, night: Night, intake: Intake, retrain: str | None) -> None:
    """The night's accepted batches (what a roll-forward versions and moves) and why it retrains."""
    night.accepted = [
        {"name": b.name, "source": b.source, "stored": str(layout.relative(b.stored))}
        for b in intake.accepted
        if b.stored is not None
    ]
    night.retrain = retrain
    record(layout.root, night, "taken", f"{len(night.accepted)} accepted, {len(intake.blocked)} blocked")
    failpoint("night:after-taken")


def overrides_change(layout: Layout, night: Night, params: Params) -> bool:
    """Whether the night's ``--set`` overrides give other params than its params file (an override equal to
    the file's value is no experiment: nothing to write, and ``dvc status`` decides the retrain)."""
    return bool(night.overrides) and load_params(layout.root / night.params_file).digest() != params.digest()


def write_overrides(layout: Layout, night: Night, params: Params) -> None:
    """Write the night's ``--set`` overrides into its params file before the steps, as ``dvc exp run -S`` does
    to the workspace: ``dvc.lock``, ``dvc status``, the night's git commit and the version's lineage then all
    describe the model built, and ``dvc repro`` of that commit builds it again.

    The file as it was goes into the journal first: a night rolled back puts it back; one rolled forward keeps
    the overrides and commits them with ``dvc.lock``. Overrides equal to the file's values write nothing."""
    path = layout.root / night.params_file
    if not overrides_change(layout, night, params):
        return
    night.params_before = path.read_text(encoding="utf-8")
    shown = ", ".join(f"{k}={v!r}" for k, v in night.overrides.items())
    record(layout.root, night, night.phase, f"--set written into {night.params_file}: {shown}")
    write_params(path, night.overrides)
    failpoint("night:after-overrides")
    if load_params(path).digest() != params.digest():
        raise QuantflowError(
            f"{path}: after writing the --set overrides ({shown}) the file does not give the night's params; "
            "set those keys in the file by hand and run without --set"
        )
    logger.info("wrote the overrides into %s (committed with dvc.lock): %s", path, shown)


def restore_params(layout: Layout, night: Night) -> list[str]:
    """The params file back to what it was before the night wrote its overrides into it (a roll-back)."""
    if night.params_before is None:
        return []
    (layout.root / night.params_file).write_text(night.params_before, encoding="utf-8")
    return [f"{night.params_file} restored (the night's --set overrides taken out)"]


def roll_back(layout: Layout, night: Night, why: str) -> tuple[list[str], list[str]]:
    """Undo a night that did not reach ``trained``: the params file as it was (before ``dvc checkout`` reads it),
    orphaned accepted files out, DVC outputs back to dvc.lock, the journal closed. The incoming files stay.
    Returns (what it did, what failed: reported, not raised)."""
    restored = restore_params(layout, night)
    dropped = drop_orphans(layout)
    problem = restore_workspace(layout)
    problems = [f"the restore failed: {problem}"] if problem else []
    done = restored + (
        [f"dropped the stored {', '.join(dropped)} (the incoming file waits for tonight)"] if dropped else []
    )
    close(layout.root, night, "; ".join([f"rolled back ({why})", *done, *problems]))
    logger.warning("night %s rolled back (%s)%s", night.night_id, why, "".join(f"; {d}" for d in done))
    return done, problems


def finish_night(
    params: Params, layout: Layout, night: Night, timed: Timed, tags: dict[str, str]
) -> RegisterResult | None:
    """versioned → committed → registered, each phase skipped when the journal has it already (a roll-forward).

    Every phase is idempotent, so a run killed inside one (or a run finishing it) can do it again. A failure
    leaves the journal at the last finished phase and says that the next run finishes the night first."""
    root = layout.root
    try:
        if not night.reached("versioned"):
            timed("dvc add accepted", add_accepted_task, root, [b["stored"] for b in night.accepted])
            timed("dvc commit", commit_outputs_task, root)
            timed("dvc push", push_data_task, root)
            record(root, night, "versioned")
            failpoint("night:after-versioned")
        if not night.reached("committed"):
            # an override night commits too: its params file and dvc.lock are the model's record
            wanted = params.nightly.git_commit == "always" or (
                params.nightly.git_commit == "accepted"
                and (night.accepted or night.params_before is not None)
            )
            if wanted:
                names = [b["name"] for b in night.accepted]
                night.git_commit = (
                    timed(
                        "git commit",
                        commit_night_task,
                        root,
                        params,
                        names,
                        night.params_file,
                        night.overrides if night.params_before is not None else None,
                    )
                    or night.git_commit
                )
            record(root, night, "committed", night.git_commit or "no git commit")
            failpoint("night:after-committed")
        if night.reached("registered"):
            return None
        return register_night(params, layout, night, timed, tags)
    except QuantflowError as exc:
        exc.args = (f"{exc}\n{unfinished_note(night, layout)}", *exc.args[1:])
        raise


def register_night(
    params: Params, layout: Layout, night: Night, timed: Timed, tags: dict[str, str]
) -> RegisterResult:
    """Register the night's model once: its version carries ``quantflow.night``, which a retry or a later run
    that finishes the night finds and completes instead of making another."""
    tags = {
        **lineage(layout.root).tags(),
        **tags,
        NIGHT_TAG: night.night_id,
        "nightly.accepted_batches": ",".join(b["name"] for b in night.accepted) or "none",
    }
    # the night's live drift as the night judged it (a roll-forward applies it too)
    checks = (Check(**night.live_check),) if night.live_check else ()
    reg = timed("register", register_task_for(params), params, layout.root, tags, night.run_id, checks)
    night.run_id, night.version = reg.run_id, reg.version
    record(layout.root, night, "registered", f"{reg.model_name} v{reg.version}: {reg.outcome}")
    failpoint("night:after-registered")
    return reg


def unfinished_note(night: Night, layout: Layout) -> str:
    """What a failed night after ``trained`` leaves, and what the next run does about it."""
    batches = ", ".join(b["source"] for b in night.accepted) or "no batch"
    return (
        f"The night {night.night_id} stopped after '{night.phase}' (its model is trained; batches: {batches}, "
        f"still waiting in {layout.relative(layout.incoming_dir)}). The next `quantflow run` in {layout.root} "
        "finishes it first: it versions, commits and registers this model once, then takes new batches."
    )


def close_night(layout: Layout, night: Night, outcome: str) -> None:
    """The accepted incoming files to processed/ (their night is registered), then the journal archived."""
    move_to_processed(layout, [b["source"] for b in night.accepted])
    failpoint("night:after-moved")
    close(layout.root, night, outcome)


def complete_night(layout: Layout, night: Night, outcome: str) -> None:
    """Close the night (:func:`close_night`), then move the prediction log's cursor to the end of the window it
    read: only a night that completes in its own run moves it."""
    close_night(layout, night, outcome)
    if night.live_until:
        advance_cursor(layout.root, night.live_until, night.night_id)


def check_store_first(root: Path, retry: Retry) -> str:
    """The tracking store must answer before a night starts; when it does not and the journal holds a trained
    night, the error also says that the next run registers that night's model first."""
    try:
        return check_store(root, retry)
    except QuantflowError as exc:
        pending = read_journal(root)
        if pending is not None and pending.reached("trained"):
            params = load_params(root / pending.params_file, pending.overrides)
            exc.args = (f"{exc}\n{unfinished_note(pending, Layout.of(params, root))}", *exc.args[1:])
        raise


def recover(root: Path, timed: Timed, tags: dict[str, str]) -> Recovery | None:
    """Settle the night the journal holds (a run killed or failed half-way), before anything else; None when
    there is none. The workspace lock guarantees that night's process is gone."""
    night = read_journal(root)
    if night is None:
        return None
    params = load_params(root / night.params_file, night.overrides)
    layout = Layout.of(params, root)
    stopped = night.phase
    if params.digest() != night.params_digest:
        logger.warning(
            "night %s: its params file changed since; recovering with the file as it is now", night.night_id
        )
    by = f"flow run {tags.get('prefect_flow_run_name', '?')}"
    if not night.reached("trained"):
        done, problems = roll_back(layout, night, f"stopped after '{stopped}'")
        if night.run_id:
            end_run(root, night.run_id, "KILLED", f"rolled back: stopped after '{stopped}'", by)
        return Recovery(night.night_id, stopped, "rolled back", notes=done + problems)
    logger.warning("night %s stopped after '%s': finishing it", night.night_id, stopped)
    registered = finish_night(params, layout, night, timed, tags)
    close_night(layout, night, "registered, finished by a later run")
    if night.run_id:
        version = f"v{registered.version}: {registered.outcome}" if registered else f"v{night.version}"
        end_run(root, night.run_id, "FINISHED", f"rolled forward after '{stopped}', registered {version}", by)
    return Recovery(night.night_id, stopped, "rolled forward", registered)
