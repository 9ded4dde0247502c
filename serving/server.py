"""Build the service from params and run it on the service's own HTTP server (serving/http.py).

Measured here (BENCHMARKS.md, Serving): httptools doubles throughput over h11; uvloop adds nothing on top and,
once saturated at concurrency 64, starves some connections (p99 0.4-1.4 s against 0.04-0.1 s on asyncio), so
the loop stays asyncio. ``serve.workers`` > 1 forks that many server processes, each with its own
``SO_REUSEPORT`` socket on the port (the kernel spreads connections over them) and its own model and alias
poller; each sets TCP_NODELAY on its connections (``uvicorn --workers 2`` lost it here, DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from quantflow.core.layout import tracking_uri
from quantflow.core.params import Params, ServeParams
from serving.model import ServedModel
from serving.registry import Registry
from serving.reload import ModelSlot

if TYPE_CHECKING:  # the app pulls FastAPI and prometheus: `quantflow predict` loads a model without them
    from serving.app import Service

logger = logging.getLogger(__name__)


def build_service(params: Params, root: Path, model_dir: Path | None = None) -> Service:
    """The ASGI app for ``params.serve``: a local model folder, or ``<model_name>@<alias>`` in the registry; its
    prediction log in ``serve.log_dir`` (relative to ``root``), and the challenger slot when ``serve.shadow``."""
    from serving.app import Service

    serve = params.serve
    slot = build_slot(params, root, model_dir)
    log_dir = serve.log_dir if serve.log_dir.is_absolute() else root / serve.log_dir
    return Service(serve, slot, log_dir, challenger_slot(serve, slot))


def challenger_slot(serve: ServeParams, slot: ModelSlot) -> ModelSlot | None:
    """The slot of ``serve.shadow`` (``@challenger``), beside the served one on the same registry and cache;
    None when it is off, or when a local folder is served (no registry: warned)."""
    if serve.shadow is None:
        return None
    if slot.registry is None:
        logger.warning(
            "serve.shadow: %s needs the registry, and --model-dir serves a folder: no shadow lines",
            serve.shadow,
        )
        return None
    return ModelSlot(slot.registry, slot.name, serve.shadow, serve.threads, role="shadow scoring with")


def build_slot(params: Params, root: Path, model_dir: Path | None = None) -> ModelSlot:
    """Where the served model comes from (nothing loaded yet): a local variant folder or the registry alias."""
    serve = params.serve
    name = serve.model_name or params.model_name
    if model_dir is not None:
        if not (model_dir / "model.onnx").is_file():
            raise FileNotFoundError(
                f"{model_dir}: no model.onnx; pass a variant folder such as artifacts/variants/int8"
            )
        slot = ModelSlot(None, model_dir.name, serve.alias, serve.threads, folder=model_dir)
    else:
        cache = serve.cache_dir if serve.cache_dir.is_absolute() else root / serve.cache_dir
        registry = Registry(tracking_uri(root), cache)  # MLFLOW_TRACKING_URI, else <root>/mlflow.db
        slot = ModelSlot(registry, name, serve.alias, serve.threads)
    return slot


def run(service: Service, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM on ``serve.workers`` processes. No access log: at thousands of requests/s it
    costs more than the model; /metrics counts the requests."""
    from serving.http import listen, serve_socket

    workers = service.params.workers
    if workers == 1:
        asyncio.run(serve_socket(service, listen(host, port)))
        return
    first = listen(host, port, reuse_port=True)
    port = first.getsockname()[1]  # --port 0: the others join the port the first one got
    sockets = [first] + [listen(host, port, reuse_port=True) for _ in range(workers - 1)]
    supervise(service, sockets)


def supervise(service: Service, sockets: list[socket.socket]) -> None:
    """Fork one worker per socket and wait for them. SIGTERM/SIGINT are passed on; a worker that dies on its
    own takes the others down and the command exits 1, so the supervisor above (systemd, Kubernetes) restarts
    the whole service rather than running it short of a worker."""
    from serving.http import serve_socket

    children: list[int] = []
    for sock in sockets:
        pid = os.fork()
        if pid == 0:  # the worker: no threads exist yet (the model loads in the poller, after the fork)
            for other in sockets:
                if other is not sock:
                    other.close()
            code = 0
            try:
                asyncio.run(serve_socket(service, sock))
            except BaseException:  # noqa: BLE001 (logged; the exit code tells the supervisor)
                logger.exception("worker %d failed", os.getpid())
                code = 1
            os._exit(code)
        children.append(pid)
    for sock in sockets:
        sock.close()
    stopping, failed = False, False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while children:
        pid, status = os.wait()
        children.remove(pid)
        if not stopping:
            logger.error("worker %d exited (status %d): stopping the others", pid, status)
            failed = True
            forward(signal.SIGTERM, None)
    if failed:
        raise SystemExit(1)


def load_model(params: Params, root: Path, model_dir: Path | None = None) -> ServedModel:
    """The model the service would serve now (for ``quantflow predict``): same resolution, same cache."""
    slot = build_slot(params, root, model_dir)
    slot.load_latest()
    assert slot.current is not None
    return slot.current
