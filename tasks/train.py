"""train: every candidate of ``train.candidates`` into its own folder, then the best on validation ships.

A candidate is the neural model (``neural``: ``train.model`` in PyTorch with AdamW, early stopping on validation
macro-F1 and fixed seeds; single process or DDP) or a classic one (``tfidf_lr``, ``nb_lr``: scikit-learn on the
same token ids, exported to ONNX). Each lands in ``<candidates_dir>/<name>/``; the one with the best validation
macro-F1 (ties: the smaller fp32 model, then the faster) is copied to ``model_dir``, the folder evaluate,
compress and register read whatever its family. ``reports/candidates.json`` records every candidate's scores
and the choice; ``reports/train_history.json`` is the winner's history. The pieces live in
quantflow/core/candidates.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from quantflow.core.candidates import (
    HISTORY_FILE,
    CandidateScore,
    score_folder,
    select,
    selection_report,
    train_candidate,
)
from quantflow.core.layout import TrainOutputs
from quantflow.core.params import TrainParams
from quantflow.core.training import TrainResult

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainSelection", "train", "train_task"]


@dataclass(frozen=True)
class TrainSelection:
    """What the step produced: every candidate's scores, the winner (copied to ``model_dir``) and why."""

    model_dir: Path
    winner: CandidateScore
    candidates: list[CandidateScore]
    reason: str
    history: list[dict]


def ship(winner: Path, model_dir: Path) -> None:
    """Replace ``model_dir`` with a copy of the winning candidate's folder (its own history stays behind)."""
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(winner, model_dir, ignore=shutil.ignore_patterns(HISTORY_FILE))


def train(
    params: TrainParams, features_dir: Path, tokenizer_dir: Path, outputs: TrainOutputs, seed: int
) -> TrainSelection:
    """Train every candidate on ``features_dir``, score each on the validation split, ship the best.

    ``outputs`` names the folders and files (quantflow/core/layout.py ``TrainOutputs``). A folder of a candidate
    no longer listed is removed, so ``candidates_dir`` holds exactly this run's candidates.
    """
    if outputs.candidates_dir.exists():
        shutil.rmtree(outputs.candidates_dir)
    scores, histories = [], {}
    for i, name in enumerate(params.candidates, start=1):
        folder = outputs.candidate_dir(name)
        logger.info("train [%d/%d]: candidate %s into %s", i, len(params.candidates), name, folder)
        start = time.perf_counter()
        result = train_candidate(
            name, params, features_dir, tokenizer_dir, folder, folder / HISTORY_FILE, seed
        )
        histories[name] = result.history
        scores.append(score_folder(name, folder, features_dir, time.perf_counter() - start))
    winner, reason = select(scores)
    ship(outputs.candidate_dir(winner.name), outputs.model_dir)
    outputs.selection.parent.mkdir(parents=True, exist_ok=True)
    report = selection_report(scores, winner, reason)
    outputs.selection.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    outputs.history.write_text(json.dumps(histories[winner.name], indent=2) + "\n", encoding="utf-8")
    logger.info("train: ships %s", reason)
    return TrainSelection(outputs.model_dir, winner, scores, reason, histories[winner.name])


# The Prefect task is the plain function itself, named for the flow's UI; tests call train() directly.
train_task = task(train, name="train")
