"""The quality study's units of work: k cross-validation folds of a dataset, and one candidate of any family
trained and scored on one fold.

``bench/quality.py`` (``make quality``) builds the folds of each built-in dataset with :func:`make_folds` (the
pipeline's own split output, re-split by text hash, then the pipeline's preprocess function per fold) and
submits one :data:`train_candidate_task` per (dataset, fold, candidate) to the scaling flow's
``DaskTaskRunner`` (:func:`flows.scale.task_runner`), so candidates train side by side on the Dask workers and
each is a Prefect task run. A candidate is trained by the train step's own function for its family
(quantflow/core/candidates.py: ``neural``, ``tfidf_lr``, ``nb_lr``); the raw-text TF-IDF baseline of the
evaluate step is scored on the same folds (:data:`baseline_task`). This module is importable by the Dask
worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from quantflow.core.baseline import tfidf_baseline
from quantflow.core.candidates import WEIGHTS_FILES, folder_family, predict_scores, train_candidate
from quantflow.core.features import load_features, load_labels
from quantflow.core.layout import SPLITS, features_file, split_file
from quantflow.core.params import Params
from quantflow.core.text import hash_unit
from tasks.preprocess import preprocess

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.json"  # a trained candidate's cached fold predictions


@dataclass(frozen=True)
class Fold:
    """Fold ``index`` of ``dataset``: its own train/val/test split files, features and tokenizer under ``root``."""

    dataset: str
    index: int
    root: Path

    @property
    def split_dir(self) -> Path:
        return self.root / "split"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def test_labels(self) -> np.ndarray:
        """(N,) class indexes of the fold's test texts (the order every candidate predicts in)."""
        return load_features(self.features_dir, "test")[1]


def fold_index(key: str, salt: str, folds: int) -> int:
    """The fold of a text: fixed by its normalized form (the split step's ``key``) and the salt."""
    return min(folds - 1, int(hash_unit(key, f"{salt}/cv{folds}") * folds))


def fold_frames(whole: pd.DataFrame, params: Params, folds: int, index: int) -> dict[str, pd.DataFrame]:
    """Fold ``index``'s test texts, and the rest split into train and val by a second hash (val keeps the
    share of the whole dataset ``split.val_fraction`` gives the pipeline's split)."""
    salt = params.split.salt
    fold = whole["key"].map(lambda k: fold_index(k, salt, folds))
    val_share = params.split.val_fraction / (1 - 1 / folds)
    in_val = whole["key"].map(lambda k: hash_unit(k, f"{salt}/cv-val") < val_share)
    test = fold == index
    return {
        "train": whole[~test & ~in_val],
        "val": whole[~test & in_val],
        "test": whole[test],
    }


def data_digest(params: Params, folds: int) -> str:
    """What the folds' data depends on: seed, ingest, split and preprocess sections, and k."""
    sections = [s.model_dump(mode="json") for s in (params.ingest, params.split, params.preprocess)]
    blob = json.dumps([params.seed, folds, *sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_folds(params: Params, split_dir: Path, work: Path, folds: int) -> list[Fold]:
    """The k folds of the dataset the pipeline's split step wrote to ``split_dir`` (deduplicated, conflicts
    dropped): every text is in exactly one fold's test split. Each fold is preprocessed by the pipeline's
    function (vocabulary from its own training texts) unless an earlier run left its features."""
    whole = pd.concat([pd.read_parquet(split_file(split_dir, s)) for s in SPLITS], ignore_index=True)
    root = work / f"cv{folds}-{data_digest(params, folds)}"
    out = []
    for index in range(folds):
        fold = Fold(params.ingest.dataset, index, root / f"fold{index}")
        if not features_file(fold.features_dir, "test").is_file():
            fold.split_dir.mkdir(parents=True, exist_ok=True)
            for name, frame in fold_frames(whole, params, folds, index).items():
                frame.reset_index(drop=True).to_parquet(split_file(fold.split_dir, name), index=False)
            preprocess(
                params.preprocess, fold.split_dir, fold.features_dir, fold.tokenizer_dir, params.labels
            )
        out.append(fold)
    return out


@dataclass(frozen=True)
class FoldScored:
    """One model on one fold: its predicted class indexes on the fold's test texts, and what it cost."""

    test: np.ndarray
    seconds: float  # training wall time
    size_bytes: int  # the fp32 model file (model.pt / model.onnx); 0 for the raw-text baseline
    ms_per_text: float  # predicting the test fold in batches, in the model's own runtime


def _cached(folder: Path) -> FoldScored | None:
    path = folder / PREDICTIONS
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return FoldScored(np.array(data["test"]), data["seconds"], data["size_bytes"], data["ms_per_text"])


def _cache(folder: Path, scored: FoldScored) -> FoldScored:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "test": scored.test.tolist(),
        "seconds": scored.seconds,
        "size_bytes": scored.size_bytes,
        "ms_per_text": scored.ms_per_text,
    }
    (folder / PREDICTIONS).write_text(json.dumps(data))
    return scored


def train_fold_candidate(family: str, params: Params, fold: Fold, folder: Path) -> FoldScored:
    """Train ``family`` (neural, tfidf_lr or nb_lr, with ``params.train``) on the fold into ``folder`` with the
    train step's function; its test predictions (cached in ``folder``, whose name the caller derives from a
    digest of ``params``)."""
    cached = _cached(folder)
    if cached is not None:
        return cached
    start = time.perf_counter()
    train_candidate(
        family,
        params.train,
        fold.features_dir,
        fold.tokenizer_dir,
        folder,
        folder / "history.json",
        params.seed,
    )
    seconds = time.perf_counter() - start
    ids, _ = load_features(fold.features_dir, "test")
    start = time.perf_counter()
    predicted = predict_scores(folder, ids).argmax(axis=1)
    ms = 1e3 * (time.perf_counter() - start) / max(1, len(ids))
    size = (folder / WEIGHTS_FILES[folder_family(folder)]).stat().st_size
    logger.info("quality: %s fold %d %s trained in %.0f s", fold.dataset, fold.index, folder.name, seconds)
    return _cache(folder, FoldScored(predicted, round(seconds, 1), size, round(ms, 4)))


def fold_baseline(params: Params, fold: Fold, folder: Path) -> FoldScored:
    """The evaluate step's raw-text TF-IDF + LR baseline fitted on the fold's training texts (cached)."""
    cached = _cached(folder)
    if cached is not None:
        return cached
    train, test = (pd.read_parquet(split_file(fold.split_dir, s)) for s in ("train", "test"))
    start = time.perf_counter()
    predicted = tfidf_baseline(train, test, params.evaluate, params.seed)
    seconds = time.perf_counter() - start
    index = {label: i for i, label in enumerate(load_labels(fold.features_dir))}
    test_pred = np.array([index[p] for p in predicted])
    return _cache(folder, FoldScored(test_pred, round(seconds, 1), 0, 0.0))


train_candidate_task = task(
    train_fold_candidate,
    name="train-candidate",
    task_run_name="{fold.dataset}-fold{fold.index}-{folder.name}",
)
baseline_task = task(fold_baseline, name="baseline", task_run_name="{fold.dataset}-fold{fold.index}-baseline")
