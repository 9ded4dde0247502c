"""Where the registry writes: the tracking URI, the MLflow client, the experiment.

Tracking goes to ``MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server``), else to the embedded default
``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/mlartifacts/``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from quantflow.core.errors import QuantflowError
from quantflow.core.layout import TRACKING_ENV, artifact_root, tracking_uri

logger = logging.getLogger(__name__)


class TrackingError(QuantflowError):
    """The tracking store is in a state the registry cannot write to (a deleted experiment...)."""


def resolve_tracking_uri(root: Path) -> tuple[str, Path | None]:
    """``MLFLOW_TRACKING_URI`` if set (the server picks artifact locations), else the embedded sqlite default
    and the local artifact folder to create the experiment with."""
    return tracking_uri(root), None if os.environ.get(TRACKING_ENV) else artifact_root(root)


def make_client(uri: str) -> mlflow.MlflowClient:
    """A client whose tracking and registry calls both go to ``uri``."""
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def client_for(root: Path) -> tuple[mlflow.MlflowClient, str]:
    """The client of the project at ``root`` and the URI it talks to."""
    uri, _ = resolve_tracking_uri(root)
    return make_client(uri), uri


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (runs, log_model, models:/ URIs) at ``uri`` for the block.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into os.environ, so it is undone
    afterwards; when that variable is already set it is the URI in use and nothing is touched.
    """
    if os.environ.get(TRACKING_ENV):
        yield
        return
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


@contextmanager
def restoring_sys_path() -> Iterator[None]:
    """pyfunc prepends a model's code folder (often a temp dir) to sys.path on every load, including the
    input-example check inside log_model: take those entries off again so a long-lived worker does not collect
    them."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


def ensure_experiment(client: mlflow.MlflowClient, name: str, artifact_dir: Path | None) -> str:
    """The id of experiment ``name``, created (artifacts in ``artifact_dir``, or where the server says) when
    missing; a deleted one is an error that says how to restore it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.as_uri() if artifact_dir is not None else None
        logger.info("register: creating experiment %r (artifacts: %s)", name, location or "server default")
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`, "
            "or set register.experiment"
        )
    return experiment.experiment_id
