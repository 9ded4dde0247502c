"""Raw text in, label probabilities out, from a model folder holding ``model.onnx`` (ONNX Runtime; no torch).

The folder's ``model.json`` may carry a ``calibration`` entry (quantflow.core.calibration): the probabilities
of :meth:`OnnxClassifier.predict_proba` and :meth:`OnnxClassifier.probabilities` then follow it, so the
service, ``quantflow predict`` and the MLflow pyfunc all serve calibrated scores from one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantflow.core.bundle import MANIFEST, Manifest, set_calibration
from quantflow.core.calibration import Calibration, CalibrationFit, fit_calibration, softmax
from quantflow.core.params import CalibrationParams
from quantflow.core.text import Tokenizer

MODEL_FILE = "model.onnx"
INPUT_NAME = "ids"

__all__ = ["INPUT_NAME", "MODEL_FILE", "OnnxClassifier", "calibrate_folder", "softmax"]


class OnnxClassifier:
    """An ONNX model folder (see quantflow.core.bundle) behind one ORT session; ``threads`` sets intra-op threads."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.labels: list[str] = list(self.manifest.labels)
        self.calibration = Calibration.from_dict(
            self.manifest.calibration, len(self.labels), source=str(self.folder / MANIFEST)
        )
        self.tokenizer = Tokenizer.load(self.folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids → (B, C) float32 logits (raw: calibration is applied by :meth:`probabilities`)."""
        return self.session.run(None, {INPUT_NAME: ids})[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(B, C) logits → (B, C) probabilities as the folder's calibration says (plain softmax without one)."""
        return self.calibration.apply(logits)

    def text_logits(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, C) raw logits of raw texts, in batches."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        parts = [
            self.logits(self.tokenizer.encode(texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, C) class probabilities, columns in ``self.labels`` order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        parts = [
            self.probabilities(self.logits(self.tokenizer.encode(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> list[str]:
        proba = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in proba.argmax(axis=1)]


def calibrate_folder(
    folder: Path, texts: Sequence[str], labels: Sequence[str], params: CalibrationParams, seed: int
) -> CalibrationFit:
    """Fit the calibration of ``folder``'s model on held-out texts (the validation split) and store it in the
    folder's model.json; model.onnx is left untouched. The fit reads raw logits, so a folder calibrated before
    is refitted from scratch."""
    classifier = OnnxClassifier(folder)
    index = {label: i for i, label in enumerate(classifier.labels)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"{folder}: labels {unknown} are not the model's {classifier.labels}")
    y = np.array([index[label] for label in labels], dtype=np.int64)
    fitted = fit_calibration(classifier.text_logits(list(texts)), y, params, seed)
    entry = fitted.calibration.to_dict() if fitted.calibration.method != "none" else None
    set_calibration(folder, entry)
    return fitted
