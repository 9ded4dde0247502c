"""The compressed variants of a trained model, each built into its own self-describing ONNX folder.

``fp32`` (the export, parity with PyTorch checked), ``int8-dynamic`` and ``int8-static`` (ONNX Runtime
quantization, quantflow/core/quantize.py), ``pruned-int8`` (per-layer magnitude pruning, fine-tune, int8),
``slim-int8`` (structured pruning of any family, quantflow/core/slim.py: fewer filters, token and n-gram rows
behind an in-graph remap, heads and feed-forward units; the smaller model rebuilt, fine-tuned, int8) and
``distilled-int8`` (a smaller student trained on the model's softened logits, quantflow/core/distill.py, int8).
The compress step decides which to build, scores and times them and chooses one; this module builds them
and turns their rows into the goals' ratios (:func:`goal_ratios`).
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
from quantflow.core.distill import DistillSettings, distill_student, student_config
from quantflow.core.errors import DataError
from quantflow.core.export import check_parity, export_onnx, torch_threads
from quantflow.core.models import ModelConfig, build_model, load_model
from quantflow.core.onnx_model import MODEL_FILE
from quantflow.core.params import VARIANTS, CompressParams
from quantflow.core.pruning import count_params, magnitude_prune, make_permanent, weight_sparsity
from quantflow.core.quantize import BucketedReader, quantize_int8, quantize_static_qdq
from quantflow.core.slim import SlimSpec, slim_and_fine_tune
from quantflow.core.text import Tokenizer
from quantflow.core.training import train_epoch

logger = logging.getLogger(__name__)

FP32, DYNAMIC, STATIC, PRUNED, SLIM, DISTILLED = VARIANTS
# what the goals hold a variant against, and the name of that baseline in compression.json's ratios:
# slim-int8 against ONNX fp32 (size, speed), the distilled student against its teacher's own int8
VERSUS = {SLIM: (FP32, "fp32"), DISTILLED: (STATIC, "teacher_int8")}


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
    encoded: tuple[np.ndarray, np.ndarray] | None = None

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The training split as (N, T) ids and (N,) class indices, encoded once for every builder."""
        if self.encoded is None:
            index = {label: i for i, label in enumerate(self.source.labels)}
            texts, labels = self.train
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise DataError(
                    f"training split has labels {unknown} the model does not know ({self.source.labels})"
                )
            y = np.array([index[label] for label in labels], dtype=np.int64)
            self.encoded = (self.tokenizer.encode(texts), y)
        return self.encoded

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
    ids, y = job.train_arrays()
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


def slim_spec(settings: CompressParams) -> SlimSpec:
    """params.yaml's shares for slim-int8; a share that does not fit the model's family is ignored."""
    s = settings
    return SlimSpec(s.filter_keep, s.head_keep, s.ff_keep, s.token_keep, s.ngram_keep)


def build_slim(job: Job) -> Built:
    """Structured pruning (smaller layers rebuilt, dropped ids remapped in the graph), fine-tune, static int8."""
    ids, _ = job.train_arrays()

    def tune(model: nn.Module) -> nn.Module:
        return fine_tune(job, model, SLIM)

    slimmed = slim_and_fine_tune(job.model, job.cfg, slim_spec(job.settings), ids, tune)
    _static_int8(job, _export_checked(job, slimmed.model, slimmed.cfg, SLIM), SLIM)
    facts = {k: v for k, v in slimmed.facts.items() if k != "params"}  # the report counts params itself
    return Built(job.variants_dir / SLIM, slimmed.model, slimmed.cfg.to_dict(), facts)


def distill_settings(settings: CompressParams, seed: int) -> DistillSettings:
    s = settings
    return DistillSettings(
        s.distill_temperature,
        s.distill_alpha,
        s.distill_epochs,
        s.distill_batch_size,
        s.distill_lr,
        s.distill_weight_decay,
        seed,
    )


def student_of(job: Job) -> ModelConfig:
    """The student's config: the teacher's vocabulary, classes and max_len, ``compress.distill_student``'s sizes."""
    st = job.settings.distill_student
    cfg = student_config(
        job.cfg, st.arch, embed_dim=st.embed_dim, num_filters=st.num_filters, kernel_sizes=st.kernel_sizes
    )
    if cfg.arch == "transformer" and cfg.embed_dim % cfg.heads:
        raise ValueError(
            f"compress.distill_student.embed_dim ({cfg.embed_dim}) must be a multiple of the teacher's "
            f"{cfg.heads} attention heads for a transformer student"
        )
    return cfg


def build_distilled(job: Job) -> Built:
    """A smaller student trained on the model's softened logits and the labels, then static int8."""
    cfg = student_of(job)
    ids, y = job.train_arrays()
    torch.use_deterministic_algorithms(True)  # as in train and the fine-tune: reruns give the same bytes
    with torch_threads(1):
        result = distill_student(job.model, cfg, ids, y, distill_settings(job.settings, job.seed))
    _static_int8(job, _export_checked(job, result.model, cfg, DISTILLED), DISTILLED)
    last = result.history[-1]
    facts = {
        "student_arch": cfg.arch,
        "params_before": count_params(job.model),
        "teacher_agreement": last["agreement"],
        "distill_loss": last["loss"],
    }
    return Built(job.variants_dir / DISTILLED, result.model, cfg.to_dict(), facts)


def goal_ratios(variants: dict[str, dict], reference: dict, chosen: str) -> dict[str, float]:
    """compression.json's ratios (the issues' goals): the chosen variant vs PyTorch eager (``reference``),
    its size vs fp32, then :data:`VERSUS`'s pairs (slim-int8 vs fp32, distilled-int8 vs the teacher's int8)."""
    c, fp32 = variants[chosen], variants[FP32]
    out = {
        "size_ratio": round(c["size_bytes"] / fp32["size_bytes"], 4),
        "chosen_latency_speedup_vs_torch": round(reference["latency_p50_ms"] / c["latency_p50_ms"], 3),
        "chosen_model_speedup_vs_torch": round(reference["model_p50_ms"] / c["model_p50_ms"], 3),
        "chosen_throughput_ratio_vs_torch": round(c["throughput_b64"] / reference["throughput_b64"], 3),
    }
    for name, (base_name, vs) in VERSUS.items():  # slim vs ONNX fp32, distilled vs the teacher's int8
        if name in variants and base_name in variants:
            v, base, key = variants[name], variants[base_name], name.split("-")[0]
            out[f"{key}_size_ratio_vs_{vs}"] = round(v["size_bytes"] / base["size_bytes"], 4)
            out[f"{key}_latency_speedup_vs_{vs}"] = round(base["latency_p50_ms"] / v["latency_p50_ms"], 3)
            out[f"{key}_model_speedup_vs_{vs}"] = round(base["model_p50_ms"] / v["model_p50_ms"], 3)
    return out


BUILDERS: dict[str, Callable[[Job], Built]] = {
    FP32: build_fp32,
    DYNAMIC: build_dynamic,
    STATIC: build_static,
    PRUNED: build_pruned,
    SLIM: build_slim,
    DISTILLED: build_distilled,
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
