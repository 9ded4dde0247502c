"""Data-parallel training: 2 CPU processes under torchrun against the single-process path on the same data."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from quantflow.core.candidates import train_neural
from quantflow.core.ddp import DistributedTrainingError, resolve_device, uses_distributed
from quantflow.core.features import load_features
from quantflow.core.models import load_model
from quantflow.core.params import TrainParams
from quantflow.core.pretrain import word2vec_vectors
from quantflow.core.training import predict_logits
from tests.conftest import two_vocabulary_frame
from tests.model.tiny import split_and_preprocess, tiny_train_params
from tests.params_helpers import preprocess_with

TINY = tiny_train_params(threads=2, device="cpu")
ACCURACY_TOLERANCE = 0.05
SMOOTHING = 0.4
# 2 classes, smoothing ε: the target is (1 - ε/2, ε/2) and no prediction brings the loss below its entropy
SMOOTHING_FLOOR = -sum(p * math.log(p) for p in (1 - SMOOTHING / 2, SMOOTHING / 2))  # 0.500
# every option of the single-process recipe that DDP once ignored
RECIPE = TINY.model_copy(
    update={
        "batch_size": 15,  # odd, so a rank's steps per epoch (ceil(106 / 8) = 14) differ from one process's (15)
        "patience": 3,  # all 3 epochs: the last one ends the cosine
        "schedule": "cosine",
        "warmup_fraction": 0.1,
        "label_smoothing": SMOOTHING,
        "augment_delete": 0.3,
        "augment_synonym": 0.5,
        "pretrained_embeddings": True,
    }
)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    return split_and_preprocess(root, two_vocabulary_frame(150), preprocess_with(min_freq=1, max_len=32))


def run(root: Path, out: Path, params: TrainParams):
    return train_neural(
        params, root / "features", root / "tokenizer", out / "model", out / "history.json", seed=3
    )


def held_out_accuracy(root: Path, model_dir: Path) -> float:
    model, _, _ = load_model(model_dir)
    ids, y = load_features(root / "features", "test")
    return float((predict_logits(model, ids).argmax(axis=1) == y).mean())


def scheduled_lr(params: TrainParams, steps_per_epoch: int, epoch: int) -> float:
    """The learning rate after ``epoch`` epochs: linear warm-up, then cosine from ``lr`` to 0 at the end."""
    total = params.epochs * steps_per_epoch
    warmup = int(params.warmup_fraction * total)
    step = epoch * steps_per_epoch
    if step < warmup:
        return params.lr * (step + 1) / warmup
    return params.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank_zero_writes(
    features: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    single = run(features, tmp_path / "single", TINY)
    with caplog.at_level(logging.INFO, logger="quantflow.core.ddp"):
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
    assert [row["lr"] for row in history] == [TINY.lr] * len(history)  # constant schedule
    assert history[-1]["train_loss"] < SMOOTHING_FLOOR  # what label smoothing forbids (the test below)
    # DDP averaged the gradients of 2 shards: the weights are close to, not equal to, one process's
    w_single = load_model(single.model_dir)[0].state_dict()["fc.weight"]
    w_ddp = load_model(double.model_dir)[0].state_dict()["fc.weight"]
    assert not torch.equal(w_single, w_ddp)


@pytest.mark.slow
def test_two_processes_train_the_single_process_recipe(features: Path, tmp_path: Path) -> None:
    train_ids = load_features(features / "features", "train")[0]
    single = run(features, tmp_path / "single", RECIPE)
    double = run(features, tmp_path / "ddp", RECIPE.model_copy(update={"workers": 2}))
    # the schedule, stepped per batch: one process counts its batches, a rank its shard's batches
    per_process = math.ceil(len(train_ids) / RECIPE.batch_size)
    per_rank = math.ceil(math.ceil(len(train_ids) / 2) / math.ceil(RECIPE.batch_size / 2))
    assert per_rank != per_process
    for result, steps in ((single, per_process), (double, per_rank)):
        expected = [scheduled_lr(RECIPE, steps, epoch) for epoch in (1, 2, 3)]
        assert [row["lr"] for row in result.history] == pytest.approx(expected, rel=1e-9, abs=1e-15)
        assert result.history[-1]["lr"] == 0.0
        # label smoothing: no epoch's mean loss below the floor
        assert min(row["train_loss"] for row in result.history) >= SMOOTHING_FLOOR, result.history
    # word2vec init: training never touches the <unk> row (no training text has <unk>), so it is still
    # rank 0's word2vec vector (random init would be another N(0, 1) draw)
    vocab = json.loads((features / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    unk = vocab["<unk>"]
    assert not (train_ids == unk).any()
    init = word2vec_vectors(train_ids, len(vocab), RECIPE.embed_dim, seed=3)[unk]
    saved = load_model(double.model_dir)[0].state_dict()["embedding.weight"][unk]
    torch.testing.assert_close(saved, torch.from_numpy(init), atol=1e-3, rtol=0)
    # augmentation: without it, the same DDP run (deterministic) trains on other texts
    clean = run(
        features,
        tmp_path / "clean",
        RECIPE.model_copy(update={"workers": 2, "augment_delete": 0.0, "augment_synonym": 0.0}),
    )
    assert [row["lr"] for row in clean.history] == [row["lr"] for row in double.history]
    assert [row["train_loss"] for row in clean.history] != [row["train_loss"] for row in double.history]


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
