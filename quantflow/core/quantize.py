"""ONNX Runtime int8 quantization for the compress step: dynamic (weights offline, activations per batch) and
static QDQ (activations calibrated offline on a sample of the training split).

Why both: dynamic int8 needs no data but computes activation scales on every call, and its ConvInteger kernel
is slow; static QDQ fuses into QLinearConv/QLinearMatMul kernels, the fastest path measured here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from quantflow.core.onnx_model import INPUT_NAME
from quantflow.core.qdq_graph import tighten
from quantflow.core.text import Tokenizer

logger = logging.getLogger(__name__)

WEIGHT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIBRATION_BATCH = 32


class _RootChatter(logging.Filter):
    """ORT's quantizer logs a line per tensor through the root logger itself (``logging.info``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    # a logger's filter sees only records logged on it, not those propagated from children: ours pass
    chatter = _RootChatter()
    logging.root.addFilter(chatter)
    try:
        yield
    finally:
        logging.root.removeFilter(chatter)


def _prepare(fp32_path: Path, tmp: Path) -> Path:
    """ONNX shape inference only: ORT's symbolic shape inference crashes on the dynamo graph (a Concat of
    unknown shape), and its graph optimizer changes nothing here but stamps ~8 unused opset domains."""
    prepared = tmp / "prepared.onnx"
    quant_pre_process(fp32_path, prepared, skip_optimization=True, skip_symbolic_shape=True)
    return prepared


def quantize_int8(fp32_path: Path, out_path: Path, ops: Sequence[str], weight_type: str = "uint8") -> Path:
    """Dynamic quantization of ``ops``: weights to 8 bits offline, activations per batch at run time."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"compress.weight_type must be one of {sorted(WEIGHT_TYPES)} (got: {weight_type!r})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        quantize_dynamic(
            _prepare(fp32_path, Path(tmp)),
            out_path,
            op_types_to_quantize=list(ops),
            weight_type=WEIGHT_TYPES[weight_type],
            per_channel=False,
            extra_options={"MatMulConstBOnly": True},  # attention's q·k stays fp32
        )
    return out_path


def bucket_length(length: int, bucket: int, max_len: int) -> int:
    """The next multiple of ``bucket`` (at most ``max_len``): calibration batches share a few fixed shapes."""
    return min(max_len, -(-max(length, 1) // bucket) * bucket)


class BucketedReader(CalibrationDataReader):
    """Calibration batches of training texts, sorted by length and right-padded to fixed bucket lengths.

    MinMax reduces each batch on its own, so a few buckets do; the histogram calibrators (entropy, percentile)
    stack the activations of *every* batch, so they need one shape: ``bucket = max_len`` pads all batches to
    the tokenizer's cap. Padding never changes a text's logits (see quantflow.core.models) and barely moves ranges.
    """

    def __init__(self, tokenizer: Tokenizer, texts: Sequence[str], bucket: int = 32) -> None:
        max_len = tokenizer.config.max_len
        rows = sorted(
            (tokenizer.ids(tokens) for tokens in tokenizer.iter_tokens(texts)), key=len
        )  # short first
        self._batches: list[np.ndarray] = []
        for start in range(0, len(rows), CALIBRATION_BATCH):
            chunk = rows[start : start + CALIBRATION_BATCH]
            width = bucket_length(max(len(r) for r in chunk), bucket, max_len)
            ids = np.zeros((CALIBRATION_BATCH, width), dtype=np.int64)  # (B, T): fixed B as well
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = row
            ids[len(chunk) :] = ids[0]  # a short last batch repeats its first row rather than pure padding
            self._batches.append(ids)
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def quantize_static_qdq(
    fp32_path: Path,
    out_path: Path,
    reader: CalibrationDataReader,
    ops: Sequence[str],
    method: str = "minmax",
) -> Path:
    """Static QDQ int8: uint8 activations with calibrated ranges, int8 per-channel weights.

    ORT fuses the QDQ pairs into QLinearConv / QLinearMatMul at session creation; the rewrites of
    quantflow/core/qdq_graph.py then take the float steps its optimizer leaves off the batch path.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"compress.calibration must be one of {sorted(CALIBRATION_METHODS)} (got: {method!r})"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        quantize_static(
            _prepare(fp32_path, Path(tmp)),
            out_path,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ops),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            extra_options={"MatMulConstBOnly": True, "CalibTensorRangeSymmetric": False},
        )
    tighten(out_path)
    return out_path
