"""The compress step: every variant of the trained model as ONNX, measured side by side, and the choice.

Variants: ``fp32`` (the export, parity with PyTorch checked), ``int8-dynamic`` and ``int8-static`` (ONNX
Runtime quantization, see quantflow/core/quantize.py), ``pruned-int8`` (per-layer magnitude pruning, fine-tune, int8)
and ``slim-int8`` (conv filters dropped by L1 norm, a narrower TextCNN rebuilt, fine-tune, int8). Each is
scored on the test split and timed in one process against PyTorch eager (quantflow/core/measure.py); the policy in
``params.yaml`` (``compress.policy``, ``compress.max_drop_pp``) picks the variant that register logs.

Inputs: a model folder (``model.pt`` + ``model.json`` + tokenizer), the test split and, beside it, the
training split (calibration and fine-tuning). Outputs: one self-describing ONNX folder per variant under
``variants_dir``, ``reports/compression.json``, ``reports/compression.md`` and
``reports/plots/compression_pareto.png``. Graph exports carry no debug metadata with absolute paths.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from prefect import task
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from quantflow.core.bundle import Manifest, copy_tokenizer
from quantflow.core.errors import DataError, QuantflowError
from quantflow.core.measure import gzip_size, markdown_table, measure, onnx_runner, pareto_plot, torch_runner
from quantflow.core.models import ModelConfig, build_model, load_model
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE, OnnxClassifier
from quantflow.core.params import VARIANTS, CompressParams, Params
from quantflow.core.pruning import (
    count_params,
    magnitude_prune,
    make_permanent,
    slim_textcnn,
    weight_sparsity,
)
from quantflow.core.quantize import BucketedReader, quantize_int8, quantize_static_qdq
from quantflow.core.text import Tokenizer
from tasks.train import predict_logits, train_epoch

logger = logging.getLogger(__name__)

OPSET = 18  # the dynamo exporter's native opset (torchlib): no version-conversion pass
OUTPUT_NAME = "logits"
FP32, DYNAMIC, STATIC, PRUNED, SLIM = VARIANTS
TORCH_REFERENCE = "torch-fp32-eager"
PARITY_BATCH = 16
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir")


class ParityError(QuantflowError):
    """The exported ONNX model's logits differ from PyTorch's by more than compress.parity_atol."""


@dataclass(frozen=True)
class CompressResult:
    """What the step produced; ``variants`` maps a name to its path, metrics, size and accuracy drop."""

    variants: dict[str, dict]  # name -> {"path", "accuracy", "macro_f1", "size_bytes", "accuracy_drop"}
    chosen: str  # the variant that register logs
    parity_max_abs_diff: float
    report_path: Path


# --- quiet, single-threaded helpers -------------------------------------------------------------------------


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Mute the exporter's chatter (torchvision notices, deprecation warnings) during one export."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Tiny parity batches run ~10x faster on one intra-op thread than on two spinning in OpenMP barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _timed(message: str, *args: object) -> Iterator[None]:
    logger.info(message + " …", *args)
    start = time.perf_counter()
    yield
    logger.info(message + ": done in %.2f s", *args, time.perf_counter() - start)


# --- export -------------------------------------------------------------------------------------------------


def _example_ids(cfg: ModelConfig) -> torch.Tensor:
    """(2, T) ids, the second row padded: batch and length > 1 so torch.export keeps both axes symbolic."""
    length = max(2, min(cfg.max_len, 16))
    ids = torch.ones((2, length), dtype=torch.int64)
    ids[1, length // 2 :] = 0
    return ids


def _strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop per-node doc strings and metadata (stack traces with absolute source paths): the bytes must not
    depend on where the repository is checked out."""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    model.graph.doc_string = ""


def export_onnx(model: nn.Module, cfg: ModelConfig, out_path: Path) -> Path:
    """Export with the dynamo exporter to one self-contained file: ``ids`` (B, T) int64 → ``logits`` (B, C),
    batch and sequence axes dynamic (sequence up to ``cfg.max_len``, the tokenizer's cap)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=cfg.max_len)
    with _quiet_exporter():
        program = torch.onnx.export(
            model.eval(),
            (_example_ids(cfg),),
            None,
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 1: seq},),
        )
    proto = program.model_proto
    _strip_debug_info(proto)
    onnx.checker.check_model(proto)
    # weights inline, not in a side .data file: fine far below protobuf's 2 GB cap
    onnx.save_model(proto, out_path, save_as_external_data=False)
    return out_path


# --- parity -------------------------------------------------------------------------------------------------


def _parity_batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """Padded batches of mixed lengths, then every text alone (no padding at all)."""
    for start in range(0, len(texts), PARITY_BATCH):
        yield list(texts[start : start + PARITY_BATCH])
    for text in texts:
        yield [text]


def parity_max_abs_diff(model: nn.Module, onnx_dir: Path, texts: Sequence[str]) -> float:
    """The largest |torch logit - ONNX logit| over ``texts``, encoded with the ONNX folder's own tokenizer."""
    classifier = OnnxClassifier(onnx_dir, threads=1)
    worst = 0.0
    with _torch_threads(1), torch.inference_mode():
        for batch in _parity_batches(texts):
            ids = classifier.tokenizer.encode(batch)  # (B, T) int64
            expected = model(torch.from_numpy(ids)).numpy()  # (B, C)
            worst = max(worst, float(np.abs(classifier.logits(ids) - expected).max()))
    return worst


def check_parity(model: nn.Module, onnx_dir: Path, texts: Sequence[str], atol: float) -> float:
    """Raise ParityError, naming both numbers, when ONNX logits stray more than ``atol`` from PyTorch's."""
    start = time.perf_counter()
    diff = parity_max_abs_diff(model, onnx_dir, texts)
    if diff > atol:
        raise ParityError(
            f"{onnx_dir / MODEL_FILE}: ONNX logits differ from PyTorch's by up to {diff:.3g}, more than "
            f"compress.parity_atol = {atol:.3g} (on {len(texts)} test texts); the export is wrong (look for "
            "export-unfriendly ops in the model), or raise compress.parity_atol if the gap is numerical noise"
        )
    logger.info(
        "compress: parity ok on %d texts, max |diff| %.3g <= %.3g (%.2f s)",
        len(texts),
        diff,
        atol,
        time.perf_counter() - start,
    )
    return diff


# --- evaluation, folders, report ----------------------------------------------------------------------------


def read_split(path: Path, role: str = "test") -> tuple[list[str], list[str]]:
    """Texts and labels of a split file; errors name the file and what is wrong with it."""
    if not path.is_file():
        raise DataError(f"{path}: {role} split not found; run the split step first")
    frame = pd.read_parquet(path)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{path}: the {role} split is empty; nothing to {_PURPOSE[role]}")
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


_PURPOSE = {"test": "evaluate the variants on", "train": "calibrate and fine-tune the variants on"}


def read_test_split(test_path: Path) -> tuple[list[str], list[str]]:
    return read_split(test_path, "test")


def evaluate_onnx(folder: Path, texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of the folder's ONNX model on the texts (1 intra-op thread)."""
    classifier = OnnxClassifier(folder, threads=1)
    return scores(labels, classifier.predict(list(texts)), classifier.labels)


def scores(labels: Sequence[str], predicted: Sequence[str], label_set: Sequence[str]) -> dict[str, float]:
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(float(f1_score(labels, predicted, average="macro", labels=list(label_set))), 6),
    }


def _shown(path: Path) -> str:
    """Relative to the working folder (the project root under DVC and `quantflow run`): the same on every machine."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


# --- building the variants ----------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything the variant builders share for one compress run."""

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
    with _torch_threads(1):
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


BUILDERS = {
    FP32: build_fp32,
    DYNAMIC: build_dynamic,
    STATIC: build_static,
    PRUNED: build_pruned,
    SLIM: build_slim,
}


def plan(settings: CompressParams, cfg: ModelConfig) -> list[str]:
    """The variants to build, fp32 first (the reference); slim-int8 applies to a TextCNN only."""
    names = [FP32] + [n for n in VARIANTS if n in settings.variants and n != FP32]
    if cfg.arch != "textcnn" and SLIM in names:
        logger.info(
            "compress: skipping %s (filter pruning needs a textcnn, this model is %s)", SLIM, cfg.arch
        )
        names.remove(SLIM)
    return names


def build_variants(job: Job) -> dict[str, Built]:
    """Build every planned variant in order, logging progress per variant."""
    names = plan(job.settings, job.cfg)
    built: dict[str, Built] = {}
    for i, name in enumerate(names, start=1):
        with _timed("compress [%d/%d] building %s", i, len(names), name):
            built[name] = b = BUILDERS[name](job)
            write_variant_folder(b.folder, job.source, job.model_dir, name, config=b.config)
    return built


# --- evaluation, measurement, choice, report ----------------------------------------------------------------


def write_variant_folder(
    folder: Path, source: Manifest, model_dir: Path, name: str, metrics: dict | None = None, config=None
) -> None:
    """model.json (the source model's labels, this variant's config, name and metrics) + the tokenizer."""
    Manifest(
        labels=source.labels, config=config or source.config, variant=f"onnx-{name}", metrics=metrics
    ).save(folder)
    copy_tokenizer(model_dir, folder)


def evaluate_variants(
    built: dict[str, Built], job: Job, texts: Sequence[str], labels: Sequence[str]
) -> dict[str, dict]:
    """Accuracy, macro-F1 and sizes of each variant (fp32 first: the reference for the drops)."""
    variants: dict[str, dict] = {}
    for i, (name, b) in enumerate(built.items(), start=1):
        with _timed("compress [%d/%d] evaluating %s on %d texts", i, len(built), name, len(texts)):
            metrics = evaluate_onnx(b.folder, texts, labels)
        ref = variants[FP32] if variants else metrics
        path = b.folder / MODEL_FILE
        variants[name] = {
            "path": _shown(path),
            **metrics,
            "size_bytes": path.stat().st_size,
            "accuracy_drop": round(ref["accuracy"] - metrics["accuracy"], 6),
            "accuracy_drop_pp": round(100 * (ref["accuracy"] - metrics["accuracy"]), 4),
            "macro_f1_drop_pp": round(100 * (ref["macro_f1"] - metrics["macro_f1"]), 4),
            "gzip_bytes": gzip_size(path),
            "params": count_params(b.model),
            "nonzero_params": count_params(b.model, nonzero=True),
            **b.facts,
        }
        logger.info(
            "compress: %s accuracy %.4f (%+.2f pp), macro-F1 %.4f, %d bytes (gzip %d)",
            name,
            metrics["accuracy"],
            -variants[name]["accuracy_drop_pp"],
            metrics["macro_f1"],
            variants[name]["size_bytes"],
            variants[name]["gzip_bytes"],
        )
    return variants


def torch_reference(job: Job, texts: Sequence[str], labels: Sequence[str]) -> dict:
    """The PyTorch fp32 model in eager mode: accuracy, size of model.pt, parameters (timings added later)."""
    with _torch_threads(1):
        predicted = predict_logits(job.model, job.tokenizer.encode(texts)).argmax(axis=1)
    path = job.model_dir / "model.pt"
    return {
        **scores(labels, [job.source.labels[i] for i in predicted], job.source.labels),
        "size_bytes": path.stat().st_size,
        "gzip_bytes": gzip_size(path),
        "params": count_params(job.model),
        "nonzero_params": count_params(job.model, nonzero=True),
    }


def measure_all(built: dict[str, Built], job: Job, texts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Latency and throughput of PyTorch eager and every variant, interleaved in one process."""
    s = job.settings
    runners = [torch_runner(TORCH_REFERENCE, job.model, job.tokenizer)]
    runners += [onnx_runner(name, b.folder) for name, b in built.items()]
    latency_texts = list(texts[: s.latency_texts])
    throughput_texts = [texts[i % len(texts)] for i in range(s.throughput_texts)]
    with _timed(
        "compress: timing %d models on %d single texts and %d in batches of 64, %d round(s)",
        len(runners),
        len(latency_texts),
        len(throughput_texts),
        s.rounds,
    ):
        timings = measure(runners, latency_texts, throughput_texts, s.rounds)
    for name, t in timings.items():
        logger.info(
            "compress: %s p50 %.3f ms p99 %.3f ms (model alone p50 %.3f ms), %.0f texts/s at batch 64",
            name,
            t["latency_p50_ms"],
            t["latency_p99_ms"],
            t["model_p50_ms"],
            t["throughput_b64"],
        )
    return timings


def choose(variants: dict[str, dict], policy: str, max_drop_pp: float) -> dict:
    """The fastest (or smallest) variant whose accuracy trails ONNX fp32 by at most ``max_drop_pp`` points.

    fp32 itself always qualifies (drop 0), so there is always a choice.
    """
    metric = {"fastest": "latency_p50_ms", "smallest": "size_bytes"}[policy]
    eligible = [n for n, v in variants.items() if v["accuracy_drop_pp"] <= max_drop_pp + 1e-9]
    chosen = min(eligible, key=lambda n: (variants[n][metric], n))
    rejected = sorted(set(variants) - set(eligible))
    reason = (
        f"{chosen}: the {policy} ({metric} {variants[chosen][metric]}) of the variants within "
        f"{max_drop_pp} pp accuracy of fp32 ({', '.join(eligible)})"
        + (f"; over the limit: {', '.join(rejected)}" if rejected else "")
    )
    return {
        "policy": policy,
        "metric": metric,
        "max_drop_pp": max_drop_pp,
        "eligible": eligible,
        "chosen": chosen,
        "reason": reason,
    }


def ratios(variants: dict[str, dict], reference: dict, chosen: str) -> dict[str, float]:
    """The issue's goals as ratios: chosen vs PyTorch eager, int8 size vs fp32, slim vs ONNX fp32."""
    c, fp32 = variants[chosen], variants[FP32]
    out = {
        "size_ratio": round(c["size_bytes"] / fp32["size_bytes"], 4),
        "chosen_latency_speedup_vs_torch": round(reference["latency_p50_ms"] / c["latency_p50_ms"], 3),
        "chosen_model_speedup_vs_torch": round(reference["model_p50_ms"] / c["model_p50_ms"], 3),
        "chosen_throughput_ratio_vs_torch": round(c["throughput_b64"] / reference["throughput_b64"], 3),
    }
    if SLIM in variants:
        out["slim_latency_speedup_vs_fp32"] = round(
            fp32["latency_p50_ms"] / variants[SLIM]["latency_p50_ms"], 3
        )
        out["slim_model_speedup_vs_fp32"] = round(fp32["model_p50_ms"] / variants[SLIM]["model_p50_ms"], 3)
    return out


def report_paths(report_path: Path) -> tuple[Path, Path]:
    """The markdown table beside the JSON report, the Pareto plot under its plots/ folder."""
    return report_path.with_suffix(".md"), report_path.parent / "plots" / "compression_pareto.png"


def write_report(report_path: Path, report: dict) -> None:
    """compression.json, compression.md (table + decision) and the Pareto plot."""
    table_path, plot_path = report_paths(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    variants, reference, chosen = report["variants"], report["reference"], report["chosen"]
    table = markdown_table(variants, reference, chosen)
    facts = ", ".join(f"{k} {v}" for k, v in report["ratios"].items())
    table_path.write_text(
        f"# Compression\n\n{table}\n\nDecision: {report['decision']['reason']}.\n\nRatios: {facts}.\n\n"
        f"Latency: batch 1, 1 thread, tokenization included, {report['measurement']['latency_texts']} test "
        f"texts; throughput: batch 64, 1 thread. Δ acc is vs ONNX fp32.\n",
        encoding="utf-8",
    )
    pareto_plot(variants, reference, chosen, plot_path)


def finish_variants(built: dict[str, Built], variants: dict[str, dict], job: Job) -> None:
    """model.json of each variant: its name, config and metrics (written once the scores are known)."""
    for name, b in built.items():
        keep = ("accuracy", "macro_f1", "size_bytes", "gzip_bytes", "params", "latency_p50_ms")
        write_variant_folder(
            b.folder, job.source, job.model_dir, name, {k: variants[name][k] for k in keep}, b.config
        )


# --- the step -----------------------------------------------------------------------------------------------


def compress(
    params: Params, model_dir: Path, test_path: Path, variants_dir: Path, report_path: Path
) -> CompressResult:
    """Build every variant of ``model_dir`` (see the module docstring), score them on the test split, time them
    against PyTorch eager, choose one by ``compress.policy`` and write the reports. Raises ParityError when an
    export does not match PyTorch, DataError when a split is missing or unusable."""
    settings = params.compress
    texts, labels = read_test_split(test_path)
    train = read_split(test_path.with_name("train.parquet"), "train")
    model, cfg, source = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        job = Job(
            settings,
            model,
            cfg,
            source,
            model_dir,
            variants_dir,
            Tokenizer.load(model_dir),
            train,
            texts[: settings.parity_samples],
            params.seed,
            Path(tmp),
        )
        built = build_variants(job)
    variants = evaluate_variants(built, job, texts, labels)
    reference = torch_reference(job, texts, labels)
    timings = measure_all(built, job, texts)
    for name in variants:
        variants[name].update(timings[name])
    reference.update(timings[TORCH_REFERENCE])
    decision = choose(variants, settings.policy, settings.max_drop_pp)
    chosen = decision["chosen"]
    finish_variants(built, variants, job)
    diff = built[FP32].facts["parity_max_abs_diff"]
    report = {
        "chosen": chosen,
        "decision": decision,
        "parity": {"max_abs_diff": diff, "atol": settings.parity_atol, "samples": len(job.parity_texts)},
        "ratios": ratios(variants, reference, chosen),
        "measurement": {"latency_texts": min(settings.latency_texts, len(texts)), "threads": 1, "batch": 64},
        "reference": {TORCH_REFERENCE: reference},
        "variants": variants,
    }
    report["size_ratio"] = report["ratios"]["size_ratio"]
    write_report(report_path, report)
    logger.info("compress: chose %s; report in %s", decision["reason"], report_path)
    return CompressResult(variants=variants, chosen=chosen, parity_max_abs_diff=diff, report_path=report_path)


# The Prefect task is the plain function itself, named for the flow's UI; tests call compress() directly.
compress_task = task(compress, name="compress")
