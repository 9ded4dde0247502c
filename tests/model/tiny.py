"""The model tests' tiny set-up: the two-vocabulary corpus split and preprocessed into a folder, a TextCNN
small enough to train in seconds, one batch to overfit, and a tiny model of every family (slim, distill)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from quantflow.core.models import ModelConfig, build_model
from quantflow.core.params import PreprocessParams, TrainParams
from tasks.preprocess import preprocess
from tasks.split import split
from tests.params_helpers import split_with, train_with

LABELS = ("news", "comment")


def tiny_train_params(**overrides: object) -> TrainParams:
    """params.yaml's train section made tiny: a TextCNN (embedding 16, 8 filters of widths 2 and 3), 3 epochs of
    batches of 32 at a constant lr 0.01 (tests that follow the rate step by step set their own schedule), one
    thread; ``overrides`` on top (validated like params.yaml's train section)."""
    tiny = {
        "model": "textcnn",
        "schedule": "constant",
        "warmup_fraction": 0.0,
        "embed_dim": 16,
        "num_filters": 8,
        "kernel_sizes": [2, 3],
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.01,
        "threads": 1,
    }
    return train_with(**(tiny | overrides))


def split_and_preprocess(
    root: Path,
    frame: pd.DataFrame,
    params: PreprocessParams,
    holdout: float = 0.15,
    labels: tuple[str, ...] | None = None,
) -> Path:
    """``frame`` → root/raw.parquet → root/split (``holdout`` of the rows each for val and test) →
    root/features and root/tokenizer, classes in the order of ``labels`` (sorted when None); returns ``root``."""
    frame.to_parquet(root / "raw.parquet")
    split(
        split_with(val_fraction=holdout, test_fraction=holdout),
        root / "raw.parquet",
        root / "split",
        root / "split.json",
        seed=0,
    )
    preprocess(params, root / "split", root / "features", root / "tokenizer", labels=labels)
    return root


def overfit_one_batch(cfg: ModelConfig, steps: int = 60) -> list[float]:
    """The loss at each of ``steps`` AdamW steps (lr 0.01) of a model of ``cfg`` (seed 0) on one random batch:
    16 texts of 10 ids in [2, vocab_size), random labels."""
    torch.manual_seed(0)
    model = build_model(cfg)
    ids, y = torch.randint(2, cfg.vocab_size, (16, 10)), torch.randint(0, cfg.num_classes, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(ids), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def family_config(arch: str, vocab_size: int, num_classes: int = 2, sep_id: int = 2) -> ModelConfig:
    """A tiny model of any family: embedding 16; 8 filters of widths 2 and 3; 1009 n-gram buckets (n ≤ 3);
    2 encoder layers of 4 heads and 32 feed-forward units; ``sep_id`` for char_word_textcnn."""
    extra: dict[str, int] = {}
    if arch in ("fasttext", "ngram_textcnn"):
        extra = {"ngram_max": 3, "buckets": 1009}
    elif arch == "char_word_textcnn":
        extra = {"sep_id": sep_id}
    return ModelConfig(
        arch=arch,
        vocab_size=vocab_size,
        num_classes=num_classes,
        embed_dim=16,
        num_filters=8,
        kernel_sizes=(2, 3),
        dropout=0.1,
        layers=2,
        heads=4,
        ff_dim=32,
        max_len=64,
        extra=extra,
    )


def train_briefly(model: torch.nn.Module, ids: np.ndarray, y: np.ndarray, steps: int = 30) -> torch.nn.Module:
    """``steps`` Adam steps (lr 0.01, seed 0) on random batches of 32: weights that mean something, in seconds."""
    torch.manual_seed(0)
    x, target = torch.from_numpy(ids), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[batch]), target[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
