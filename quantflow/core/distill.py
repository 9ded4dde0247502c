"""Knowledge distillation: a smaller student trained on the teacher's softened logits and the hard labels.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

(Hinton et al., 2015: the T^2 keeps the soft term's gradients on the scale of the hard term's whatever T.)
The teacher's logits are computed once, in eval mode (no dropout), over the training split: the teacher runs
once instead of once per epoch, and every epoch sees the same targets. With ``alpha = 1`` the labels are never
read. The student is any model of :mod:`quantflow.core.models` on the same tokenizer (the same ids in, the
same classes out): the teacher's family with smaller sizes, or a plain TextCNN. No ONNX, no Prefect here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantflow.core.models import BUCKETS, NGRAM_MAX, ModelConfig, build_model

logger = logging.getLogger(__name__)

AGREEMENT_SAMPLE = 2048  # training texts the per-epoch agreement with the teacher is measured on
NGRAM_ARCHS = ("fasttext", "ngram_textcnn")
SIZES = ("embed_dim", "num_filters", "kernel_sizes", "dropout", "layers", "heads", "ff_dim")
PRUNED_KEYS = ("token_rows", "ngram_rows", "head_dim")  # a pruned teacher's table sizes: not the student's


@dataclass(frozen=True)
class DistillSettings:
    """The student's training: temperature ``T``, the soft term's weight ``alpha``, a short AdamW run."""

    temperature: float = 2.0
    alpha: float = 0.7
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.002
    weight_decay: float = 0.0001
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"compress.distill_temperature must be > 0 (got: {self.temperature})")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"compress.distill_alpha must be in [0, 1] (got: {self.alpha})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"compress.distill_epochs, batch size and lr must be positive (got: {self.epochs}, "
                f"{self.batch_size}, {self.lr})"
            )


@dataclass
class Distilled:
    """The trained student (eval mode), its config and one row per epoch (loss, agreement with the teacher)."""

    model: nn.Module
    cfg: ModelConfig
    history: list[dict[str, float]] = field(default_factory=list)


def student_config(teacher: ModelConfig, arch: str | None = None, **sizes: Any) -> ModelConfig:
    """The teacher's config (vocabulary, classes, max_len) with another ``arch`` and smaller ``sizes``.

    ``sizes``: any of embed_dim, num_filters, kernel_sizes, dropout, layers, heads, ff_dim, and for the n-gram
    families ngram_max and buckets (the teacher's by default, when it has them)."""
    arch = arch or teacher.arch
    unknown = set(sizes) - {*SIZES, "ngram_max", "buckets"}
    if unknown:
        raise ValueError(
            f"student sizes {sorted(unknown)} are unknown; use {sorted({*SIZES, 'ngram_max', 'buckets'})}"
        )
    extra = {k: v for k, v in teacher.extra.items() if k not in PRUNED_KEYS}
    if arch in NGRAM_ARCHS:
        extra = {"ngram_max": NGRAM_MAX, "buckets": BUCKETS} | extra
        extra |= {k: int(sizes.pop(k)) for k in ("ngram_max", "buckets") if k in sizes}
    else:
        extra = {k: v for k, v in extra.items() if k not in ("ngram_max", "buckets")}
        if sizes.pop("ngram_max", None) is not None or sizes.pop("buckets", None) is not None:
            raise ValueError(f"ngram_max and buckets apply to {NGRAM_ARCHS}, not to a {arch} student")
    if "kernel_sizes" in sizes:
        sizes["kernel_sizes"] = tuple(sizes["kernel_sizes"])
    return replace(teacher, arch=arch, extra=extra, **sizes)


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``; logits (B, C), labels (B,) or None
    when ``alpha`` is 1 (the hard term is not computed then)."""
    log_student = F.log_softmax(student / temperature, dim=1)
    log_teacher = F.log_softmax(teacher / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2
    if alpha == 1:
        return soft
    if labels is None:
        raise ValueError(f"distillation with alpha {alpha} < 1 needs the labels (the hard-label term)")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)


def trim(ids: np.ndarray) -> torch.Tensor:
    """Cut a batch to its longest text: padding does not change the logits, only the cost."""
    width = max(1, int((ids != 0).sum(axis=1).max()))
    return torch.from_numpy(ids[:, :width])


def logits_of(model: nn.Module, ids: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, T) ids → (N, C) logits in eval mode, without gradients (the teacher's targets)."""
    model.eval()
    with torch.inference_mode():
        parts = [model(trim(ids[i : i + batch_size])).numpy() for i in range(0, len(ids), batch_size)]
    return np.concatenate(parts)


def agreement(model: nn.Module, teacher_logits: np.ndarray, ids: np.ndarray) -> float:
    """Share of texts on which the model predicts the teacher's class."""
    return float((logits_of(model, ids).argmax(axis=1) == teacher_logits.argmax(axis=1)).mean())


def distill_epoch(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    settings: DistillSettings,
    rng: np.random.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One pass over shuffled batches of (ids, teacher logits, labels or None); the mean loss per text."""
    ids, targets, labels = data
    student.train()
    order, total = rng.permutation(len(ids)), 0.0
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        y = None if labels is None or settings.alpha == 1 else torch.from_numpy(labels[idx])
        loss = distill_loss(
            student(trim(ids[idx])), torch.from_numpy(targets[idx]), y, settings.temperature, settings.alpha
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(idx)
    return total / len(ids)


def distill(
    student: nn.Module,
    teacher_logits: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray | None,
    settings: DistillSettings,
) -> list[dict[str, float]]:
    """Train ``student`` in place on (N, T) ``ids`` against the teacher's (N, C) logits (and the (N,) class
    indices ``labels`` unless ``alpha`` is 1): AdamW, cosine decay to 0, seeded shuffles and dropout. Returns
    one row per epoch: the loss and the agreement with the teacher on a fixed sample of the texts."""
    if len(ids) != len(teacher_logits) or (labels is not None and len(labels) != len(ids)):
        raise ValueError(
            f"distillation needs one teacher row and one label per text (got {len(ids)} texts, "
            f"{len(teacher_logits)} teacher rows, {None if labels is None else len(labels)} labels)"
        )
    torch.manual_seed(settings.seed)  # dropout
    rng = np.random.default_rng(settings.seed)  # shuffles
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * -(-len(ids) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    sample = slice(0, AGREEMENT_SAMPLE)
    history = []
    for epoch in range(1, settings.epochs + 1):
        loss = distill_epoch(student, optimizer, (ids, teacher_logits, labels), settings, rng, scheduler)
        agree = agreement(student, teacher_logits[sample], ids[sample])
        history.append({"epoch": epoch, "loss": round(loss, 6), "agreement": round(agree, 6)})
        logger.info("distill: epoch %d/%d loss %.4f agreement %.4f", epoch, settings.epochs, loss, agree)
    student.eval()
    return history


def distill_student(
    teacher: nn.Module,
    student_cfg: ModelConfig,
    ids: np.ndarray,
    labels: np.ndarray | None,
    settings: DistillSettings,
) -> Distilled:
    """Build a student of ``student_cfg`` (seeded) and distill ``teacher`` into it on the training split's
    (N, T) ``ids`` and (N,) class indices ``labels``: what the compress step calls."""
    targets = logits_of(teacher, ids)  # (N, C), once
    torch.manual_seed(settings.seed)
    student = build_model(student_cfg)
    logger.info(
        "distill: %s student with %d parameters from a teacher with %d, T %.2g alpha %.2g",
        student_cfg.arch,
        sum(p.numel() for p in student.parameters()),
        sum(p.numel() for p in teacher.parameters()),
        settings.temperature,
        settings.alpha,
    )
    history = distill(student, targets, ids, labels, settings)
    return Distilled(student, student_cfg, history)
