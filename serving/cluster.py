"""``quantflow predict`` on a Dask cluster, for inputs that outgrow one machine.

A partitioned Parquet dataset is read with ``dask.dataframe``; each partition is scored by
:func:`serving.scoring.score` on a worker and written as one part of a partitioned Parquet output. The model
travels once: its folder's files (a few MB) go to every worker in a :class:`ModelPlugin`, which writes them to
the worker's local directory and opens one ONNX Runtime session per worker, kept for every partition it
scores (and set up again on workers that join later). The client resolves the model as ``quantflow serve``
does (registry alias or ``--model-dir``), so the workers need no access to the registry or the project.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from serving.model import ServedModel

logger = logging.getLogger(__name__)

PLUGIN = "quantflow-model"


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin carrying a model folder's files; ``setup`` loads them once per worker."""

    name = PLUGIN
    idempotent = True  # registering the same model again is a no-op

    def __init__(self, model: ServedModel, threads: int) -> None:
        self.files = {p.name: p.read_bytes() for p in sorted(model.folder.iterdir()) if p.is_file()}
        self.identity = (model.name, model.version, model.alias)
        self.threads = threads
        self.digest = hashlib.sha256(b"".join(self.files.values())).hexdigest()[:16]
        self.model: ServedModel | None = None

    def setup(self, worker: Any) -> None:
        folder = Path(getattr(worker, "local_directory", None) or tempfile.mkdtemp()) / f"model-{self.digest}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
        name, version, alias = self.identity
        self.model = ServedModel.load(folder, name, version, alias, self.threads)
        logger.info("worker %s loaded %s v%s", getattr(worker, "address", "?"), name, version)


def add_predictions(frame: Any, proba: np.ndarray, labels: list[str], version: str, variant: str) -> Any:
    """A pandas partition plus the columns of :func:`serving.scoring.with_predictions`, same names and order."""
    out = frame.copy()
    out["label"] = np.array(labels, dtype=object)[proba.argmax(axis=1)]
    for j, label in enumerate(labels):
        out[f"proba_{label}"] = proba[:, j].astype(np.float64)
    out["model_version"] = version
    out["variant"] = variant
    return out.astype({"label": "str", "model_version": "str", "variant": "str"})


def score_partition(frame: Any, text_column: str, labels: list[str]) -> Any:
    """Runs on a worker: the partition scored with the worker's one model session."""
    from distributed import get_worker

    from serving.scoring import score

    model = get_worker().plugins[PLUGIN].model
    texts = ["" if t is None or t != t else str(t) for t in frame[text_column].tolist()]  # t != t: NaN
    proba = score(model, texts, progress=False)
    return add_predictions(frame, proba, labels, model.version, model.variant)


@dataclass(frozen=True)
class ClusterRun:
    rows: int
    partitions: int
    workers: int
    seconds: float


def connect(workers: int | None, dask_address: str | None) -> Any:
    """A client of the scheduler at ``dask_address``, or of a new LocalCluster of ``workers`` processes with one
    thread each (closed with the client)."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(
        logging.WARNING
    )  # a dozen INFO lines per cluster start and stop
    if dask_address:
        return Client(dask_address)
    cluster = LocalCluster(
        n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    client.close_cluster = cluster  # type: ignore[attr-defined]
    return client


def predict_on_cluster(
    model: ServedModel,
    src: Path | str,
    dst: Path | str,
    text_column: str = "text",
    workers: int | None = None,
    dask_address: str | None = None,
    threads: int = 1,
) -> ClusterRun:
    """Score the Parquet dataset ``src`` (a folder of parts, a file or a glob) into the folder ``dst``, one
    output part per input partition; a progress bar counts the partitions."""
    import dask.dataframe as dd
    from distributed import progress

    started = time.perf_counter()
    client = connect(workers, dask_address)
    try:
        client.register_plugin(ModelPlugin(model, threads))
        frame = dd.read_parquet(str(src))
        if text_column not in frame.columns:
            raise ValueError(
                f"{src}: no {text_column!r} column (has: {list(frame.columns)}); pass --text-column"
            )
        meta = add_predictions(
            frame._meta, np.zeros((0, len(model.labels))), model.labels, model.version, model.variant
        )
        scored = frame.map_partitions(score_partition, text_column, model.labels, meta=meta)
        written = client.compute(scored.to_parquet(str(dst), write_index=False, compute=False))
        progress(written)
        written.result()
        n_workers = len(client.scheduler_info()["workers"])
    finally:
        client.close()
        cluster = getattr(client, "close_cluster", None)
        if cluster is not None:
            cluster.close()
    import pyarrow.dataset as ds

    rows = ds.dataset(str(dst), format="parquet").count_rows()  # the parts' footers, not their data
    return ClusterRun(rows, frame.npartitions, n_workers, time.perf_counter() - started)
