"""kill -9 of a real `quantflow run` at every boundary of a night and inside register, then the next run.

A kill is ``QUANTFLOW_FAILPOINTS=<name>=kill``: SIGKILL at that point, nothing flushed, no handler. The next
`quantflow run` (no failpoint) must settle the night (roll back before ``trained``, roll forward from it) and
leave the project consistent (tests/faults/sandbox.py: ``assert_consistent``).

Kills before ``trained`` hit the night itself (a batch waiting). Kills after it start from the ``trained``
snapshot (a night killed right after its steps) and hit the run that finishes that night: the same phases and
failpoints (flows/night.py), without a training per case. One kill inside register also hits a night itself.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from quantflow.core.journal import read_journal
from tests.faults.sandbox import MODEL, Project, assert_consistent, git_head

pytestmark = pytest.mark.faults

# failpoint → the phase the journal holds when the run dies there
BEFORE_TRAINED = {
    "night:after-started": "started",
    "night:after-taken": "taken",
    "steps:after-train": "taken",  # issue item 7: a kill in train with a batch waiting
}
AFTER_TRAINED = {
    "night:after-versioned": "versioned",
    "night:after-committed": "committed",
    "register:after-run": "committed",
    "register:after-version": "committed",
    "register:after-complete": "committed",
    "register:after-challenger": "committed",
    "staging:after-history": "committed",
    "register:after-staging": "committed",
    "night:after-registered": "registered",
    "night:after-moved": "registered",
}


def kill_at(project: Project, failpoint: str, phase: str) -> str:
    """Run until the failpoint kills the run; the journal must hold ``phase``. Returns the night's id."""
    run = project.run(failpoints=f"{failpoint}=kill")
    assert run.returncode == -signal.SIGKILL, run.output
    night = read_journal(project.root)
    assert night is not None and night.phase == phase, night
    if failpoint != "night:after-moved":  # nothing about the batch is final before the night is registered
        assert (project.root / "data" / "incoming" / "b1.csv").is_file()
    return night.night_id


def next_run_finishes(project: Project, night_id: str, phase: str) -> None:
    """The next run rolls the night forward: one version for it (v2), both aliases on it, nothing retrained."""
    after = project.run()
    assert after.returncode == 0, after.output
    assert f"night {night_id} stopped after '{phase}': rolled forward" in after.stdout, after.stdout
    assert "No incoming batches" in after.stdout and "Not retrained" in after.stdout
    assert_consistent(project)
    assert sorted(str(v.version) for v in project.versions()) == ["1", "2"]  # never a second version
    aliases = project.client().get_registered_model(MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "2", "staging": "2"}


@pytest.mark.parametrize("failpoint", list(BEFORE_TRAINED))
def test_a_night_killed_before_training_is_rolled_back(project: Project, failpoint: str) -> None:
    head = git_head(project.root)
    project.drop_batch()
    night_id = kill_at(project, failpoint, BEFORE_TRAINED[failpoint])
    assert git_head(project.root) == head

    after = project.run()
    assert after.returncode == 0, after.output
    assert f"night {night_id} stopped after '{BEFORE_TRAINED[failpoint]}': rolled back" in after.stdout
    assert "| b1 | accepted |" in after.stdout, after.stdout  # not "already in the dataset" (issue item 7)
    assert_consistent(project)
    assert len(project.versions()) == 2  # night 1 and tonight: the killed night registered nothing


def test_a_night_killed_right_after_training_is_finished_by_the_next_run(
    restore: Callable[[str], Project],
) -> None:
    project = restore("trained")
    night = read_journal(project.root)
    assert night is not None and night.phase == "trained"
    next_run_finishes(project, night.night_id, "trained")


def test_a_night_killed_inside_register_is_registered_once_by_the_next_run(project: Project) -> None:
    project.drop_batch()
    night_id = kill_at(project, "register:after-version", "committed")
    (pending,) = [v for v in project.versions() if str(v.version) == "2"]
    assert pending.tags["quantflow.state"] == "pending"  # the mess issue item 1 left for good
    next_run_finishes(project, night_id, "committed")


@pytest.mark.parametrize("failpoint", list(AFTER_TRAINED))
def test_a_night_killed_while_being_finished_is_finished_by_the_next_run(
    restore: Callable[[str], Project], failpoint: str
) -> None:
    project = restore("trained")
    night_id = kill_at(project, failpoint, AFTER_TRAINED[failpoint])
    next_run_finishes(project, night_id, AFTER_TRAINED[failpoint])
