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
from quantflow.registry.promotion import Retry, no_inner_http_retries, retrying

NOTE_TAG = "mlflow.note.content"  # the description MLflow shows for an experiment, a run or a model

logger = logging.getLogger(__name__)


class TrackingError(QuantflowError):
    """The tracking store is in a state the registry cannot write to (a deleted experiment, a corrupted file...)."""


SQLITE_PREFIX = "sqlite:///"


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


def ensure_experiment(
    client: mlflow.MlflowClient, name: str, artifact_dir: Path | None, description: str | None = None
) -> str:
    """The id of experiment ``name``, created (artifacts in ``artifact_dir``, or where the server says) when
    missing, with ``description`` when it has none; a deleted one is an error that says how to restore it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.as_uri() if artifact_dir is not None else None
        logger.info("register: creating experiment %r (artifacts: %s)", name, location or "server default")
        experiment_id = client.create_experiment(name, artifact_location=location)
        has_description = False
    elif experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}`, "
            "or set register.experiment"
        )
    else:
        experiment_id = experiment.experiment_id
        has_description = bool(experiment.tags.get(NOTE_TAG))
    if description and not has_description:
        client.set_experiment_tag(experiment_id, NOTE_TAG, description)
    return experiment_id


def store_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (the embedded default), None for any other store."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


def check_store(root: Path, retry: Retry) -> str:
    """Fail fast when the tracking store cannot be used, before a night trains or commits anything; its URI.

    A sqlite file that is not a database (or an MLflow schema it cannot read) is a TrackingError naming the
    file; a server that does not answer is a RegistryUnavailable naming its URI, after ``retry``.
    """
    uri, _ = resolve_tracking_uri(root)

    def probe() -> None:
        make_client(uri).search_registered_models(max_results=1)

    path = store_file(uri)
    if path is None:
        with no_inner_http_retries():
            retrying(probe, "check the tracking store", retry, uri)
        return uri
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - sqlite/SQLAlchemy/alembic errors alike: the file is unusable
        cause = str(exc.__cause__ or exc).splitlines()[0][:200]
        raise TrackingError(
            f"{path}: the MLflow store (sqlite) cannot be used: {type(exc).__name__}: {cause}. Restore the file "
            f"from a backup, or move it away to start an empty registry (its runs and versions would be lost); "
            "nothing was trained or committed"
        ) from None
    return uri
