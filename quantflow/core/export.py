"""PyTorch → ONNX: the dynamo export to one self-contained file, and the parity check against PyTorch.

The exported graph takes ``ids`` (B, T) int64 and returns ``logits`` (B, C), both axes dynamic, and carries no
debug metadata with absolute paths (the bytes must not depend on where the repository is checked out). The
compress step exports every variant here; a derived model (pruned, slimmed) is checked like the main export.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from quantflow.core.errors import QuantflowError
from quantflow.core.models import ModelConfig
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE, OnnxClassifier

logger = logging.getLogger(__name__)

OPSET = 18  # the dynamo exporter's native opset (torchlib): no version-conversion pass
OUTPUT_NAME = "logits"
PARITY_BATCH = 16
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir")


class ParityError(QuantflowError):
    """The exported ONNX model's logits differ from PyTorch's by more than compress.parity_atol."""


@contextmanager
def quiet_exporter() -> Iterator[None]:
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
def torch_threads(threads: int) -> Iterator[None]:
    """Tiny parity batches run ~10x faster on one intra-op thread than on two spinning in OpenMP barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def example_ids(cfg: ModelConfig) -> torch.Tensor:
    """(2, T) ids, the second row padded: batch and length > 1 so torch.export keeps both axes symbolic."""
    length = max(2, min(cfg.max_len, 16))
    ids = torch.ones((2, length), dtype=torch.int64)
    ids[1, length // 2 :] = 0
    return ids


def strip_debug_info(model: onnx.ModelProto) -> None:
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
    with quiet_exporter():
        program = torch.onnx.export(
            model.eval(),
            (example_ids(cfg),),
            None,
            dynamo=True,
            verbose=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 1: seq},),
        )
    proto = program.model_proto
    strip_debug_info(proto)
    onnx.checker.check_model(proto)
    # weights inline, not in a side .data file: fine far below protobuf's 2 GB cap
    onnx.save_model(proto, out_path, save_as_external_data=False)
    return out_path


def parity_batches(texts: Sequence[str]) -> Iterator[list[str]]:
    """Padded batches of mixed lengths, then every text alone (no padding at all)."""
    for start in range(0, len(texts), PARITY_BATCH):
        yield list(texts[start : start + PARITY_BATCH])
    for text in texts:
        yield [text]


def parity_max_abs_diff(model: nn.Module, onnx_dir: Path, texts: Sequence[str]) -> float:
    """The largest |torch logit - ONNX logit| over ``texts``, encoded with the ONNX folder's own tokenizer."""
    classifier = OnnxClassifier(onnx_dir, threads=1)
    worst = 0.0
    with torch_threads(1), torch.inference_mode():
        for batch in parity_batches(texts):
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
