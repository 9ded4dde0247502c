"""Data-parallel training: the train step on N processes with PyTorch DistributedDataParallel under torchrun.

``train.workers: N`` (or ``quantflow stage train --workers N``) routes :func:`tasks.train.train` here. The
launcher writes the job to a JSON file and runs ``python -m torch.distributed.run --standalone
--nproc-per-node N -m tasks.ddp <job.json>``; each rank runs :func:`worker`. Backend gloo on CPU, nccl on GPUs
(``train.device``: auto picks CUDA when torch sees one).

What stays the same as the single-process path: the model config, seeds, AdamW, the validation macro-F1 that
picks the best epoch and stops early, and the saved folder (the very same files). What differs: every rank
sees its own shard of the shuffled training set (DistributedSampler), batches of ``ceil(batch_size / N)`` per
rank so one optimizer step still averages ``batch_size`` texts (DDP all-reduces the gradients), and the
random order differs from the single-process run, so the weights are close, not equal.

Rank 0 alone evaluates the validation split, decides whether to stop and broadcasts the decision, so every
rank leaves the loop after the same epoch; rank 0 alone writes the model folder and the history file. The
train step logs nothing to MLflow (register does, after compress), so "only rank 0 writes" is about files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from quantflow.errors import QuantflowError
from quantflow.models import ModelConfig, build_model, save_model
from quantflow.params import TrainParams
from tasks.preprocess import load_features
from tasks.train import TrainResult, model_config, predict_logits, seed_everything, trim

logger = logging.getLogger("tasks.ddp")  # not __name__: torchrun runs this module as __main__

REPO_ROOT = Path(__file__).resolve().parents[1]


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
        "tasks.ddp",
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
    # rank 0's progress lines, e.g. "INFO tasks.ddp: train: epoch 1 loss ...", repeated in this process's log
    for line in done.stderr.splitlines():
        if "tasks.ddp: train:" in line:
            logger.info("rank 0 %s", line.split("tasks.ddp: ", 1)[1])
    history = json.loads(history_path.read_text(encoding="utf-8"))
    best = max(history, key=lambda row: (row["val_macro_f1"], -row["epoch"]))
    return TrainResult(model_dir, history, best["epoch"], best["val_macro_f1"])


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --- one rank -----------------------------------------------------------------------------------------------


def shard_epoch(
    ddp: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[np.ndarray, np.ndarray],
    sampler: DistributedSampler,
    batch_size: int,
    device: torch.device,
) -> float:
    """One pass over this rank's shard; returns the mean training loss over every rank's texts."""
    ids, y = data
    ddp.train()
    order = np.fromiter(iter(sampler), dtype=np.int64)
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(ddp(trim(ids[idx]).to(device)), torch.from_numpy(y[idx]).to(device))
        optimizer.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients across ranks here
        optimizer.step()
        total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total[0] / total[1])


def validate(model: nn.Module, data: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Accuracy and macro-F1 on the validation split (rank 0, CPU copy of the weights)."""
    ids, y = data
    pred = predict_logits(model, ids).argmax(axis=1)
    return float(accuracy_score(y, pred)), float(f1_score(y, pred, average="macro"))


@dataclass
class Tracker:
    """Rank 0's bookkeeping: history, best weights, and whether to stop (then broadcast to every rank)."""

    patience: int
    cfg: ModelConfig
    history: list[dict]
    best_state: dict | None = None
    best_epoch: int = 0
    best_f1: float = -1.0

    def update(self, epoch: int, loss: float, model: nn.Module, val: tuple[np.ndarray, np.ndarray]) -> bool:
        """Record the epoch; True when training should stop (``patience`` epochs without a better F1)."""
        cpu_model = _cpu_copy(model, self.cfg)
        acc, f1 = validate(cpu_model, val)
        row = {
            "epoch": epoch,
            "train_loss": round(loss, 6),
            "val_accuracy": round(acc, 6),
            "val_macro_f1": round(f1, 6),
        }
        self.history.append(row)
        logger.info("train: epoch %d loss %.4f val acc %.4f val macro-F1 %.4f", epoch, loss, acc, f1)
        if row["val_macro_f1"] > self.best_f1:
            self.best_f1, self.best_epoch = row["val_macro_f1"], epoch
            self.best_state = {k: v.detach().clone() for k, v in cpu_model.state_dict().items()}
            return False
        return epoch - self.best_epoch >= self.patience


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


def worker(job: Job) -> None:
    """One rank: shard, train, synchronise; rank 0 evaluates, decides and writes."""
    params = TrainParams.model_validate(job.params)
    device_kind = resolve_device(params.device)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if device_kind == "cuda" else "cpu")
    try:
        seed_everything(job.seed, max(1, params.threads // world))
        data = {name: load_features(Path(job.features_dir), name) for name in ("train", "val")}
        labels = json.loads((Path(job.features_dir) / "labels.json").read_text(encoding="utf-8"))
        vocab = json.loads((Path(job.tokenizer_dir) / "vocab.json").read_text(encoding="utf-8"))
        cfg = model_config(params, vocab, len(labels), max_len=data["train"][0].shape[1])
        model = build_model(cfg).to(device)  # same seed → same initial weights; DDP also broadcasts rank 0's
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if device_kind == "cuda" else None)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        sampler = DistributedSampler(range(len(data["train"][0])), world, rank, shuffle=True, seed=job.seed)
        per_rank_batch = math.ceil(params.batch_size / world)
        tracker = Tracker(params.patience, cfg, [])
        if rank == 0:
            logger.info(
                "train: %d ranks (%s), %d training texts, %d per rank, batches of %d per rank",
                world,
                dist.get_backend(),
                len(data["train"][0]),
                sampler.num_samples,
                per_rank_batch,
            )
        for epoch in range(1, params.epochs + 1):
            sampler.set_epoch(epoch)
            loss = shard_epoch(ddp, optimizer, data["train"], sampler, per_rank_batch, device)
            stop = tracker.update(epoch, loss, model, data["val"]) if rank == 0 else False
            if broadcast_flag(stop, device):
                if rank == 0:
                    logger.info("train: early stop after epoch %d (best epoch %d)", epoch, tracker.best_epoch)
                break
        if rank == 0:
            save_outputs(job, tracker, labels)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def save_outputs(job: Job, tracker: Tracker, labels: list[str]) -> None:
    """Rank 0 only: the best epoch's weights as the usual model folder, and the history file."""
    cfg = tracker.cfg
    model = build_model(cfg)
    model.load_state_dict(tracker.best_state)
    best = tracker.history[tracker.best_epoch - 1]
    save_model(
        Path(job.model_dir),
        model,
        cfg,
        labels,
        Path(job.tokenizer_dir),
        metrics={"val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"]},
    )
    history_path = Path(job.history_path)
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(tracker.history, indent=2) + "\n")


@record  # a failing rank's traceback reaches torchrun's summary, hence the launcher's error
def main(argv: list[str]) -> None:
    """torchrun's entry point on every rank: ``python -m tasks.ddp <job.json>``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    if len(argv) != 1:
        raise SystemExit("usage: python -m torch.distributed.run ... -m tasks.ddp <job.json>")
    worker(Job(**json.loads(Path(argv[0]).read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main(sys.argv[1:])
