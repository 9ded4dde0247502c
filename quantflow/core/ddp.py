"""Data-parallel training: the train step on N processes with PyTorch DistributedDataParallel under torchrun.

``train.workers: N`` (or ``quantflow stage train --workers N``) routes the train step here. The launcher
writes the job to a JSON file and runs ``python -m torch.distributed.run --standalone --nproc-per-node N
-m quantflow.core.ddp <job.json>``; each rank runs :func:`worker`. Backend gloo on CPU, nccl on GPUs
(``train.device``: auto picks CUDA when torch sees one).

What stays the same as the single-process path: the recipe, because both call the same functions of
quantflow/core/training.py: the model config and seeds, word2vec-initialized embeddings
(``pretrained_embeddings``), the synonym, deletion and swap augmentation of the training split, AdamW, the
learning-rate schedule (``schedule``, ``warmup_fraction``), ``label_smoothing``, the validation macro-F1 that
picks the best epoch and stops early, the history rows, and the saved folder (the very same files). What differs: every rank draws the
same augmented copy of the training split each epoch (its rng depends on seed and epoch only) and trains on
its own shard of it (DistributedSampler), in batches of ``ceil(batch_size / N)`` per rank so one optimizer
step still averages ``batch_size`` texts (DDP all-reduces the gradients); the schedule counts this rank's
steps per epoch. The random order differs from the single-process run, so the weights are close, not equal.
Rank 0 alone runs word2vec: DistributedDataParallel broadcasts rank 0's parameters to every rank when it wraps
the model (``init_sync``), so all ranks start from rank 0's weights.

Rank 0 alone evaluates the validation split, decides whether to stop and broadcasts the decision, so every
rank leaves the loop after the same epoch; rank 0 alone writes the model folder and the history file. The
train step logs nothing to MLflow (register does, after compress), so "only rank 0 writes" is about files.
Ranks other than 0 log warnings only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from quantflow.core.errors import QuantflowError
from quantflow.core.models import ModelConfig, build_model
from quantflow.core.params import TrainParams
from quantflow.core.training import (
    Setup,
    Tracker,
    TrainResult,
    current_lr,
    epoch_ids,
    make_optimizer,
    make_scheduler,
    save_outputs,
    seed_everything,
    setup,
    train_step,
)

logger = logging.getLogger("quantflow.core.ddp")  # not __name__: torchrun runs this module as __main__

REPO_ROOT = Path(__file__).resolve().parents[2]


class DistributedTrainingError(QuantflowError):
    """torchrun or one of its ranks failed; the message carries the launcher's output."""


@dataclass(frozen=True)
class Job:
    """What every rank needs, as JSON on disk (torchrun passes only argv to its ranks)."""

    params: dict
    features_dir: str
    tokenizer_dir: str
    model_dir: str
    history_path: str
    seed: int


def resolve_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error naming the fix."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DistributedTrainingError(
            "train.device is cuda but torch sees no GPU (torch.cuda.is_available() is False); "
            "set train.device: auto or cpu"
        )
    return device


def uses_distributed(params: TrainParams) -> bool:
    """The torchrun path: more than one worker, or a GPU (one process per GPU). 1 CPU worker stays simple."""
    return params.workers > 1 or resolve_device(params.device) == "cuda"


# --- the launcher (the caller's process) -------------------------------------------------------------------


def torchrun_command(workers: int, job_file: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(workers),
        "-m",
        "quantflow.core.ddp",
        str(job_file),
    ]


def rank_env(params: TrainParams) -> dict[str, str]:
    """Each rank gets ``train.threads // workers`` intra-op threads (at least 1): N ranks share the cores."""
    threads = max(1, params.threads // params.workers)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def train_distributed(
    params: TrainParams,
    features_dir: Path,
    tokenizer_dir: Path,
    model_dir: Path,
    history_path: Path,
    seed: int,
) -> TrainResult:
    """Run :func:`worker` on ``params.workers`` processes under torchrun; return what rank 0 saved."""
    job = Job(
        params.model_dump(mode="json"),
        *(str(p.resolve()) for p in (features_dir, tokenizer_dir, model_dir, history_path)),
        seed,
    )
    with tempfile.TemporaryDirectory(prefix="quantflow-ddp-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(asdict(job)), encoding="utf-8")
        command = torchrun_command(params.workers, job_file)
        logger.info("train: DDP on %d processes: %s", params.workers, " ".join(command))
        done = subprocess.run(command, env=rank_env(params), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DistributedTrainingError(
            f"torchrun exited with code {done.returncode} training into {model_dir}; "
            f"its output ends with:\n{_tail(done.stdout + done.stderr)}"
        )
    # rank 0's progress lines, e.g. "INFO quantflow.core.training: train: epoch 1 loss ...", repeated here
    for line in done.stderr.splitlines():
        if "quantflow.core.ddp: train:" in line or "quantflow.core.training: train:" in line:
            logger.info("rank 0 %s", line.split(": ", 1)[1])
    history = json.loads(history_path.read_text(encoding="utf-8"))
    best = max(history, key=lambda row: (row["val_macro_f1"], -row["epoch"]))
    return TrainResult(model_dir, history, best["epoch"], best["val_macro_f1"])


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- one rank -----------------------------------------------------------------------------------------------


def shard_epoch(
    ddp: nn.Module,
    optimization: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    data: tuple[np.ndarray, np.ndarray],
    sampler: DistributedSampler,
    batch_size: int,
    label_smoothing: float,
) -> float:
    """One pass over this rank's shard of ``data``; returns the mean training loss over every rank's texts."""
    ids, y = data
    device = next(ddp.parameters()).device
    ddp.train()
    order = np.fromiter(iter(sampler), dtype=np.int64)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        loss = train_step(ddp, optimization[0], (ids[idx], y[idx]), optimization[1], label_smoothing, device)
        total += torch.tensor([loss * len(idx), len(idx)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total[0] / total[1])


def _cpu_copy(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """The model itself on CPU; a CPU copy of a GPU model (validation and saving run on CPU)."""
    if next(model.parameters()).device.type == "cpu":
        return model
    copy = build_model(cfg)
    copy.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    return copy


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, the same on every rank."""
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def check_same_copy(ids: np.ndarray, epoch: int, device: torch.device) -> None:
    """Fail loudly if this rank's augmented copy differs from rank 0's (the shards would overlap and miss)."""
    mine = zlib.crc32(np.ascontiguousarray(ids).tobytes())
    theirs = torch.tensor([mine], dtype=torch.int64, device=device)
    dist.broadcast(theirs, src=0)
    if int(theirs.item()) != mine:
        raise DistributedTrainingError(
            f"epoch {epoch}: rank {dist.get_rank()} drew a different augmented copy of the training split "
            "than rank 0; quantflow.core.training.epoch_ids must depend on seed and epoch only"
        )


def worker(job: Job) -> None:
    """One rank: shard, train, synchronise; rank 0 evaluates, decides and writes."""
    params = TrainParams.model_validate(job.params)
    device_kind = resolve_device(params.device)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        seed_everything(job.seed, max(1, params.threads // world))
        ready = setup(params, Path(job.features_dir), Path(job.tokenizer_dir), job.seed, pretrained=rank == 0)
        model = ready.model.to(device)
        # DDP broadcasts rank 0's parameters here (init_sync): word2vec ran on rank 0 only
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if device_kind == "cuda" else None)
        tracker = train_ranks(ddp, params, ready, job.seed)
        if rank == 0:
            save_outputs(tracker, ready, Path(job.tokenizer_dir), Path(job.model_dir), Path(job.history_path))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_ranks(ddp: DistributedDataParallel, params: TrainParams, ready: Setup, seed: int) -> Tracker:
    """The epoch loop on every rank; rank 0's tracker holds the history and the best weights."""
    rank, world = dist.get_rank(), dist.get_world_size()
    device = next(ddp.parameters()).device
    (train_ids, train_y), val = ready.data["train"], ready.data["val"]
    sampler = DistributedSampler(range(len(train_ids)), world, rank, shuffle=True, seed=seed)
    per_rank_batch = math.ceil(params.batch_size / world)
    optimizer = make_optimizer(ddp, params)
    scheduler = make_scheduler(optimizer, params, math.ceil(sampler.num_samples / per_rank_batch))
    tracker = Tracker(params.patience)
    logger.info(
        "train: %d ranks (%s), %d training texts, %d per rank, batches of %d per rank",
        world,
        dist.get_backend(),
        len(train_ids),
        sampler.num_samples,
        per_rank_batch,
    )
    for epoch in range(1, params.epochs + 1):
        ids = epoch_ids(params, ready, seed, epoch)
        check_same_copy(ids, epoch, device)
        sampler.set_epoch(epoch)
        loss = shard_epoch(
            ddp, (optimizer, scheduler), (ids, train_y), sampler, per_rank_batch, params.label_smoothing
        )
        lr = current_lr(optimizer)
        stop = tracker.update(epoch, loss, lr, _cpu_copy(ddp.module, ready.cfg), val) if rank == 0 else False
        if broadcast_flag(stop, device):
            break
    return tracker


@record  # a failing rank's traceback reaches torchrun's summary, hence the launcher's error
def main(argv: list[str]) -> None:
    """torchrun's entry point on every rank: ``python -m quantflow.core.ddp <job.json>``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    if len(argv) != 1:
        raise SystemExit("usage: python -m torch.distributed.run ... -m quantflow.core.ddp <job.json>")
    worker(Job(**json.loads(Path(argv[0]).read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main(sys.argv[1:])
