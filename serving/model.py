"""One loaded model version and what the service asks of it: predictions and occlusion explanations.

A :class:`ServedModel` is immutable once built; the service swaps whole objects (see serving/reload.py), so a
request that picked one up finishes on it even if the alias moves meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.text import UNK, clean_text


@dataclass(frozen=True)
class ServedModel:
    """An ONNX classifier plus where it came from: the registry (name, version, alias) or a local folder."""

    classifier: OnnxClassifier
    name: str
    version: str
    alias: str | None
    folder: Path
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path, name: str, version: str, alias: str | None, threads: int) -> ServedModel:
        classifier = OnnxClassifier(folder, threads=threads)
        return cls(classifier=classifier, name=name, version=version, alias=alias, folder=folder)

    @property
    def variant(self) -> str:
        return self.classifier.manifest.variant

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` shows: identity, variant, labels, the metrics recorded with the variant."""
        manifest = self.classifier.manifest
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "variant": manifest.variant,
            "labels": self.labels,
            "metrics": manifest.metrics or {},
            "tokenizer": {
                "segmenter": self.classifier.tokenizer.config.segmenter,
                "max_len": self.classifier.tokenizer.config.max_len,
            },
            "versions": manifest.versions or {},
            "calibration": manifest.calibration,
            "folder": str(self.folder),
        }

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: the label and every class probability (one ORT call for the batch)."""
        proba = self.classifier.predict_proba(texts)  # (N, C)
        labels = self.labels
        return [
            {
                "label": labels[int(row.argmax())],
                "probabilities": dict(zip(labels, row.tolist(), strict=True)),
            }
            for row in proba
        ]

    def explain(self, text: str) -> dict[str, Any]:
        """Occlusion: each token's contribution is how much the chosen label's probability drops when that
        token is replaced by ``<unk>``. Row 0 of the batch is the text itself, row i+1 hides token i."""
        tokenizer = self.classifier.tokenizer
        tokens = tokenizer.tokens(text)[: tokenizer.config.max_len]
        ids = tokenizer.encode([text])  # (1, T)
        batch = np.repeat(ids, len(tokens) + 1, axis=0)  # (1 + n_tokens, T)
        unk = tokenizer.vocab[UNK]
        for i in range(len(tokens)):
            batch[i + 1, i] = unk
        proba = self.classifier.probabilities(self.classifier.logits(batch))  # (1 + n_tokens, C), calibrated
        chosen = int(proba[0].argmax())
        drops = proba[0, chosen] - proba[1:, chosen]
        return {
            "label": self.labels[chosen],
            "probabilities": dict(zip(self.labels, proba[0].tolist(), strict=True)),
            "cleaned": clean_text(text, tokenizer.config.lowercase),
            "tokens": [
                {"token": tok, "known": tok in tokenizer.vocab, "contribution": round(float(d), 6)}
                for tok, d in zip(tokens, drops, strict=True)
            ],
        }
