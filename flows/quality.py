"""The quality study's unit of work: one candidate model trained and scored on one dataset's split.

``bench/quality.py`` (``make quality``) submits one of these per (dataset, candidate) to the scaling flow's
``DaskTaskRunner`` (:func:`flows.scale.task_runner`), so candidates train side by side on the Dask workers and
each is a Prefect task run. It lives in an importable module so the Dask worker processes can load it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from quantflow.core.features import load_features
from quantflow.core.layout import Layout
from quantflow.core.models import load_model
from quantflow.core.params import Params
from quantflow.core.training import predict_logits
from tasks.train import train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One model's predicted label indices on the validation and test splits."""

    val: np.ndarray
    test: np.ndarray
    seconds: float


def train_candidate(params: Params, layout: Layout, folder: Path) -> Scored:
    """Train with the pipeline's function into ``folder``; predictions on val and test (cached in the folder,
    whose name the caller derives from a digest of ``params``)."""
    cache = folder / "predictions.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return Scored(np.array(data["val"]), np.array(data["test"]), data["seconds"])
    start = time.perf_counter()
    train(
        params.train, layout.features_dir, layout.tokenizer_dir, folder, folder / "history.json", params.seed
    )
    seconds = time.perf_counter() - start
    model, _, _ = load_model(folder)
    preds = {
        s: predict_logits(model, load_features(layout.features_dir, s)[0]).argmax(1) for s in ("val", "test")
    }
    cache.write_text(
        json.dumps({"val": preds["val"].tolist(), "test": preds["test"].tolist(), "seconds": seconds})
    )
    logger.info("quality: %s trained in %.0f s", folder.name, seconds)
    return Scored(preds["val"], preds["test"], seconds)


train_candidate_task = task(train_candidate, name="train-candidate", task_run_name="{folder.name}")
