"""The compressed variants of a trained model, each built into its own self-describing ONNX folder.

``fp32`` (the export, parity with PyTorch checked), ``int8-dynamic`` and ``int8-static`` (ONNX Runtime
quantization, quantflow/core/quantize.py), ``pruned-int8`` (per-layer magnitude pruning, fine-tune, int8) and
``slim-int8`` (conv filters dropped by L1 norm, a narrower TextCNN rebuilt, fine-tune, int8). The compress step
decides which to build, scores and times them and chooses one; this module only builds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantflow.core.bundle import Manifest, copy_tokenizer
from quantflow.core.errors import DataError
from quantflow.core.export import check_parity, export_onnx, torch_threads
from quantflow.core.models import ModelConfig, build_model, load_model
from quantflow.core.onnx_model import MODEL_FILE
from quantflow.core.params import VARIANTS, CompressParams
from quantflow.core.pruning import magnitude_prune, make_permanent, slim_textcnn, weight_sparsity
from quantflow.core.quantize import BucketedReader, quantize_int8, quantize_static_qdq
from quantflow.core.text import Tokenizer
from quantflow.core.training import train_epoch

logger = logging.getLogger(__name__)

FP32, DYNAMIC, STATIC, PRUNED, SLIM = VARIANTS


@dataclass
class Job:
    """Everything the variant builders share for one compress run (``tmp``: scratch for derived exports)."""

    settings: CompressParams
    model: nn.Module
    cfg: ModelConfig
    source: Manifest
    model_dir: Path
    variants_dir: Path
    tokenizer: Tokenizer
    train: tuple[list[str], list[str]]
    parity_texts: list[str]
    seed: int
    tmp: Path
    reader: BucketedReader | None = None

    def calibration(self) -> BucketedReader:
        """One reader for every static quantization; histogram methods need a single padded length."""
        if self.reader is None:
            texts = sample(self.train[0], self.settings.calibration_samples, self.seed)
            bucket = 32 if self.settings.calibration == "minmax" else self.tokenizer.config.max_len
            self.reader = BucketedReader(self.tokenizer, texts, bucket=bucket)
        self.reader.rewind()
        return self.reader


@dataclass(frozen=True)
class Built:
    """One variant on disk and the PyTorch model it was made from (parameter counts, eager reference)."""

    folder: Path
    model: nn.Module
    config: dict
    facts: dict


def make_job(
    settings: CompressParams,
    model_dir: Path,
    variants_dir: Path,
    train: tuple[list[str], list[str]],
    parity_texts: list[str],
    seed: int,
    tmp: Path,
) -> Job:
    """The builders' shared inputs: the trained model of ``model_dir`` (loaded once) and its tokenizer."""
    model, cfg, source = load_model(model_dir)
    tokenizer = Tokenizer.load(model_dir)
    return Job(
        settings, model, cfg, source, model_dir, variants_dir, tokenizer, train, parity_texts, seed, tmp
    )


def sample(items: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` items (all of them when there are fewer): stable across reruns."""
    if n >= len(items):
        return list(items)
    picked = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(picked)]


def fine_tune(job: Job, model: nn.Module, what: str) -> nn.Module:
    """A short AdamW fine-tune on the training split (``compress.finetune_epochs``), then eval mode."""
    epochs = job.settings.finetune_epochs
    if epochs == 0:
        return model.eval()
    index = {label: i for i, label in enumerate(job.source.labels)}
    texts, labels = job.train
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"training split has labels {unknown} the model does not know ({job.source.labels})")
    ids, y = job.tokenizer.encode(texts), np.array([index[label] for label in labels], dtype=np.int64)
    # as in train: the same seed and deterministic kernels whether the flow or `dvc repro` runs this step
    torch.manual_seed(job.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(job.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.settings.finetune_lr)
    # one thread: two OpenMP threads ran ~10x slower per batch whenever another process held a core
    with torch_threads(1):
        for epoch in range(1, epochs + 1):
            loss = train_epoch(model, optimizer, ids, y, 64, rng, f"fine-tune {what} {epoch}/{epochs}")
            logger.info("compress: fine-tune %s epoch %d/%d loss %.4f", what, epoch, epochs, loss)
    return model.eval()


def _static_int8(job: Job, fp32_path: Path, name: str) -> Path:
    out = job.variants_dir / name / MODEL_FILE
    return quantize_static_qdq(
        fp32_path, out, job.calibration(), job.settings.static_ops, job.settings.calibration
    )


def _export_checked(job: Job, model: nn.Module, cfg: ModelConfig, name: str) -> Path:
    """fp32 export of a derived model into the scratch folder, parity-checked like the main export."""
    folder = job.tmp / name
    export_onnx(model, cfg, folder / MODEL_FILE)
    Manifest(labels=job.source.labels, config=cfg.to_dict(), variant=f"onnx-{name}-fp32").save(folder)
    copy_tokenizer(job.model_dir, folder)
    check_parity(model, folder, job.parity_texts, job.settings.parity_atol)
    return folder / MODEL_FILE


def build_fp32(job: Job) -> Built:
    folder = job.variants_dir / FP32
    export_onnx(job.model, job.cfg, folder / MODEL_FILE)
    write_variant_folder(folder, job.source, job.model_dir, FP32)
    diff = check_parity(job.model, folder, job.parity_texts, job.settings.parity_atol)
    return Built(folder, job.model, job.cfg.to_dict(), {"parity_max_abs_diff": diff})


def build_dynamic(job: Job) -> Built:
    folder = job.variants_dir / DYNAMIC
    s = job.settings
    quantize_int8(job.variants_dir / FP32 / MODEL_FILE, folder / MODEL_FILE, s.quantize_ops, s.weight_type)
    return Built(folder, job.model, job.cfg.to_dict(), {})


def build_static(job: Job) -> Built:
    _static_int8(job, job.variants_dir / FP32 / MODEL_FILE, STATIC)
    return Built(job.variants_dir / STATIC, job.model, job.cfg.to_dict(), {})


def build_pruned(job: Job) -> Built:
    """Per-layer magnitude pruning, a fine-tune with the masks on, masks folded in, then static int8."""
    model = build_model(job.cfg)
    model.load_state_dict(job.model.state_dict())
    magnitude_prune(model, job.settings.sparsity)
    make_permanent(fine_tune(job, model, PRUNED))
    reached = weight_sparsity(model)
    logger.info("compress: %s sparsity %.4f (target %.4f)", PRUNED, reached, job.settings.sparsity)
    _static_int8(job, _export_checked(job, model, job.cfg, PRUNED), PRUNED)
    return Built(job.variants_dir / PRUNED, model, job.cfg.to_dict(), {"sparsity": round(reached, 6)})


def build_slim(job: Job) -> Built:
    """Drop the conv filters with the smallest L1 norm, rebuild a narrower TextCNN, fine-tune, static int8."""
    model, cfg = slim_textcnn(job.model, job.cfg, job.settings.filter_keep)
    fine_tune(job, model, SLIM)
    _static_int8(job, _export_checked(job, model, cfg, SLIM), SLIM)
    facts = {"filters_per_width": cfg.num_filters, "filters_per_width_before": job.cfg.num_filters}
    return Built(job.variants_dir / SLIM, model, cfg.to_dict(), facts)


BUILDERS: dict[str, Callable[[Job], Built]] = {
    FP32: build_fp32,
    DYNAMIC: build_dynamic,
    STATIC: build_static,
    PRUNED: build_pruned,
    SLIM: build_slim,
}


def write_variant_folder(
    folder: Path,
    source: Manifest,
    model_dir: Path,
    name: str,
    metrics: dict | None = None,
    config: dict | None = None,
) -> None:
    """model.json (the source model's labels, this variant's config, name and metrics) + the tokenizer."""
    Manifest(
        labels=source.labels, config=config or source.config, variant=f"onnx-{name}", metrics=metrics
    ).save(folder)
    copy_tokenizer(model_dir, folder)
