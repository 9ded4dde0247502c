"""Find the model behind an alias in the MLflow registry and fetch its variant folder into a local cache.

MLflow is imported inside the functions: ``/health`` answers and ``--help`` prints without it. The tracking URI
is resolved as the register step does (``MLFLOW_TRACKING_URI``, else the project's ``sqlite:///mlflow.db``),
re-implemented here so that the service imports nothing from ``tasks/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from quantflow.errors import QuantflowError

logger = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"


class RegistryError(QuantflowError):
    """The registry has no such model or alias, or a model version does not hold a quantflow variant folder."""


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as the alias pointed at it when asked."""

    name: str
    version: str
    alias: str


def resolve_tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded store the nightly flow writes to."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{root.resolve() / 'mlflow.db'}"


class Registry:
    """A thin view of the MLflow registry: which version holds an alias, and its files, cached by version."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir

    def _client(self):  # noqa: ANN202 (mlflow is imported lazily)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve(self, name: str, alias: str) -> ModelRef:
        """The version behind ``name@alias``; a missing model or alias names the fix."""
        from mlflow.exceptions import MlflowException

        try:
            version = self._client().get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise RegistryError(
                f"no version of {name!r} holds the alias @{alias} in {self.tracking_uri} ({exc.message}); "
                "run `quantflow run` (or `make run`) first, set MLFLOW_TRACKING_URI, or serve a folder "
                "with --model-dir"
            ) from None
        return ModelRef(name=name, version=str(version.version), alias=alias)

    def fetch(self, ref: ModelRef) -> Path:
        """The variant folder of ``ref``, downloaded once into ``cache_dir/<name>/<version>``."""
        target = self.cache_dir / ref.name / ref.version
        if not (target / "MLmodel").is_file():
            self._download(ref, target)
        return variant_folder(target)

    def _download(self, ref: ModelRef, target: Path) -> None:
        """Download beside the target, then rename: a killed download never looks like a cached version."""
        import mlflow.artifacts

        partial = target.with_name(f"{ref.version}.partial-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{ref.name}/{ref.version}",
                dst_path=str(partial),
                tracking_uri=self.tracking_uri,
            )
            if target.exists():  # another replica sharing the cache got there first
                return
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("downloaded %s v%s into %s", ref.name, ref.version, target)


def variant_folder(model_root: Path) -> Path:
    """The pyfunc's ``model_dir`` artifact (model.onnx + model.json + tokenizer) inside a downloaded model."""
    from serving.pyfunc import ARTIFACT_KEY  # imports mlflow.pyfunc: only once a registry is in use

    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if ARTIFACT_KEY not in artifacts:
        raise RegistryError(
            f"{model_root}: the model has no {ARTIFACT_KEY!r} artifact (has: {sorted(artifacts)}); "
            "it was not logged by quantflow's register step"
        )
    return model_root / artifacts[ARTIFACT_KEY]["path"]
