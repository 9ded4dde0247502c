"""The compress step for a classic model (TF-IDF + LR, NB-LR): its variants, scored and timed beside scikit-learn.

A classic model folder (quantflow/core/candidates.py) already holds its ONNX graph: ``fp32`` is a copy of it,
checked against the fitted scikit-learn model on the parity texts (probabilities within
``compress.parity_atol``); ``int8-static`` computes its Gemm in 8-bit integers with fixed scales
(quantflow/core/classic_onnx.py), so a text's answer does not depend on the texts batched with it. The other
variants do not apply: ``int8-dynamic`` picks its scale per batch (that dependence), and there is no
convolution or embedding to prune or slim. The reference row is the scikit-learn model itself
(accuracy, pickled size and speed), where a neural model has PyTorch eager.

The step's policy (``compress.policy`` within ``compress.max_drop_pp``) is applied by the caller's ``choose``
(tasks/compress.py), so both families choose by one rule; the report has the neural one's shape.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from sklearn.metrics import accuracy_score, f1_score

from quantflow.core.bundle import Manifest, copy_tokenizer
from quantflow.core.candidates import FIT_FILE, load_fit
from quantflow.core.classic import ClassicFit
from quantflow.core.classic_onnx import CLASSIC_FAMILY, INT8_VARIANT, quantize_classic
from quantflow.core.export import ParityError
from quantflow.core.features import read_split
from quantflow.core.layout import CompressionReports, shown_path, split_file
from quantflow.core.measure import Runner, gzip_size, measure, onnx_runner, write_report
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier, softmax
from quantflow.core.params import CompressParams
from quantflow.core.text import Tokenizer

logger = logging.getLogger(__name__)

FP32, STATIC = "fp32", INT8_VARIANT
CLASSIC_VARIANTS = (FP32, STATIC)
REFERENCE = "sklearn-fp32"
PARITY_BATCH = 16


def classic_plan(settings: CompressParams) -> list[str]:
    """fp32 (always) and int8-static when ``compress.variants`` lists it; the rest do not apply (logged)."""
    skipped = [v for v in settings.variants if v not in CLASSIC_VARIANTS]
    if skipped:
        logger.info("compress: a classic model has no %s variant: skipped", ", ".join(skipped))
    return [FP32] + ([STATIC] if STATIC in settings.variants else [])


def parity_max_abs_diff(fit: ClassicFit, folder: Path, texts: Sequence[str]) -> float:
    """The largest |scikit-learn probability - ONNX probability| over ``texts`` (padded batches, then one by one),
    encoded with the folder's own tokenizer."""
    classifier = OnnxClassifier(folder, threads=1)
    batches = [list(texts[i : i + PARITY_BATCH]) for i in range(0, len(texts), PARITY_BATCH)]
    worst = 0.0
    for batch in batches + [[t] for t in texts]:
        ids = classifier.tokenizer.encode(batch)  # (B, T)
        worst = max(worst, float(np.abs(softmax(classifier.logits(ids)) - fit.predict_proba(ids)).max()))
    return worst


def build_fp32(fit: ClassicFit, model_dir: Path, folder: Path, texts: Sequence[str], atol: float) -> float:
    """Copy the folder's ONNX graph and tokenizer into ``folder``; the parity with scikit-learn, checked."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / MODEL_FILE, folder / MODEL_FILE)
    source = Manifest.load(model_dir)
    Manifest(source.labels, source.config, f"onnx-{FP32}", versions=source.versions).save(folder)
    copy_tokenizer(model_dir, folder)
    diff = parity_max_abs_diff(fit, folder, texts)
    if diff > atol:
        raise ParityError(
            f"{folder / MODEL_FILE}: ONNX probabilities differ from scikit-learn's by up to {diff:.3g}, more "
            f"than compress.parity_atol = {atol:.3g} (on {len(texts)} test texts); rerun the train step "
            "(quantflow/core/classic_onnx.py exports the graph)"
        )
    logger.info("compress: classic parity ok on %d texts, max |diff| %.3g <= %.3g", len(texts), diff, atol)
    return diff


def onnx_params(path: Path) -> tuple[int, int]:
    """Elements of the graph's initializers (n-gram pool, idf, weights), and how many are non-zero."""
    arrays = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer]
    return sum(a.size for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def scores(labels: Sequence[str], predicted: Sequence[str], label_set: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the model's whole label set (as the neural variants are scored)."""
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(float(f1_score(labels, predicted, average="macro", labels=list(label_set))), 6),
    }


def variant_row(
    folder: Path, texts: Sequence[str], labels: Sequence[str], ref: dict | None
) -> dict[str, Any]:
    """One variant's accuracy, macro-F1, sizes and drops against ``ref`` (the fp32 row; None for fp32 itself)."""
    classifier = OnnxClassifier(folder, threads=1)
    metrics = scores(labels, classifier.predict(list(texts)), classifier.labels)
    ref = ref or metrics
    path = folder / MODEL_FILE
    count, nonzero = onnx_params(path)
    return {
        "path": shown_path(path),
        **metrics,
        "size_bytes": path.stat().st_size,
        "accuracy_drop": round(ref["accuracy"] - metrics["accuracy"], 6),
        "accuracy_drop_pp": round(100 * (ref["accuracy"] - metrics["accuracy"]), 4),
        "macro_f1_drop_pp": round(100 * (ref["macro_f1"] - metrics["macro_f1"]), 4),
        "gzip_bytes": gzip_size(path),
        "params": count,
        "nonzero_params": nonzero,
    }


def reference_row(fit: ClassicFit, model_dir: Path, texts: Sequence[str], labels: Sequence[str]) -> dict:
    """The scikit-learn model: accuracy, macro-F1 and the size of its pickle (timings added later)."""
    manifest = Manifest.load(model_dir)
    ids = Tokenizer.load(model_dir).encode(list(texts))
    predicted = [manifest.labels[i] for i in fit.predict_proba(ids).argmax(axis=1)]
    coef, _ = fit.linear()
    path = model_dir / FIT_FILE
    return {
        **scores(labels, predicted, manifest.labels),
        "size_bytes": path.stat().st_size,
        "gzip_bytes": gzip_size(path),
        "params": int(coef.size + fit.vectorizer.idf_.size),
        "nonzero_params": int(np.count_nonzero(coef) + np.count_nonzero(fit.vectorizer.idf_)),
    }


def sklearn_runner(fit: ClassicFit, model_dir: Path) -> Runner:
    """The scikit-learn model behind the measurement's interface (its probabilities stand for logits)."""
    return Runner(REFERENCE, Tokenizer.load(model_dir).encode, fit.predict_proba)


def timings(
    fit: ClassicFit, model_dir: Path, folders: dict[str, Path], texts: Sequence[str], s: CompressParams
) -> dict[str, dict[str, float]]:
    """scikit-learn and every variant timed interleaved in one process (quantflow/core/measure.py)."""
    runners = [sklearn_runner(fit, model_dir)] + [onnx_runner(n, f) for n, f in folders.items()]
    throughput = [texts[i % len(texts)] for i in range(s.throughput_texts)]
    return measure(runners, list(texts[: s.latency_texts]), throughput, s.rounds)


def ratios(variants: dict[str, dict], reference: dict, chosen: str) -> dict[str, float]:
    """The chosen variant against ONNX fp32 (size) and against scikit-learn (speed)."""
    c = variants[chosen]
    return {
        "size_ratio": round(c["size_bytes"] / variants[FP32]["size_bytes"], 4),
        "chosen_latency_speedup_vs_sklearn": round(reference["latency_p50_ms"] / c["latency_p50_ms"], 3),
        "chosen_model_speedup_vs_sklearn": round(reference["model_p50_ms"] / c["model_p50_ms"], 3),
        "chosen_throughput_ratio_vs_sklearn": round(c["throughput_b64"] / reference["throughput_b64"], 3),
    }


def build_variants(
    settings: CompressParams, fit: ClassicFit, model_dir: Path, variants_dir: Path, parity_texts: list[str]
) -> tuple[dict[str, Path], float]:
    """fp32 (copied, parity checked) and int8-static when asked; returns the folders and the parity."""
    if variants_dir.exists():
        shutil.rmtree(variants_dir)  # a neural model's variants from an earlier run must not linger
    folders = {FP32: variants_dir / FP32}
    parity = build_fp32(fit, model_dir, folders[FP32], parity_texts, settings.parity_atol)
    if STATIC in classic_plan(settings):
        folders[STATIC] = quantize_classic(folders[FP32], variants_dir / STATIC)
    return folders, parity


def finish_folders(folders: dict[str, Path], variants: dict[str, dict], source: Manifest) -> None:
    """Each variant's model.json: its name, the source config and its metrics (once the scores are known)."""
    keep = ("accuracy", "macro_f1", "size_bytes", "gzip_bytes", "params", "latency_p50_ms")
    for name, folder in folders.items():
        metrics = {k: variants[name][k] for k in keep}
        Manifest(source.labels, source.config, f"onnx-{name}", metrics, source.versions).save(folder)


def compress_classic(
    settings: CompressParams,
    model_dir: Path,
    split_dir: Path,
    variants_dir: Path,
    reports: CompressionReports,
    choose: Callable[[dict[str, dict], str, float], dict],
) -> dict[str, Any]:
    """Build, score and time the classic variants, choose one with the step's ``choose`` and write the reports
    (``reports``, the same files as a neural model's); returns compression.json's content."""
    texts, labels = read_split(split_file(split_dir, "test"), "test", "evaluate the variants on")
    fit = load_fit(model_dir)
    parity_texts = texts[: settings.parity_samples]
    folders, parity = build_variants(settings, fit, model_dir, variants_dir, parity_texts)
    variants: dict[str, dict] = {}
    for name, folder in folders.items():
        variants[name] = variant_row(folder, texts, labels, variants.get(FP32))
    reference = reference_row(fit, model_dir, texts, labels)
    timed = timings(fit, model_dir, folders, texts, settings)
    for name in variants:
        variants[name].update(timed[name])
    reference.update(timed[REFERENCE])
    decision = choose(variants, settings.policy, settings.max_drop_pp)
    finish_folders(folders, variants, Manifest.load(model_dir))
    tested = len(texts)
    report = {
        "chosen": decision["chosen"],
        "family": CLASSIC_FAMILY,
        "decision": decision,
        "parity": {"max_abs_diff": parity, "atol": settings.parity_atol, "samples": len(parity_texts)},
        "ratios": ratios(variants, reference, decision["chosen"]),
        "measurement": {"latency_texts": min(settings.latency_texts, tested), "threads": 1, "batch": 64},
        "reference": {REFERENCE: reference},
        "variants": variants,
    }
    report["size_ratio"] = report["ratios"]["size_ratio"]
    write_report(reports, report)
    logger.info("compress: chose %s; report in %s", decision["reason"], reports.report)
    return report
