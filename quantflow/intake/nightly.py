"""Each night's dataset as a version: accepted batches under DVC, ``dvc.lock`` and ``.dvc`` files in git.

``git checkout <commit> && dvc pull`` then brings back the data of that night, and ``dvc repro`` rebuilds it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from prefect import task

from quantflow.core.bundle import MANIFEST
from quantflow.core.layout import Layout, accepted_files
from quantflow.core.params import Params
from quantflow.intake.incoming import Intake
from quantflow.intake.versioning import VersioningError, dvc, lock_md5s, restore_outputs, run_tool

logger = logging.getLogger(__name__)


def retrain_reason(params: Params, layout: Layout, intake: Intake, overridden: bool) -> str | None:
    """Why tonight retrains, or None: no accepted data, a model on disk and ``dvc status`` clean.

    ``--set`` overrides that change a param (``overridden``) retrain an up-to-date pipeline, except on a night
    whose batches were all blocked: a run to look into a blocked night must not ship a model (nor move
    ``staging``)."""
    if params.nightly.retrain == "always":
        return "nightly.retrain is 'always'"
    if intake.accepted:
        return f"{len(intake.accepted)} batch(es) accepted"
    # model.json: a model folder of either family (model.pt for a neural one, model.onnx for a classic one)
    if not (layout.model_dir / MANIFEST).is_file() or not (layout.root / "dvc.lock").is_file():
        return "no model yet"
    if overridden and not intake.blocked:
        return "params overridden for this run"
    stale = sorted(json.loads(dvc(["status", "--json"], layout.root) or "{}"))
    return f"pipeline out of date ({', '.join(stale)})" if stale else None


def add_accepted(root: Path, stored: list[str]) -> list[str]:
    """``dvc add`` each batch stored tonight (paths relative to ``root``): a ``.dvc`` file beside it, its bytes in
    the DVC cache. Idempotent: a run finishing a killed night adds them again."""
    if stored:
        dvc(["add", "--quiet", *stored], root)
    return stored


def orphaned_batches(layout: Layout) -> list[Path]:
    """Accepted batch files no ``.dvc`` file tracks: stored by a night that stopped before ``dvc add``.

    The ingest step reads every file of the accepted folder, so an orphan would be trained on by every later night
    while neither DVC nor git holds its rows."""
    return [p for p in accepted_files(layout.accepted_dir) if not p.with_name(p.name + ".dvc").is_file()]


def drop_orphans(layout: Layout) -> list[str]:
    """Delete the orphaned batch files (and their quarantine CSVs); their incoming files are still waiting."""
    names = []
    for path in orphaned_batches(layout):
        path.unlink()
        layout.quarantine_file(path.stem).unlink(missing_ok=True)
        names.append(path.stem)
        logger.warning("removed %s: stored by a night that did not finish, tracked by no .dvc file", path)
    return names


def restore_workspace(layout: Layout) -> str | None:
    """Every DVC-tracked output back to what ``dvc.lock`` records (after a night that stopped half-way wrote
    over them), so the next intake judges batches against the last committed dataset; None, or what failed.

    Without a ``dvc.lock`` (no night finished yet) the raw file and the split go: the next run rebuilds them."""
    if not (layout.root / "dvc.lock").is_file():
        layout.raw.unlink(missing_ok=True)
        shutil.rmtree(layout.split_dir, ignore_errors=True)
        return None
    try:
        restore_outputs(layout.root, [])
    except VersioningError as exc:
        return str(exc)
    if str(layout.relative(layout.raw)) not in lock_md5s(layout.root / "dvc.lock"):
        layout.raw.unlink(missing_ok=True)  # another dataset's raw file (an ingest.dataset override)
    return None


def move_to_processed(layout: Layout, sources: list[str]) -> list[str]:
    """Move each accepted incoming file (by name) to the processed folder, once its night is registered.

    Idempotent: a file already moved (a run finishing a killed night) is skipped."""
    moved = []
    for source in sources:
        waiting = layout.incoming_dir / source
        if waiting.is_file():
            layout.processed_dir.mkdir(parents=True, exist_ok=True)
            os.replace(waiting, layout.processed_dir / source)
            moved.append(source)
    return moved


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


def commit_night(
    root: Path,
    params: Params,
    batches: list[str],
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> str | None:
    """Commit ``dvc.lock``, the params file it was built with (holding a night's ``--set`` overrides) and the
    accepted batches' ``.dvc`` files (only those paths); the new commit id. The message names the batches and
    the overrides: ``nightly data: no new batches; params: train.candidates=['neural']``.

    Skipped (None, logged) outside a git repository, without a committer, or when nothing changed (a run that
    finishes a killed night whose commit was made already).
    """
    why_not = git_ready(root)
    if why_not:
        logger.warning("git commit of the night's data skipped: %s", why_not)
        return None
    layout = Layout.of(params, root)
    accepted = layout.relative(layout.accepted_dir)
    paths = ["dvc.lock", str(layout.relative((root / params_file).resolve())), str(accepted)]
    run_tool(["git", "add", "-A", "--", *paths], root)
    if not run_tool(["git", "diff", "--cached", "--name-only", "--", *paths], root).strip():
        logger.info("git commit skipped: %s are unchanged", ", ".join(paths))
        return None
    names = ", ".join(batches) or "no new batches"
    if overrides:
        names += "; params: " + ", ".join(f"{key}={value}" for key, value in overrides.items())
    run_tool(["git", "commit", "-q", "-m", f"nightly data: {names}", "--", *paths], root)
    commit = run_tool(["git", "rev-parse", "HEAD"], root).strip()
    logger.info("committed the night's data version: %s (%s)", commit[:12], names)
    return commit


add_accepted_task = task(add_accepted, name="dvc-add-accepted")
commit_night_task = task(commit_night, name="git-commit-night")
