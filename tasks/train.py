"""train: the classifier in PyTorch with AdamW, early stopping on validation macro-F1 and fixed seeds.

The pieces (model config, seeds, word2vec init, augmentation, schedule, epochs, early stopping, the saved
folder) live in quantflow/core/training.py; the data-parallel path under torchrun in quantflow/core/ddp.py
uses the very same ones.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from quantflow.core.ddp import train_distributed, uses_distributed
from quantflow.core.params import TrainParams
from quantflow.core.training import TrainResult, fit, save_outputs, seed_everything, setup

__all__ = ["TrainResult", "train", "train_task"]


def train(
    params: TrainParams,
    features_dir: Path,
    tokenizer_dir: Path,
    model_dir: Path,
    history_path: Path,
    seed: int,
) -> TrainResult:
    """Train on ``features_dir`` and save the best epoch's model as a self-describing folder.

    ``train.workers`` > 1 (or a GPU) trains with DistributedDataParallel under torchrun (quantflow/core/ddp.py).
    """
    if uses_distributed(params):
        return train_distributed(params, features_dir, tokenizer_dir, model_dir, history_path, seed)
    seed_everything(seed, params.threads)
    ready = setup(params, features_dir, tokenizer_dir, seed)
    tracker = fit(params, ready, seed)
    return save_outputs(tracker, ready, tokenizer_dir, model_dir, history_path)


# The Prefect task is the plain function itself, named for the flow's UI; tests call train() directly.
train_task = task(train, name="train")
