"""Nightly batches: read each file in ``nightly.incoming_dir``, judge it, then store, quarantine or reject it.

Every folder and file name comes from :class:`~quantflow.core.layout.Layout`. A batch that passes its contract
and drift check is stored normalized (text, label, key, batch) as ``<accepted_dir>/<batch>.parquet``, which the ``ingest`` stage appends to the base dataset, so ``dvc repro``
rebuilds every night's dataset from files DVC tracks. A blocked batch goes to ``<rejected_dir>/<batch>/``
with its report and changes nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task

from quantflow.core.errors import DataError
from quantflow.core.layout import Layout, accepted_files
from quantflow.core.params import Params
from quantflow.core.tables import labelled_texts, read_table
from quantflow.intake.contracts import BatchVerdict, check_batch, dataset_keys
from quantflow.intake.drift import measure_drift, write_drift_report

logger = logging.getLogger(__name__)


class BatchError(DataError):
    """A batch file cannot be read as a table of texts and labels: the whole batch is blocked."""


@dataclass
class BatchOutcome:
    """What the night did with one incoming file."""

    name: str  # the batch id: the file's stem (made unique among accepted batches)
    source: str  # the incoming file name
    status: str  # accepted or blocked
    rows: int = 0
    accepted_rows: int = 0
    quarantined_rows: int = 0
    drift: str = "not measured"
    reasons: list[str] = field(default_factory=list)  # why blocked, with example rows
    warnings: list[str] = field(default_factory=list)
    report_dir: Path | None = None  # reports/nightly/<batch>/: contract.json, drift table and plot
    data_docs: Path | None = None  # the contract's page in the project's Data Docs site
    stored: Path | None = None  # <accepted_dir>/<batch>.parquet
    rejected: Path | None = None  # <rejected_dir>/<batch>/: the blocked file, report.md and report.json
    pending: Path | None = None  # the incoming file: moved to processed/ once the night's model is registered


@dataclass
class Intake:
    """Every batch of one night, in file-name order."""

    batches: list[BatchOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the incoming folder itself (not a batch)

    @property
    def accepted(self) -> list[BatchOutcome]:
        return [b for b in self.batches if b.status == "accepted"]

    @property
    def blocked(self) -> list[BatchOutcome]:
        return [b for b in self.batches if b.status == "blocked"]


def list_incoming(folder: Path) -> list[Path]:
    """The batch files waiting in ``folder`` (hidden files such as .gitkeep ignored), by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def incoming_oddities(folder: Path) -> list[str]:
    """What waits in ``folder`` but is not a batch file: a directory, a dangling link, a special file.

    Reported (the run summary's warnings), not read: batches are files directly in the folder, and a link whose
    target is gone cannot be read. Hidden names (.gitkeep) are left out as for the batches."""
    if not folder.is_dir():
        return []
    notes = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if path.is_symlink() and not path.exists():
            notes.append(f"{path}: a link to {os.readlink(path)}, which does not exist: not read")
        elif path.is_dir():
            notes.append(
                f"{path}: a directory, not a batch file: not read (put its files in {folder} itself)"
            )
        elif not path.is_file():
            notes.append(f"{path}: not a regular file: not read")
    return notes


def batches_of_no_dataset(layout: Layout) -> list[str]:
    """Accepted batches stored flat (``<paths.accepted_dir>/<batch>.parquet``, before batches were kept per
    dataset): no ingest step reads them, so each is reported with the command that files it under its dataset."""
    folder = layout.accepted_dir.parent
    return [
        f"{path}: an accepted batch outside the per-dataset folders, read by no ingest step; file it under its "
        f"dataset with `dvc move {layout.relative(path)} {layout.relative(folder)}/<dataset>/{path.name}`, "
        "then commit"
        for path in accepted_files(folder)
    ]


def read_batch(path: Path, text_column: str = "text", label_column: str = "label") -> pd.DataFrame:
    """One batch as ``text`` and ``label`` columns; every way a file can be unusable is a BatchError.

    Bytes that are not UTF-8 are decoded as U+FFFD, so the contract quarantines those rows and names them.
    """
    try:
        frame = read_table(path, {text_column: "", label_column: ""}, shown=path.name, undecodable="replace")
        return labelled_texts(frame, text_column, label_column, path.name)
    except DataError as exc:  # the file is unusable: the whole batch is blocked with the reader's message
        raise BatchError(str(exc)) from None


def batch_id(path: Path, taken: set[str]) -> str:
    """The file's stem, made safe for a file name and unique among the accepted batches."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem) or "batch"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    return name


def judge(path: Path, name: str, params: Params, layout: Layout, known: pd.DataFrame) -> BatchOutcome:
    """Read, contract, drift: the outcome of one batch and its reports under ``reports/nightly/<batch>/``."""
    outcome = BatchOutcome(name=name, source=path.name, status="blocked")
    reports = layout.batch_reports(name)
    outcome.report_dir = reports.folder
    try:
        frame = read_batch(path)
    except BatchError as exc:
        outcome.reasons.append(str(exc))
        return outcome
    outcome.rows = len(frame)
    verdict = check_batch(frame, params, known, layout.expectations_dir, reports, path.name)
    outcome.data_docs = verdict.data_docs
    outcome.quarantined_rows = len(verdict.quarantined)
    outcome.reasons += verdict.failures
    outcome.warnings += verdict.warnings
    if verdict.failures:
        return outcome
    drift = measure_drift(verdict.clean, layout.split_dir, layout.tokenizer_dir, params.nightly.drift)
    write_drift_report(drift, verdict.clean, layout.split_dir, reports)
    outcome.drift = drift.verdict
    outcome.reasons += [f"{path.name}: {line}" for line in drift.blocks]
    outcome.warnings += [f"{path.name}: {line}" for line in drift.warns]
    if not drift.blocks:
        outcome.status = "accepted"
        outcome.accepted_rows = len(verdict.clean)
        _store(outcome, verdict, layout)
    return outcome


def _store(outcome: BatchOutcome, verdict: BatchVerdict, layout: Layout) -> None:
    """The clean rows as ``<accepted_dir>/<batch>.parquet``; the quarantined ones as a CSV with reasons."""
    outcome.stored = layout.accepted_file(outcome.name)
    outcome.stored.parent.mkdir(parents=True, exist_ok=True)
    verdict.clean.assign(batch=outcome.name).to_parquet(outcome.stored, index=False)
    if len(verdict.quarantined):
        quarantine = layout.quarantine_file(outcome.name)
        quarantine.parent.mkdir(parents=True, exist_ok=True)
        verdict.quarantined.to_csv(quarantine, index=False)


def reject(path: Path, outcome: BatchOutcome, layout: Layout) -> Path:
    """Move a blocked batch to ``<rejected_dir>/<batch>/`` beside ``report.md`` / ``report.json``."""
    folder = layout.rejected_batch(outcome.name)
    outcome.rejected = folder
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(path, folder / path.name)
    report = {
        "batch": outcome.name,
        "file": outcome.source,
        "rows": outcome.rows,
        "reasons": outcome.reasons,
        "warnings": outcome.warnings,
        "drift": outcome.drift,
        "reports": str(outcome.report_dir),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    lines = [f"# batch {outcome.name}: blocked", "", f"File: `{outcome.source}`, {outcome.rows} rows.", ""]
    lines += [f"- {reason}" for reason in outcome.reasons]
    (folder / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if outcome.report_dir is not None and outcome.report_dir.is_dir():
        shutil.copytree(outcome.report_dir, folder / "reports", dirs_exist_ok=True)
    return folder


def take_incoming(params: Params, layout: Layout) -> Intake:
    """Judge every waiting batch; store the accepted ones, move the blocked ones to the rejected folder.

    Each accepted batch joins the known texts before the next one is judged, so two batches of one night
    cannot bring the same text twice or with two labels.
    """
    intake = Intake(warnings=incoming_oddities(layout.incoming_dir) + batches_of_no_dataset(layout))
    for note in intake.warnings:
        logger.warning("incoming: %s", note)
    known = dataset_keys(layout.split_dir)
    taken = {p.stem for p in accepted_files(layout.accepted_dir)}
    for path in list_incoming(layout.incoming_dir):
        name = batch_id(path, taken)
        outcome = judge(path, name, params, layout, known)
        if outcome.status == "accepted":
            taken.add(name)
            outcome.pending = path
            known = pd.concat([known, pd.read_parquet(outcome.stored, columns=["key", "label"])])
        else:
            reject(path, outcome, layout)
        logger.info(
            "batch %s: %s (%d rows, %d quarantined, drift %s)%s",
            name,
            outcome.status,
            outcome.rows,
            outcome.quarantined_rows,
            outcome.drift,
            "".join(f"\n  - {r}" for r in outcome.reasons),
        )
        intake.batches.append(outcome)
    return intake


def withdraw(intake: Intake, layout: Layout, reason: str | None) -> None:
    """Undo tonight's accepted batches after a later failure: their stored files go.

    With a ``reason`` (the dataset contract failed) the batches are rejected with it; without one (a crash)
    they stay in the incoming folder for the next night.
    """
    for outcome in intake.accepted:
        if outcome.stored is not None:
            outcome.stored.unlink(missing_ok=True)
            outcome.stored = None
        if reason is not None and outcome.pending is not None:
            outcome.status = "blocked"
            outcome.reasons.append(f"{outcome.source}: {reason}")
            reject(outcome.pending, outcome, layout)
            outcome.pending = None


take_incoming_task = task(take_incoming, name="take-incoming")
