"""The compress step: every variant of the trained model as ONNX, measured side by side, and the choice.

The variants (``fp32``, ``int8-dynamic``, ``int8-static``, ``pruned-int8``, ``slim-int8``,
``distilled-int8``) are built by quantflow/core/variants.py, exported and parity-checked by
quantflow/core/export.py; a classic model gets its own (quantflow/core/classic_variants.py). This step plans
which to build, scores each on the test split, times them in one process against PyTorch eager
(quantflow/core/measure.py), and applies the policy in ``params.yaml`` (``compress.policy``,
``compress.max_drop_pp``) to pick the variant that register logs, then calibrates its probabilities on the
validation split into its model.json (quantflow/core/shipped_calibration.py).

Inputs: a model folder (``model.pt`` + ``model.json`` + tokenizer), the test, training (int8 activation ranges,
fine-tuning) and validation splits. Outputs: one self-describing ONNX folder per variant under
``variants_dir``, ``reports/compression.{json,md}``, ``reports/plots/compression_pareto.png``,
``reports/calibration.json``, ``calibration_reliability.json`` and ``plots/calibration_reliability.png``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from sklearn.metrics import accuracy_score, f1_score

from quantflow.core.candidates import folder_family
from quantflow.core.classic_variants import CLASSIC_FAMILY, compress_classic
from quantflow.core.export import torch_threads
from quantflow.core.features import read_split
from quantflow.core.layout import CompressionReports, shown_path, split_file
from quantflow.core.measure import gzip_size, measure, onnx_runner, torch_runner, write_report
from quantflow.core.models import ModelConfig
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier
from quantflow.core.params import VARIANTS, CalibrationParams, CompressParams
from quantflow.core.pruning import count_params
from quantflow.core.shipped_calibration import calibrate_shipped, calibration_splits
from quantflow.core.stats import accuracy_drop_pp
from quantflow.core.training import predict_logits
from quantflow.core.variants import BUILDERS, FP32, Built, Job, goal_ratios, make_job, write_variant_folder

logger = logging.getLogger(__name__)

TORCH_REFERENCE = "torch-fp32-eager"


@dataclass(frozen=True)
class CompressResult:
    """What the step produced; ``variants`` maps a name to its path, metrics, size and accuracy drop."""

    variants: dict[str, dict]  # name -> {"path", "accuracy", "macro_f1", "size_bytes", "accuracy_drop"}
    chosen: str  # the variant that register logs
    parity_max_abs_diff: float
    report_path: Path
    calibration: dict  # calibration.json: the chosen variant's stored calibration, fp32's and its ECE/Brier


@contextmanager
def _timed(message: str, *args: object) -> Iterator[None]:
    """Log ``message`` before a phase and again with its wall time after it: a slow variant shows itself."""
    logger.info(message + " …", *args)
    start = time.perf_counter()
    yield
    logger.info(message + ": done in %.2f s", *args, time.perf_counter() - start)


# --- plan and build -----------------------------------------------------------------------------------------


def plan(settings: CompressParams, cfg: ModelConfig) -> list[str]:
    """The variants to build, fp32 first (the reference), then ``compress.variants`` in VARIANTS order (every
    family has each: slim-int8 prunes whatever the family has, distilled-int8 trains any student on it)."""
    return [FP32] + [n for n in VARIANTS if n in settings.variants and n != FP32]


def build_variants(job: Job) -> dict[str, Built]:
    """Build every planned variant in order, logging progress per variant."""
    names = plan(job.settings, job.cfg)
    built: dict[str, Built] = {}
    for i, name in enumerate(names, start=1):
        with _timed("compress [%d/%d] building %s", i, len(names), name):
            built[name] = b = BUILDERS[name](job)
            write_variant_folder(b.folder, job.source, job.model_dir, name, config=b.config)
    return built


# --- evaluate, measure, choose, report ----------------------------------------------------------------------


def evaluate_onnx(folder: Path, texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of the folder's ONNX model on the texts (1 intra-op thread)."""
    classifier = OnnxClassifier(folder, threads=1)
    return scores(labels, classifier.predict(list(texts)), classifier.labels)


def scores(labels: Sequence[str], predicted: Sequence[str], label_set: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the model's whole label set (a class missing from the split counts as 0)."""
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(float(f1_score(labels, predicted, average="macro", labels=list(label_set))), 6),
    }


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
            "path": shown_path(path),
            **metrics,
            "size_bytes": path.stat().st_size,
            "accuracy_drop": round(ref["accuracy"] - metrics["accuracy"], 6),
            "accuracy_drop_pp": accuracy_drop_pp(ref["accuracy"], metrics["accuracy"]),
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
    with torch_threads(1):
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
    """The fastest (or smallest) variant whose accuracy trails ONNX fp32 by at most ``max_drop_pp`` points (the
    rule the register gate checks again: quantflow.core.stats.accuracy_drop_pp).

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


def finish_variants(built: dict[str, Built], variants: dict[str, dict], job: Job) -> None:
    """model.json of each variant: its name, config and metrics (written once the scores are known)."""
    for name, b in built.items():
        keep = ("accuracy", "macro_f1", "size_bytes", "gzip_bytes", "params", "latency_p50_ms")
        write_variant_folder(
            b.folder, job.source, job.model_dir, name, {k: variants[name][k] for k in keep}, b.config
        )


# --- the step -----------------------------------------------------------------------------------------------


def score_and_time(
    built: dict[str, Built], job: Job, texts: Sequence[str], labels: Sequence[str]
) -> tuple[dict[str, dict], dict]:
    """Every variant's and PyTorch eager's scores, sizes and timings on the test split."""
    variants = evaluate_variants(built, job, texts, labels)
    reference = torch_reference(job, texts, labels)
    timings = measure_all(built, job, texts)
    for name in variants:
        variants[name].update(timings[name])
    reference.update(timings[TORCH_REFERENCE])
    return variants, reference


def build_report(variants: dict[str, dict], reference: dict, decision: dict, job: Job, tested: int) -> dict:
    """compression.json's content: the choice and why, parity, the goals as ratios, every variant's row."""
    s, chosen = job.settings, decision["chosen"]
    parity = variants[FP32]["parity_max_abs_diff"]  # the fp32 builder's fact
    report = {
        "chosen": chosen,
        "decision": decision,
        "parity": {"max_abs_diff": parity, "atol": s.parity_atol, "samples": len(job.parity_texts)},
        "ratios": goal_ratios(variants, reference, chosen),
        "measurement": {"latency_texts": min(s.latency_texts, tested), "threads": 1, "batch": 64},
        "reference": {TORCH_REFERENCE: reference},
        "variants": variants,
    }
    report["size_ratio"] = report["ratios"]["size_ratio"]
    return report


def compress(
    settings: CompressParams,
    calibrate: CalibrationParams,
    model_dir: Path,
    split_dir: Path,
    variants_dir: Path,
    reports: CompressionReports,
    seed: int,
) -> CompressResult:
    """Build every variant of ``model_dir`` (see the module docstring), score them on the test split, time them
    against PyTorch eager, choose one by ``compress.policy``, calibrate it on the validation split
    (``calibrate:``, quantflow/core/shipped_calibration.py) and write the reports. ``seed`` draws the int8
    activation sample, the fine-tuning order and the calibration's folds. Raises ParityError when an export does
    not match PyTorch, DataError when a split is missing or unusable."""
    splits = calibration_splits(split_dir)  # test and val: a missing one fails before any variant is built
    if folder_family(model_dir) == CLASSIC_FAMILY:  # fp32 + int8-dynamic (quantflow/core/classic_variants.py)
        report = compress_classic(settings, model_dir, split_dir, variants_dir, reports, choose)
    else:
        report = compress_neural(settings, model_dir, split_dir, variants_dir, reports, seed)
    variants, chosen = report["variants"], report["chosen"]
    folders = {name: variants_dir / name for name in variants}
    calibration = calibrate_shipped(folders, chosen, *splits, calibrate, reports, seed)
    return CompressResult(variants, chosen, report["parity"]["max_abs_diff"], reports.report, calibration)


def compress_neural(
    settings: CompressParams,
    model_dir: Path,
    split_dir: Path,
    variants_dir: Path,
    reports: CompressionReports,
    seed: int,
) -> dict:
    """A neural model's variants built, scored, timed and chosen among; returns compression.json's content."""
    texts, labels = read_split(split_file(split_dir, "test"), "test", "evaluate the variants on")
    train = read_split(split_file(split_dir, "train"), "train", "calibrate and fine-tune the variants on")
    with tempfile.TemporaryDirectory() as tmp:
        job = make_job(
            settings, model_dir, variants_dir, train, texts[: settings.parity_samples], seed, Path(tmp)
        )
        built = build_variants(job)
    variants, reference = score_and_time(built, job, texts, labels)
    decision = choose(variants, settings.policy, settings.max_drop_pp)
    finish_variants(built, variants, job)
    report = build_report(variants, reference, decision, job, len(texts))
    write_report(reports, report)
    logger.info("compress: chose %s; report in %s", decision["reason"], reports.report)
    return report


# The Prefect task is the plain function itself, named for the flow's UI; tests call compress() directly.
compress_task = task(compress, name="compress")
