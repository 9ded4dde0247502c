"""Data-parallel training: 2 CPU processes under torchrun against the single-process path on the same data."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from quantflow.models import load_model
from quantflow.params import PreprocessParams, SplitParams, TrainParams
from tasks.ddp import DistributedTrainingError, resolve_device, uses_distributed
from tasks.preprocess import load_features, preprocess
from tasks.split import split
from tasks.train import predict_logits, train
from tests.conftest import NEWS_WORDS, REVIEW_WORDS, make_texts

TINY = TrainParams(
    embed_dim=16,
    num_filters=8,
    kernel_sizes=[2, 3],
    epochs=3,
    batch_size=32,
    lr=0.01,
    threads=2,
    device="cpu",
)
ACCURACY_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    root = tmp_path_factory.mktemp("ddp")
    frame = pd.DataFrame(
        {
            "text": make_texts(NEWS_WORDS, 150, rng) + make_texts(REVIEW_WORDS, 150, rng),
            "label": ["news"] * 150 + ["comment"] * 150,
        }
    )
    frame.to_parquet(root / "raw.parquet")
    split(
        SplitParams(val_fraction=0.15, test_fraction=0.15),
        root / "raw.parquet",
        root / "split",
        root / "s.json",
    )
    preprocess(
        PreprocessParams(min_freq=1, max_len=32), root / "split", root / "features", root / "tokenizer"
    )
    return root


def run(root: Path, out: Path, params: TrainParams):
    return train(params, root / "features", root / "tokenizer", out / "model", out / "history.json", seed=3)


def held_out_accuracy(root: Path, model_dir: Path) -> float:
    model, _, _ = load_model(model_dir)
    ids, y = load_features(root / "features", "test")
    return float((predict_logits(model, ids).argmax(axis=1) == y).mean())


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank_zero_writes(
    features: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    single = run(features, tmp_path / "single", TINY)
    with caplog.at_level(logging.INFO, logger="tasks.ddp"):
        double = run(features, tmp_path / "ddp", TINY.model_copy(update={"workers": 2}))
    assert any("rank 0 train: 2 ranks (gloo)" in r.getMessage() for r in caplog.records)
    # the saved folder loads and scores like the single-process model on the held-out split
    acc_single, acc_ddp = (held_out_accuracy(features, r.model_dir) for r in (single, double))
    assert acc_ddp >= 0.8
    assert abs(acc_ddp - acc_single) <= ACCURACY_TOLERANCE, (acc_single, acc_ddp)
    # rank 0 alone wrote: the same files as one process (no per-rank copies), one history of every epoch
    assert files(tmp_path / "ddp") == files(tmp_path / "single")
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert double.history == history and 1 <= double.best_epoch <= len(history)
    # DDP averaged the gradients of 2 shards: the weights are close to, not equal to, one process's
    w_single = load_model(single.model_dir)[0].state_dict()["fc.weight"]
    w_ddp = load_model(double.model_dir)[0].state_dict()["fc.weight"]
    assert not torch.equal(w_single, w_ddp)


def test_single_cpu_worker_is_the_plain_path() -> None:
    assert not uses_distributed(TINY)
    assert uses_distributed(TINY.model_copy(update={"workers": 2}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_names_the_fix() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(
        DistributedTrainingError, match="train.device is cuda .* set train.device: auto or cpu"
    ):
        resolve_device("cuda")
