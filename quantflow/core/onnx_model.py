"""Raw text in, label probabilities out, from a model folder holding ``model.onnx`` (ONNX Runtime; no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantflow.core.bundle import Manifest
from quantflow.core.text import Tokenizer

MODEL_FILE = "model.onnx"
INPUT_NAME = "ids"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """An ONNX model folder (see quantflow.core.bundle) behind one ORT session; ``threads`` sets intra-op threads."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.labels: list[str] = list(self.manifest.labels)
        self.tokenizer = Tokenizer.load(self.folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids → (B, C) float32 logits."""
        return self.session.run(None, {INPUT_NAME: ids})[0]

    def predict_proba(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, C) class probabilities, columns in ``self.labels`` order."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        parts = [
            softmax(self.logits(self.tokenizer.encode(texts[i : i + batch_size])))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts)

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> list[str]:
        proba = self.predict_proba(texts, batch_size)
        return [self.labels[i] for i in proba.argmax(axis=1)]
