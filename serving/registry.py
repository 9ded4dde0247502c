"""Find the model behind an alias in the MLflow registry and fetch its variant folder into a local cache.

The service process never imports MLflow (seconds and ~200 MB here) and starts no child process: the alias is
one read of the registry, and a new version's files come over the tracking server's REST API or from the
sqlite store's local artifact folder (serving/stores.py). Only the files needed are fetched: ``MLmodel``, to
locate the variant folder, and that folder (model.onnx, model.json, tokenizer.json, vocab.json). The cache
mirrors the registered model's layout (``<cache>/<name>/<version>/MLmodel`` + ``artifacts/<variant>/...``),
so versions logged before the models-from-code pyfunc, and caches filled by earlier releases, serve alike.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from quantflow.core.bundle import ARTIFACT_KEY, MANIFEST, MLMODEL, TOKENIZER_FILES, logged_variant_path
from quantflow.core.onnx_model import MODEL_FILE
from serving.stores import ArtifactSource, RegistryError, copy_folder, open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as the alias pointed at it when asked."""

    name: str
    version: str
    alias: str


class Registry:
    """A thin view of the MLflow registry: which version holds an alias, and its files, cached by version.

    An unsupported tracking URI is refused here, when the service is built, with what would work instead."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir
        self.store = open_store(tracking_uri)

    def lookup(self, name: str, alias: str) -> ModelRef | None:
        """The version behind ``name@alias``, None when the model or the alias does not exist."""
        version = self.store.alias_version(name, alias)
        return None if version is None else ModelRef(name=name, version=version, alias=alias)

    def resolve(self, name: str, alias: str) -> ModelRef:
        """The version behind ``name@alias``; a missing model or alias names the fix."""
        ref = self.lookup(name, alias)
        if ref is None:
            raise RegistryError(
                f"no version of {name!r} holds the alias @{alias} in {self.tracking_uri}; run `quantflow run` "
                "(or `make run`) first, set MLFLOW_TRACKING_URI, or serve a folder with --model-dir"
            )
        return ref

    def fetch(self, ref: ModelRef) -> Path:
        """The variant folder of ``ref``, downloaded once into ``cache_dir/<name>/<version>``."""
        target = self.cache_dir / ref.name / ref.version
        if not (target / MLMODEL).is_file():
            self._download(ref, target)
        return variant_folder(target)

    def _download(self, ref: ModelRef, target: Path) -> None:
        """Download beside the target, verify, then rename: a partial download never looks cached."""
        source = self.store.artifacts(ref.name, ref.version)
        partial = target.with_name(f"{ref.version}.partial-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            fetch_variant(source, partial)
            verify_variant(variant_folder(partial), f"{ref.name} v{ref.version}")
            if not target.exists():  # else another replica sharing the cache got there first
                partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("downloaded %s v%s into %s", ref.name, ref.version, target)


def fetch_variant(source: ArtifactSource, dst: Path) -> None:
    """``MLmodel`` and the variant folder it names, from ``source`` into ``dst`` (same relative layout)."""
    source.download(MLMODEL, dst / MLMODEL)
    relative = variant_path(dst)
    copy_folder(source, relative, dst / relative)


def variant_path(model_root: Path) -> str:
    """Where the model's ``ARTIFACT_KEY`` artifact sits, relative to its root (from its MLmodel)."""
    relative = logged_variant_path((model_root / MLMODEL).read_text(encoding="utf-8"))
    if relative is None:
        raise RegistryError(
            f"{model_root}: the model has no {ARTIFACT_KEY!r} artifact in its {MLMODEL}; "
            "it was not logged by quantflow's register step"
        )
    return relative


def variant_folder(model_root: Path) -> Path:
    """The variant folder (model.onnx + model.json + tokenizer) inside a downloaded model."""
    return model_root / variant_path(model_root)


def verify_variant(folder: Path, what: str) -> None:
    """Every file present, ``model.json`` parses, ONNX Runtime loads ``model.onnx``; else a RegistryError."""
    missing = [n for n in (MODEL_FILE, MANIFEST, *TOKENIZER_FILES) if not (folder / n).is_file()]
    if missing:
        raise RegistryError(f"{what}: its variant folder lacks {', '.join(missing)}; re-register it")
    try:
        json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{what}: {MANIFEST} is not valid JSON ({exc}); re-register it") from None
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a load check: no thread pool for the cores
    try:
        ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 (ORT raises its own Fail/InvalidGraph/... types)
        raise RegistryError(
            f"{what}: ONNX Runtime cannot load {MODEL_FILE} ({exc}); re-register it"
        ) from None
