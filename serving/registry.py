"""Find the model behind an alias in the MLflow registry and fetch its variant folder into a local cache.

The service process never imports MLflow (3 s and ~200 MB here): polling the alias is one read of the
registry (the REST endpoint of an ``http(s)://`` tracking server, or one SELECT on the embedded
``sqlite:///mlflow.db``), and a new version is downloaded by a short-lived ``python -m serving.fetch`` child.
Other stores fall back to ``MlflowClient`` in process. The tracking URI is resolved as the register step does
(``MLFLOW_TRACKING_URI``, else the project's ``sqlite:///mlflow.db``), re-implemented here so that the service
imports nothing from ``tasks/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from quantflow.core.errors import QuantflowError
from quantflow.core.layout import TRACKING_ENV, tracking_uri

logger = logging.getLogger(__name__)

ARTIFACT_KEY = (
    "model_dir"  # quantflow.registry.pyfunc.ARTIFACT_KEY, not imported (it imports mlflow); a test ties them
)
FETCH_TIMEOUT_S = 300.0


class RegistryError(QuantflowError):
    """The registry has no such model or alias, or a model version does not hold a quantflow variant folder."""


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as the alias pointed at it when asked."""

    name: str
    version: str
    alias: str


resolve_tracking_uri = tracking_uri  # MLFLOW_TRACKING_URI, else the store the nightly flow writes to


class Registry:
    """A thin view of the MLflow registry: which version holds an alias, and its files, cached by version."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir

    def resolve(self, name: str, alias: str) -> ModelRef:
        """The version behind ``name@alias``; a missing model or alias names the fix."""
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            version = rest_alias_version(uri, name, alias)
        elif uri.startswith("sqlite:///"):
            try:
                version = sqlite_alias_version(uri.removeprefix("sqlite:///"), name, alias)
            except sqlite3.OperationalError as exc:  # a schema this reader does not know: ask MLflow
                logger.warning("reading %s directly failed (%s): using MlflowClient", uri, exc)
                version = self._client_alias_version(name, alias)
        else:
            version = self._client_alias_version(name, alias)
        if version is None:
            raise RegistryError(
                f"no version of {name!r} holds the alias @{alias} in {uri}; run `quantflow run` "
                "(or `make run`) first, set MLFLOW_TRACKING_URI, or serve a folder with --model-dir"
            )
        return ModelRef(name=name, version=version, alias=alias)

    def _client_alias_version(self, name: str, alias: str) -> str | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            return str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def fetch(self, ref: ModelRef) -> Path:
        """The variant folder of ``ref``, downloaded once into ``cache_dir/<name>/<version>``."""
        target = self.cache_dir / ref.name / ref.version
        if not (target / "MLmodel").is_file():
            self._download(ref, target)
        return variant_folder(target)

    def _download(self, ref: ModelRef, target: Path) -> None:
        """In a child process (``python -m serving.fetch``), so MLflow never loads into the service."""
        cmd = [sys.executable, "-m", "serving.fetch", self.tracking_uri, ref.name, ref.version, str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RegistryError(f"downloading {ref.name} v{ref.version} failed:\n{tail}")
        logger.info("downloaded %s v%s into %s", ref.name, ref.version, target)


def download(tracking_uri: str, name: str, version: str, target: Path) -> None:
    """Download beside the target, then rename: a killed download never looks like a cached version."""
    import mlflow.artifacts

    partial = target.with_name(f"{version}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(partial), tracking_uri=tracking_uri
        )
        if not target.exists():  # else another replica sharing the cache got there first
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def rest_alias_version(uri: str, name: str, alias: str) -> str | None:
    """One GET on the tracking server's REST API; None when the model or the alias does not exist."""
    query = urllib.parse.urlencode({"name": name, "alias": alias})
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return str(json.loads(answer.read())["model_version"]["version"])
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404):  # RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER_VALUE
            return None
        raise


def sqlite_alias_version(path: str, name: str, alias: str) -> str | None:
    """One read-only SELECT on MLflow's ``registered_model_aliases`` table (schema of MLflow 2.3+)."""
    if not Path(path).is_file():
        raise RegistryError(f"{path}: no MLflow store here; run `quantflow run` first or set {TRACKING_ENV}")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute(
            "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
        ).fetchone()
    return None if row is None else str(row[0])


def variant_folder(model_root: Path) -> Path:
    """The pyfunc's ``model_dir`` artifact (model.onnx + model.json + tokenizer) inside a downloaded model."""
    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text(encoding="utf-8"))
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if ARTIFACT_KEY not in artifacts:
        raise RegistryError(
            f"{model_root}: the model has no {ARTIFACT_KEY!r} artifact (has: {sorted(artifacts)}); "
            "it was not logged by quantflow's register step"
        )
    return model_root / artifacts[ARTIFACT_KEY]["path"]
