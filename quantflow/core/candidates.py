"""Candidates of every family, trained the same way, scored on validation, and the choice of the one that ships.

A candidate is ``neural`` (``train.model`` with the ``train.*`` settings: PyTorch, quantflow/core/training.py,
or DistributedDataParallel, quantflow/core/ddp.py) or a classic model, ``tfidf_lr`` or ``nb_lr``
(quantflow/core/classic.py with ``train.classic``). Each is trained into a model folder of its own:

- neural: ``model.pt`` + ``model.json`` + the tokenizer files (quantflow/core/models.py);
- classic: ``model.onnx`` (the exported graph, quantflow/core/classic_onnx.py) + ``model.json`` + the tokenizer
  files, and ``model.joblib``, the fitted scikit-learn model: the reference evaluate scores and compress checks
  the ONNX graph against (it is only ever loaded from a folder this module wrote).

Both take the same ``ids`` from ``data/features`` and are scored by the same function (:func:`score_folder`),
so the choice (:func:`select`: best validation macro-F1; ties by size, then speed) compares like with like.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from quantflow.core import epochs
from quantflow.core.bundle import Manifest
from quantflow.core.classic import ClassicFit, fit_classic
from quantflow.core.classic_onnx import CLASSIC_FAMILY, save_classic_folder
from quantflow.core.ddp import train_distributed, uses_distributed
from quantflow.core.features import load_features, load_labels
from quantflow.core.layout import shown_path
from quantflow.core.models import load_model
from quantflow.core.params import CLASSIC_MODELS, NEURAL, ClassicParams, TrainParams
from quantflow.core.training import TrainResult, fit, predict_logits, save_outputs, seed_everything, setup

logger = logging.getLogger(__name__)

NEURAL_FAMILY = "neural"
FIT_FILE = "model.joblib"  # a classic folder's fitted scikit-learn model
HISTORY_FILE = "history.json"  # a candidate folder's own per-epoch history
WEIGHTS_FILES = {NEURAL_FAMILY: "model.pt", CLASSIC_FAMILY: "model.onnx"}  # the fp32 model a size is taken of


def family_of(config: dict[str, Any]) -> str:
    """``classic`` for a classic model's ``model.json`` config, ``neural`` for a PyTorch model's (which has no
    ``family`` key)."""
    return CLASSIC_FAMILY if config.get("family") == CLASSIC_FAMILY else NEURAL_FAMILY


def folder_family(folder: Path) -> str:
    """The family of the model in ``folder`` (read from its model.json)."""
    return family_of(Manifest.load(folder).config)


# --- training ----------------------------------------------------------------------------------------------


def train_neural(
    params: TrainParams,
    features_dir: Path,
    tokenizer_dir: Path,
    model_dir: Path,
    history_path: Path,
    seed: int,
) -> TrainResult:
    """Train ``train.model`` on ``features_dir`` and save the best epoch's model as a self-describing folder.

    ``train.workers`` > 1 (or a GPU) trains with DistributedDataParallel under torchrun (quantflow/core/ddp.py).
    """
    if uses_distributed(params):
        return train_distributed(params, features_dir, tokenizer_dir, model_dir, history_path, seed)
    seed_everything(seed, params.threads)
    ready = setup(params, features_dir, tokenizer_dir, seed)
    tracker = fit(params, ready, seed)
    return save_outputs(tracker, ready, tokenizer_dir, model_dir, history_path)


def save_fit(fit: ClassicFit, folder: Path) -> Path:
    """The fitted scikit-learn model as ``folder/model.joblib``: its parts, the settings as a plain dict (a
    pickled pydantic model carries a set of field names whose order changes with the interpreter's hash seed,
    so the same fit would not give the same bytes twice: DVC and `quantflow reproduce` compare them)."""
    import joblib

    path = folder / FIT_FILE
    parts = {f.name: getattr(fit, f.name) for f in fields(fit)}
    parts["settings"] = fit.settings.model_dump(mode="json")
    joblib.dump(parts, path)
    return path


def load_fit(folder: Path) -> ClassicFit:
    """The fitted scikit-learn model of a classic folder (written by :func:`train_classic`: trusted input)."""
    import joblib

    path = folder / FIT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {FIT_FILE}; it is not a classic model folder of the train step"
        )
    parts = joblib.load(path)
    expected = {f.name for f in fields(ClassicFit)}
    if not isinstance(parts, dict) or set(parts) != expected:
        raise TypeError(
            f"{path}: not the parts of a classic model ({sorted(expected)}); rerun the train step"
        )
    return ClassicFit(**{**parts, "settings": ClassicParams(**parts["settings"])})


def train_classic(
    model: str,
    params: TrainParams,
    features_dir: Path,
    tokenizer_dir: Path,
    model_dir: Path,
    history_path: Path,
    seed: int,
) -> TrainResult:
    """Fit ``model`` (tfidf_lr or nb_lr) on the training ids; save its folder (ONNX graph, fit, tokenizer) and a
    one-row history (its one fit is "epoch 1"), with the validation scores the neural history also holds."""
    ids, y = load_features(features_dir, "train")
    labels = load_labels(features_dir)
    fit = fit_classic(ids, y, len(labels), model, params.classic, ids.shape[1], seed)
    val_ids, val_y = load_features(features_dir, "val")
    scores = val_scores(fit.predict_proba(val_ids).argmax(axis=1), val_y, len(labels))
    save_classic_folder(fit, model_dir, labels, tokenizer_dir, variant="sklearn-fp32", metrics=scores)
    save_fit(fit, model_dir)
    history = [{"epoch": 1, **scores}]
    epochs.report(history[0])
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(history, indent=2) + "\n")
    logger.info(
        "train: %s val acc %.4f val macro-F1 %.4f", model, scores["val_accuracy"], scores["val_macro_f1"]
    )
    return TrainResult(model_dir, history, 1, scores["val_macro_f1"])


def train_candidate(
    name: str,
    params: TrainParams,
    features_dir: Path,
    tokenizer_dir: Path,
    model_dir: Path,
    history_path: Path,
    seed: int,
) -> TrainResult:
    """Train candidate ``name`` (one of ``train.candidates``' values) into ``model_dir``; its epochs are
    reported under its name (quantflow/core/epochs.py)."""
    with epochs.training(name):
        if name == NEURAL:
            return train_neural(params, features_dir, tokenizer_dir, model_dir, history_path, seed)
        if name in CLASSIC_MODELS:
            return train_classic(name, params, features_dir, tokenizer_dir, model_dir, history_path, seed)
    raise ValueError(
        f"unknown candidate {name!r}; train.candidates takes {NEURAL}, {', '.join(CLASSIC_MODELS)}"
    )


# --- prediction and scores ----------------------------------------------------------------------------------


def predict_scores(folder: Path, ids: np.ndarray) -> np.ndarray:
    """(N, T) ids → (N, C) class scores of the folder's model before export: PyTorch logits (neural) or
    scikit-learn probabilities (classic). Their argmax is the model's label."""
    if folder_family(folder) == CLASSIC_FAMILY:
        return load_fit(folder).predict_proba(ids)
    model, _, _ = load_model(folder)
    return predict_logits(model, ids)


def val_scores(predicted: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """Validation accuracy and macro-F1 over every class (a class absent from the split counts as 0)."""
    return {
        "val_accuracy": round(float(accuracy_score(y, predicted)), 6),
        "val_macro_f1": round(
            float(f1_score(y, predicted, average="macro", labels=list(range(num_classes)), zero_division=0)),
            6,
        ),
    }


@dataclass(frozen=True)
class CandidateScore:
    """One trained candidate as the choice sees it: validation scores, fp32 size and prediction speed."""

    name: str
    family: str
    arch: str
    folder: str  # relative to the working folder (the project root under DVC and `quantflow run`)
    val_accuracy: float
    val_macro_f1: float
    size_bytes: int  # the fp32 model file: model.pt (neural) or model.onnx (classic)
    ms_per_text: float  # validation split in batches, in the family's own runtime: a tie-breaker only
    train_seconds: float


def score_folder(name: str, folder: Path, features_dir: Path, train_seconds: float) -> CandidateScore:
    """Score the candidate in ``folder`` on the validation split, time it and size it."""
    manifest = Manifest.load(folder)
    family = family_of(manifest.config)
    ids, y = load_features(features_dir, "val")
    start = time.perf_counter()
    predicted = predict_scores(folder, ids).argmax(axis=1)
    ms = 1e3 * (time.perf_counter() - start) / max(1, len(ids))
    scores = val_scores(predicted, y, len(manifest.labels))
    return CandidateScore(
        name=name,
        family=family,
        arch=str(manifest.config["arch"]),
        folder=shown_path(folder),
        **scores,
        size_bytes=(folder / WEIGHTS_FILES[family]).stat().st_size,
        ms_per_text=round(ms, 4),
        train_seconds=round(train_seconds, 1),
    )


# --- the choice ---------------------------------------------------------------------------------------------


def select(scores: list[CandidateScore]) -> tuple[CandidateScore, str]:
    """The candidate with the best validation macro-F1; on a tie, the smaller fp32 model, then the faster one.

    Returns the winner and the reason in words (the summary, the model card and the MLflow run show it)."""
    if not scores:
        raise ValueError("no candidates to choose from: train.candidates is empty")
    ranked = sorted(scores, key=lambda s: (-s.val_macro_f1, s.size_bytes, s.ms_per_text, s.name))
    winner = ranked[0]
    tied = [s.name for s in ranked[1:] if s.val_macro_f1 == winner.val_macro_f1]
    others = ", ".join(f"{s.name} {s.val_macro_f1:.4f}" for s in ranked[1:]) or "no other candidate"
    reason = f"{winner.name} ({winner.arch}): best validation macro-F1 {winner.val_macro_f1:.4f} ({others})"
    if tied:
        reason += f"; tied with {', '.join(tied)}: the smaller fp32 model, then the faster, wins"
    return winner, reason


def selection_report(scores: list[CandidateScore], winner: CandidateScore, reason: str) -> dict[str, Any]:
    """candidates.json: the winner, why, and every candidate's row."""
    return {
        "winner": winner.name,
        "family": winner.family,
        "arch": winner.arch,
        "reason": reason,
        "rule": "best validation macro-F1; ties: smaller fp32 model, then faster",
        "candidates": {s.name: asdict(s) for s in scores},
    }
