"""Self-describing model folders.

A folder holds ``model.json`` (architecture, labels, tokenizer settings, library versions), the tokenizer's
``tokenizer.json`` and ``vocab.json``, and either ``model.pt`` (PyTorch weights) or ``model.onnx``. The service
and the MLflow model need nothing else. This module imports no torch: the torch half lives in models.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "model.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# A registered model (MLflow pyfunc) carries its variant folder as this artifact: the register step logs it,
# the gate's champion check and the service read it. MLmodel (YAML) says where the artifact sits in the model.
ARTIFACT_KEY = "model_dir"
MLMODEL = "MLmodel"
_VERSIONED = ("torch", "onnx", "onnxruntime", "spacy", "numpy", "quantflow")


@dataclass(frozen=True)
class Manifest:
    """What ``model.json`` says about the folder's model."""

    labels: list[str]
    config: dict[str, Any]
    variant: str = "torch-fp32"
    metrics: dict[str, float] | None = None
    versions: dict[str, str] | None = None
    # how logits become probabilities outside the graph (quantflow.core.calibration); None: plain softmax
    calibration: dict[str, Any] | None = None

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "labels": self.labels,
            "config": self.config,
            "variant": self.variant,
            "metrics": self.metrics or {},
            "versions": self.versions or library_versions(),
        }
        if self.calibration is not None:  # absent, not null: an uncalibrated folder's file stays as it was
            data["calibration"] = self.calibration
        _write_manifest(folder, data)

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no {MANIFEST}); run the train step first")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def _write_manifest(folder: Path, data: dict[str, Any]) -> None:
    path = folder / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader (the service) never sees half a manifest


def set_calibration(folder: Path, calibration: dict[str, Any] | None) -> None:
    """Write (or, with None, remove) the ``calibration`` entry of ``folder``'s model.json; every other field and
    every other file of the folder stays as it is."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no {MANIFEST}); run the train step first")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("calibration", None)
    if calibration is not None:
        data["calibration"] = calibration
    _write_manifest(folder, data)


def library_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Python's version and each installed package's of ``names`` (an absent package is left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer files from one folder to another (a model folder carries its own tokenizer)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(src / name, dst / name)


def logged_variant_path(mlmodel_text: str) -> str | None:
    """Where a registered model keeps its variant folder, relative to the model's root, read from the text of
    its ``MLmodel`` file (the pyfunc flavor's ``ARTIFACT_KEY`` artifact); None when the model has none."""
    import yaml  # lazily: the ONNX inference path does not need it

    mlmodel = yaml.safe_load(mlmodel_text) or {}
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    entry = artifacts.get(ARTIFACT_KEY)
    return None if entry is None else str(entry["path"])
