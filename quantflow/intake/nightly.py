"""Each night's dataset as a version: accepted batches under DVC, ``dvc.lock`` and ``.dvc`` files in git.

``git checkout <commit> && dvc pull`` then brings back the data of that night, and ``dvc repro`` rebuilds it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from prefect import task

from quantflow.core.layout import Layout
from quantflow.core.params import Params
from quantflow.intake.incoming import Intake
from quantflow.intake.versioning import VersioningError, dvc, run_tool

logger = logging.getLogger(__name__)


def retrain_reason(params: Params, layout: Layout, intake: Intake, overridden: bool) -> str | None:
    """Why tonight retrains, or None: no accepted data, a model on disk and ``dvc status`` clean."""
    if params.nightly.retrain == "always":
        return "nightly.retrain is 'always'"
    if intake.accepted:
        return f"{len(intake.accepted)} batch(es) accepted"
    if not (layout.model_dir / "model.pt").is_file() or not (layout.root / "dvc.lock").is_file():
        return "no model yet"
    if overridden:
        return "params overridden for this run"
    stale = sorted(json.loads(dvc(["status", "--json"], layout.root) or "{}"))
    return f"pipeline out of date ({', '.join(stale)})" if stale else None


def add_accepted(root: Path, intake: Intake) -> list[str]:
    """``dvc add`` each batch stored tonight: a ``.dvc`` file beside it, its bytes in the DVC cache."""
    files = [str(b.stored.relative_to(root)) for b in intake.accepted if b.stored is not None]
    if files:
        dvc(["add", "--quiet", *files], root)
    return files


def git_ready(root: Path) -> str | None:
    """None when the flow can commit in ``root``; else why not (no repository, no committer)."""
    try:
        run_tool(["git", "rev-parse", "--is-inside-work-tree"], root)
    except VersioningError:
        return f"{root} is not a git repository"
    for key in ("user.name", "user.email"):
        try:
            if not run_tool(["git", "config", key], root).strip():
                return f"git {key} is not set"
        except VersioningError:
            return f"git {key} is not set (git config {key} ...)"
    return None


def commit_night(root: Path, params: Params, intake: Intake) -> str | None:
    """Commit ``dvc.lock`` and the accepted batches' ``.dvc`` files (only those paths); the new commit id.

    Skipped (None, logged) outside a git repository, without a committer, or when nothing changed.
    """
    why_not = git_ready(root)
    if why_not:
        logger.warning("git commit of the night's data skipped: %s", why_not)
        return None
    layout = Layout.of(params, root)
    accepted = layout.relative(layout.accepted_dir)
    paths = ["dvc.lock", str(accepted)]
    run_tool(["git", "add", "-A", "--", *paths], root)
    if not run_tool(["git", "diff", "--cached", "--name-only", "--", *paths], root).strip():
        logger.info("git commit skipped: dvc.lock and %s are unchanged", accepted)
        return None
    names = ", ".join(b.name for b in intake.accepted) or "no new batches"
    run_tool(["git", "commit", "-q", "-m", f"nightly data: {names}", "--", *paths], root)
    commit = run_tool(["git", "rev-parse", "HEAD"], root).strip()
    logger.info("committed the night's data version: %s (%s)", commit[:12], names)
    return commit


add_accepted_task = task(add_accepted, name="dvc-add-accepted")
commit_night_task = task(commit_night, name="git-commit-night")
