"""Build the service from params and run it with uvicorn: one worker, asyncio loop, httptools parser.

Measured here (BENCHMARKS.md, Serving): httptools doubles throughput over h11; uvloop adds nothing on top and,
once saturated at concurrency 64, starves some connections (p99 0.4-1.4 s against 0.04-0.1 s on asyncio), so
the loop stays asyncio. One worker on purpose: ``uvicorn --workers 2`` lost TCP_NODELAY here (every request
stalled ~44 ms, DESIGN.md); scale out with replicas behind a load balancer, each polling the alias.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from quantflow.core.layout import tracking_uri
from quantflow.core.params import Params
from serving.app import Service
from serving.model import ServedModel
from serving.registry import Registry
from serving.reload import ModelSlot

logger = logging.getLogger(__name__)


def build_service(params: Params, root: Path, model_dir: Path | None = None) -> Service:
    """The ASGI app for ``params.serve``: a local model folder, or ``<model_name>@<alias>`` in the registry."""
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
    return Service(serve, slot)


def fastest(option: str, module: str, fallback: str) -> str:
    return option if importlib.util.find_spec(module) else fallback


def run(service: Service, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Access logs are off: at thousands of requests/s they cost more than the model."""
    import uvicorn

    uvicorn.run(
        service,
        host=host,
        port=port,
        workers=1,
        loop="asyncio",
        http=fastest("httptools", "httptools", "h11"),
        access_log=False,
        log_level="info",
    )


def load_model(params: Params, root: Path, model_dir: Path | None = None) -> ServedModel:
    """The model the service would serve now (for ``quantflow predict``): same resolution, same cache."""
    slot = build_service(params, root, model_dir).slot
    slot.load_latest()
    assert slot.current is not None
    return slot.current
