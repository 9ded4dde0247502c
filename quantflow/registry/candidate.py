"""What a registration is about: the candidate's reports, variant folder and today's test split, as the register
step loaded and checked them (tasks/register.py) before anything is logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# compression.json keys a variant's latency may be reported under (compress writes one of them)
LATENCY_KEYS = ("latency_ms", "latency_ms_p50", "latency_p50_ms", "p50_ms")


@dataclass(frozen=True)
class Inputs:
    """Everything register reads, loaded and checked before anything is logged."""

    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    compression: dict[str, Any]
    reports_dir: Path
    variant: str
    variant_dir: Path
    texts: list[str]
    labels: list[str]
    # calibration.json: the chosen variant's stored calibration, and its and fp32's figures before and after
    calibration: dict[str, Any]

    @property
    def scores(self) -> dict[str, Any]:
        """compression.json's entry for the chosen variant (accuracy, macro_f1, size_bytes, latency...)."""
        return self.compression["variants"][self.variant]

    @property
    def calibrated(self) -> dict[str, Any]:
        """calibration.json's entry for the chosen variant: its ``before`` and ``after`` metrics on test."""
        return self.calibration["models"][self.variant]


def shipped_label(metrics: dict[str, Any]) -> str:
    """How the summary, the card and the gate name the shipped model before export: its candidate and runtime,
    e.g. ``tfidf_lr (scikit-learn)``; ``PyTorch fp32`` for metrics written before candidates existed."""
    model = metrics.get("model")
    if not isinstance(model, dict):
        return "PyTorch fp32"
    runtime = "scikit-learn" if model.get("family") == "classic" else "PyTorch"
    return f"{model.get('candidate')}: {model.get('arch')} ({runtime})"


def candidate_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """``quantflow.candidate``, ``quantflow.family``, ``quantflow.arch``: which candidate won (run and version);
    none for metrics written before candidates existed."""
    model = metrics.get("model")
    if not isinstance(model, dict):
        return {}
    return {f"quantflow.{key}": str(model[key]) for key in ("candidate", "family", "arch") if key in model}


def latency_ms(scores: dict[str, Any]) -> float | None:
    """A variant's latency under whichever of ``LATENCY_KEYS`` compress wrote, or None."""
    return next((float(scores[k]) for k in LATENCY_KEYS if isinstance(scores.get(k), int | float)), None)
