"""Training pieces shared by the train step's single-process path and its data-parallel path (core/ddp.py).

Both paths train with the same functions: :func:`setup` (features, model, word2vec init, synonym lexicon),
:func:`epoch_ids` (the epoch's augmented copy), :func:`make_optimizer`, :func:`make_scheduler`,
:func:`train_step` (loss with label smoothing, one optimizer and scheduler step), :class:`Tracker` (history,
best epoch, early stopping) and :func:`save_outputs`. A training option belongs in one of them, so that it
applies to both paths. compress fine-tunes its pruned variants with :func:`train_epoch`; evaluate and the
quality study predict with :func:`predict_logits`.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from tqdm import tqdm

from quantflow.core import epochs
from quantflow.core.augment import augment_ids
from quantflow.core.features import load_features, load_labels
from quantflow.core.models import ModelConfig, build_model, save_model
from quantflow.core.params import TrainParams
from quantflow.core.synonyms import SynonymAugmenter, synonym_augmenter
from quantflow.core.text import CHAR_WORD, SEP

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What the train step produced: the model folder, the per-epoch history and the best epoch."""

    model_dir: Path
    history: list[dict]
    best_epoch: int
    best_val_macro_f1: float


def seed_everything(seed: int, threads: int) -> None:
    """Same seed, same data, same machine kind → the same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def trim(ids: np.ndarray) -> torch.Tensor:
    """Cut a batch to its longest text: padding does not change the logits, only the cost."""
    width = max(1, int((ids != 0).sum(axis=1).max()))
    return torch.from_numpy(ids[:, :width])


def predict_logits(model: nn.Module, ids: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, T) ids → (N, C) logits, in eval mode and without gradients."""
    model.eval()
    with torch.inference_mode():
        parts = [model(trim(ids[i : i + batch_size])).numpy() for i in range(0, len(ids), batch_size)]
    return np.concatenate(parts)


def model_config(params: TrainParams, vocab: dict[str, int], num_classes: int, max_len: int) -> ModelConfig:
    """The architecture of ``train.model`` for this vocabulary (char_word_textcnn takes its ``<sep>`` id)."""
    return ModelConfig(
        arch=params.model,
        vocab_size=len(vocab),
        num_classes=num_classes,
        embed_dim=params.embed_dim,
        num_filters=params.num_filters,
        kernel_sizes=tuple(params.kernel_sizes),
        dropout=params.dropout,
        layers=params.transformer_layers,
        heads=params.transformer_heads,
        ff_dim=params.transformer_ff_dim,
        max_len=max_len,
        extra=model_extra(params, vocab),
    )


def model_extra(params: TrainParams, vocab: dict[str, int]) -> dict[str, int]:
    if params.model in ("fasttext", "ngram_textcnn"):
        return {"ngram_max": params.ngram_max, "buckets": params.buckets}
    if params.model == "char_word_textcnn":
        if SEP not in vocab:
            raise ValueError(
                f"train.model = char_word_textcnn needs preprocess.segmenter = {CHAR_WORD} (the vocabulary "
                f"has no {SEP!r}); set both, then rerun preprocess"
            )
        return {"sep_id": vocab[SEP]}
    return {}


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: constant, or linear warm-up then cosine decay to 0 by the last epoch.

    The horizon is ``epochs`` even when early stopping ends sooner: the decay does not depend on the outcome.
    """
    total = max(1, params.epochs * steps_per_epoch)
    warmup = int(params.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def init_embeddings(model: nn.Module, train_ids: np.ndarray, seed: int) -> None:
    """Copy word2vec vectors of the training split's chars into every char embedding table of ``model``."""
    from quantflow.core.pretrain import word2vec_vectors

    tables = [m for name, m in model.named_modules() if isinstance(m, nn.Embedding) and "ngrams" not in name]
    tables = [t for t in tables if t.padding_idx == 0]  # char tables (positions and n-gram buckets have none)
    vectors: dict[tuple[int, int], torch.Tensor] = {}  # one word2vec run per table shape
    for table in tables:
        shape = (table.num_embeddings, table.embedding_dim)
        if shape not in vectors:
            vectors[shape] = torch.from_numpy(word2vec_vectors(train_ids, *shape, seed))
        with torch.no_grad():
            table.weight.copy_(vectors[shape])


def make_synonyms(
    train_ids: np.ndarray, tokenizer_dir: Path, vocab: dict[str, int], dim: int, seed: int
) -> SynonymAugmenter:
    """The synonym augmenter of the training split, at char or word level as the tokenizer segments."""
    config = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    if config["language"] != "zh" or config["segmenter"] not in ("char", "jieba"):
        raise ValueError(
            "train.augment_synonym needs a Chinese char or jieba tokenizer "
            f"(got language {config['language']!r}, segmenter {config['segmenter']!r})"
        )
    return synonym_augmenter(train_ids, vocab, config["segmenter"] == "char", dim, seed)


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


@dataclass(frozen=True)
class Setup:
    """What both training paths start from: the features, the model before training, the synonym augmenter."""

    data: dict[str, tuple[np.ndarray, np.ndarray]]  # split → (ids (N, T), labels (N,))
    labels: list[str]
    cfg: ModelConfig
    model: nn.Module
    synonyms: SynonymAugmenter | None
    fixed_ids: tuple[int, ...]  # never dropped nor moved by augmentation: a char+word tokenizer's <sep>


def setup(
    params: TrainParams, features_dir: Path, tokenizer_dir: Path, seed: int, pretrained: bool = True
) -> Setup:
    """Load the features and build the model (word2vec-initialized when ``train.pretrained_embeddings``).

    Call after :func:`seed_everything`: the same seed gives the same initial weights. ``pretrained=False``
    skips word2vec: DDP ranks other than 0 do, since DistributedDataParallel copies rank 0's weights at
    construction."""
    data = {name: load_features(features_dir, name) for name in ("train", "val")}
    labels = load_labels(features_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    train_ids = data["train"][0]
    cfg = model_config(params, vocab, len(labels), max_len=train_ids.shape[1])
    model = build_model(cfg)
    if params.pretrained_embeddings and pretrained:
        init_embeddings(model, train_ids, seed)
    logger.info(
        "train: %s with %d parameters on %d texts",
        cfg.arch,
        sum(p.numel() for p in model.parameters()),
        len(train_ids),
    )
    synonyms = None
    if params.augment_synonym > 0:
        synonyms = make_synonyms(train_ids, tokenizer_dir, vocab, cfg.embed_dim, seed)
    fixed_ids = (vocab[SEP],) if SEP in vocab else ()  # a char+word tokenizer's, whatever the model
    return Setup(data, labels, cfg, model, synonyms, fixed_ids)


def epoch_ids(params: TrainParams, ready: Setup, seed: int, epoch: int) -> np.ndarray:
    """The training ids of one epoch: a fresh corrupted copy (synonym replacement when ``ready.synonyms`` is
    set, then char deletion and swap, which never drop or move ``ready.fixed_ids``), or the training ids
    themselves when no augmentation is asked for.

    The draws depend on ``seed`` and ``epoch`` only: every DDP rank makes the same copy and trains on its shard
    of it, and turning augmentation on does not change the order batches are shuffled in."""
    rng = np.random.default_rng((seed, epoch))
    source = ready.synonyms.replace(params.augment_synonym, rng) if ready.synonyms else ready.data["train"][0]
    return augment_ids(source, params.augment_delete, params.augment_swap, rng, ready.fixed_ids)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[np.ndarray, np.ndarray],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
    device: torch.device | str = "cpu",
) -> float:
    """One optimizer step on ``batch`` (ids (B, T), labels (B,)), then one scheduler step; returns the loss."""
    ids, y = batch
    logits = model(trim(ids).to(device))
    loss = F.cross_entropy(logits, torch.from_numpy(y).to(device), label_smoothing=label_smoothing)
    optimizer.zero_grad()
    loss.backward()  # under DDP, the gradients are all-reduced (averaged over ranks) here
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next step would use (after an epoch: where the schedule has got to)."""
    return float(optimizer.param_groups[0]["lr"])


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ids: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    desc: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
) -> float:
    """One pass over shuffled batches (the scheduler, if any, steps per batch); returns the mean training loss."""
    model.train()
    order = rng.permutation(len(ids))
    total, batches = 0.0, range(0, len(order), batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", mininterval=1.0, leave=False):
        idx = order[start : start + batch_size]
        total += train_step(model, optimizer, (ids[idx], y[idx]), scheduler, label_smoothing) * len(idx)
    return total / len(ids)


@dataclass
class Tracker:
    """Per-epoch bookkeeping of both training paths: history rows, the best epoch's weights, early stopping."""

    patience: int
    history: list[dict] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_epoch: int = 0
    best_f1: float = -1.0

    def update(
        self, epoch: int, loss: float, lr: float, model: nn.Module, val: tuple[np.ndarray, np.ndarray]
    ) -> bool:
        """Validate ``model`` (on CPU) and record the epoch; True when ``patience`` epochs brought no better F1."""
        pred = predict_logits(model, val[0]).argmax(axis=1)
        row = {
            "epoch": epoch,
            "train_loss": round(loss, 6),
            "val_accuracy": round(float(accuracy_score(val[1], pred)), 6),
            "val_macro_f1": round(float(f1_score(val[1], pred, average="macro")), 6),
            "lr": lr,  # where the schedule stands after the epoch (cosine: 0 after the last one)
        }
        self.history.append(row)
        epochs.report(row)
        logger.info(
            "train: epoch %d loss %.4f val acc %.4f val macro-F1 %.4f lr %.3g",
            epoch,
            loss,
            row["val_accuracy"],
            row["val_macro_f1"],
            lr,
        )
        if row["val_macro_f1"] > self.best_f1:
            self.best_f1, self.best_epoch = row["val_macro_f1"], epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        if epoch - self.best_epoch >= self.patience:
            logger.info("train: early stop after epoch %d (best epoch %d)", epoch, self.best_epoch)
            return True
        return False


def fit(params: TrainParams, ready: Setup, seed: int) -> Tracker:
    """Train up to ``epochs``; stop after ``patience`` epochs without a better validation macro-F1.

    Every epoch trains on :func:`epoch_ids` (a fresh corrupted copy when augmentation is on)."""
    model = ready.model
    optimizer = make_optimizer(model, params)
    rng = np.random.default_rng(seed)  # the shuffle order
    (train_ids, train_y), val = ready.data["train"], ready.data["val"]
    scheduler = make_scheduler(optimizer, params, math.ceil(len(train_ids) / params.batch_size))
    tracker = Tracker(params.patience)
    for epoch in range(1, params.epochs + 1):
        ids = epoch_ids(params, ready, seed, epoch)
        desc = f"epoch {epoch}/{params.epochs}"
        loss = train_epoch(
            model, optimizer, ids, train_y, params.batch_size, rng, desc, scheduler, params.label_smoothing
        )
        if tracker.update(epoch, loss, current_lr(optimizer), model, val):
            break
    return tracker


def save_outputs(
    tracker: Tracker, ready: Setup, tokenizer_dir: Path, model_dir: Path, history_path: Path
) -> TrainResult:
    """The best epoch's weights as a self-describing model folder, and the history file."""
    model = build_model(ready.cfg)
    model.load_state_dict(tracker.best_state)
    best = tracker.history[tracker.best_epoch - 1]
    save_model(
        model_dir,
        model,
        ready.cfg,
        ready.labels,
        tokenizer_dir,
        metrics={"val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"]},
    )
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(tracker.history, indent=2) + "\n")
    return TrainResult(model_dir, tracker.history, tracker.best_epoch, best["val_macro_f1"])
