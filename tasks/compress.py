"""The compress step: export the trained model to ONNX (fp32), check parity, quantize to int8, evaluate both.

Inputs: a model folder (``model.pt`` + ``model.json`` + tokenizer) and the test split. Outputs: one
self-describing ONNX folder per variant under ``variants_dir`` and ``reports/compression.json``. The same
inputs give byte-identical ``model.onnx`` files (the exporter's debug metadata, which holds absolute source
paths, is stripped), so DVC's cache stays valid across reruns and checkouts.
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
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
from prefect import task
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from quantflow.bundle import Manifest, copy_tokenizer
from quantflow.errors import DataError, QuantflowError
from quantflow.models import ModelConfig, load_model
from quantflow.onnx_model import INPUT_NAME, MODEL_FILE, OnnxClassifier
from quantflow.params import CompressParams, Params

logger = logging.getLogger(__name__)

OPSET = 18  # the dynamo exporter's native opset (torchlib): no version-conversion pass
OUTPUT_NAME = "logits"
FP32, INT8 = "fp32", "int8"
VARIANT_NAMES = {FP32: "onnx-fp32", INT8: "onnx-int8"}
CHOSEN = INT8  # this first version always hands the int8 model to register
PARITY_BATCH = 16
WEIGHT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
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


class _RootChatter(logging.Filter):
    """ORT's quantizer logs a line per tensor through the root logger itself (``logging.info``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # a logger's filter sees only records logged on it, not those propagated from children: ours pass
    chatter = _RootChatter()
    logging.root.addFilter(chatter)
    try:
        yield
    finally:
        logging.root.removeFilter(chatter)


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


# --- quantization -------------------------------------------------------------------------------------------


def quantize_int8(fp32_path: Path, out_path: Path, ops: Sequence[str], weight_type: str = "uint8") -> Path:
    """Dynamic quantization of ``ops``: weights to 8 bits offline, activations per batch at run time."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"compress.weight_type must be one of {sorted(WEIGHT_TYPES)} (got: {weight_type!r})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference only: ORT's symbolic shape inference crashes on the dynamo graph (a Concat of
        # unknown shape), and its graph optimizer changes nothing here but stamps ~8 unused opset domains
        quant_pre_process(fp32_path, prepared, skip_optimization=True, skip_symbolic_shape=True)
        quantize_dynamic(
            prepared,
            out_path,
            op_types_to_quantize=list(ops),
            weight_type=WEIGHT_TYPES[weight_type],
            per_channel=False,
            extra_options={"MatMulConstBOnly": True},  # attention's q·k stays fp32
        )
    return out_path


# --- evaluation, folders, report ----------------------------------------------------------------------------


def read_test_split(test_path: Path) -> tuple[list[str], list[str]]:
    """Texts and labels of the test split; errors name the file and what is wrong with it."""
    if not test_path.is_file():
        raise DataError(f"{test_path}: test split not found; run the split step first")
    frame = pd.read_parquet(test_path)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise DataError(f"{test_path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    if frame.empty:
        raise DataError(f"{test_path}: the test split is empty; nothing to evaluate the variants on")
    return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


def evaluate_onnx(folder: Path, texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of the folder's ONNX model on the texts (1 intra-op thread)."""
    classifier = OnnxClassifier(folder, threads=1)
    predicted = classifier.predict(list(texts))
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "macro_f1": round(float(f1_score(labels, predicted, average="macro", labels=classifier.labels)), 6),
    }


def write_variant_folder(
    folder: Path, source: Manifest, model_dir: Path, name: str, metrics: dict[str, float] | None = None
) -> None:
    """model.json (the source model's labels and config, this variant's name and metrics) + the tokenizer."""
    variant = VARIANT_NAMES[name]
    Manifest(labels=source.labels, config=source.config, variant=variant, metrics=metrics).save(folder)
    copy_tokenizer(model_dir, folder)


def _shown(path: Path) -> str:
    """Relative to the working folder (the project root under DVC and `quantflow run`): the same on every machine."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def evaluate_variants(
    folders: dict[str, Path], source: Manifest, model_dir: Path, texts: Sequence[str], labels: Sequence[str]
) -> dict[str, dict]:
    """Score each folder (fp32 first: the reference for ``accuracy_drop``); metrics go into model.json too."""
    variants: dict[str, dict] = {}
    for name, folder in folders.items():
        with _timed("compress: evaluating %s on %d texts", name, len(texts)):
            metrics = evaluate_onnx(folder, texts, labels)
        reference = variants[FP32]["accuracy"] if variants else metrics["accuracy"]
        size = (folder / MODEL_FILE).stat().st_size
        variants[name] = {
            "path": _shown(folder / MODEL_FILE),
            **metrics,
            "size_bytes": size,
            "accuracy_drop": round(reference - metrics["accuracy"], 6),
        }
        write_variant_folder(folder, source, model_dir, name, {**metrics, "size_bytes": size})
        logger.info(
            "compress: %s accuracy %.4f, macro-F1 %.4f, %d bytes",
            name,
            metrics["accuracy"],
            metrics["macro_f1"],
            size,
        )
    return variants


def write_report(
    report_path: Path, variants: dict[str, dict], diff: float, settings: CompressParams, samples: int
) -> None:
    """reports/compression.json: no timestamps or machine paths, so DVC sees a change only if one happened."""
    report = {
        "chosen": CHOSEN,
        "parity": {"max_abs_diff": diff, "atol": settings.parity_atol, "samples": samples},
        "size_ratio": round(variants[INT8]["size_bytes"] / variants[FP32]["size_bytes"], 4),
        "variants": variants,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# --- the step -----------------------------------------------------------------------------------------------


def build_variants(
    settings: CompressParams, model_dir: Path, folders: dict[str, Path], parity_texts: Sequence[str]
) -> tuple[Manifest, float]:
    """Write the fp32 and int8 folders; returns the source manifest and the fp32 parity gap."""
    model, cfg, source = load_model(model_dir)
    with _timed("compress: exporting fp32 to %s", folders[FP32] / MODEL_FILE):
        export_onnx(model, cfg, folders[FP32] / MODEL_FILE)
    write_variant_folder(folders[FP32], source, model_dir, FP32)
    diff = check_parity(model, folders[FP32], parity_texts, settings.parity_atol)
    with _timed(
        "compress: quantizing int8 (%s, %s weights)", ",".join(settings.quantize_ops), settings.weight_type
    ):
        quantize_int8(
            folders[FP32] / MODEL_FILE,
            folders[INT8] / MODEL_FILE,
            settings.quantize_ops,
            settings.weight_type,
        )
    write_variant_folder(folders[INT8], source, model_dir, INT8)
    return source, diff


def compress(
    params: Params, model_dir: Path, test_path: Path, variants_dir: Path, report_path: Path
) -> CompressResult:
    """Export ``model_dir`` to ONNX fp32, check parity with PyTorch, quantize to int8, score both on the test
    split and write ``report_path``. Raises ParityError when the export does not match PyTorch."""
    settings = params.compress
    texts, labels = read_test_split(test_path)
    folders = {FP32: variants_dir / FP32, INT8: variants_dir / INT8}
    parity_texts = texts[: settings.parity_samples]
    source, diff = build_variants(settings, model_dir, folders, parity_texts)
    variants = evaluate_variants(folders, source, model_dir, texts, labels)
    write_report(report_path, variants, diff, settings, len(parity_texts))
    logger.info(
        "compress: int8 is %.1f%% of fp32's size, accuracy drop %.4f; report in %s",
        100 * variants[INT8]["size_bytes"] / variants[FP32]["size_bytes"],
        variants[INT8]["accuracy_drop"],
        report_path,
    )
    return CompressResult(variants=variants, chosen=CHOSEN, parity_max_abs_diff=diff, report_path=report_path)


@task(name="compress")
def compress_task(
    params: Params, model_dir: Path, test_path: Path, variants_dir: Path, report_path: Path
) -> CompressResult:
    """The Prefect face of :func:`compress`."""
    return compress(params, model_dir, test_path, variants_dir, report_path)
