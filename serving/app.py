"""The REST service: a lean ASGI path for ``POST /predict`` and ``POST /explain``, FastAPI for the rest.

Why not FastAPI routes for the hot path: per request, FastAPI's routing, dependency solving and response
validation cost more than the 40 µs int8 model (DESIGN.md: FastAPI + ORT ~3,800 req/s vs ~11,400 for a bare
ASGI app). The lean path is one synchronous call, :meth:`Service.answer` (method, path, body → status, JSON
bytes): it parses with orjson, checks by hand with messages that name the bad value and runs the model. The
service's own HTTP server (serving/http.py) calls it straight from the parser, on the event loop for small
bodies and in a thread otherwise (:meth:`Service.inline`); the ASGI entry point below does the same for any
ASGI server (the benchmark's uvicorn rows, the tests' in-process client).

Each answered /predict request, sampled, is queued for the prediction log (serving/log_writer.py) and for the
shadow challenger (serving/shadow.py): one ``put_nowait`` each of what the request already holds; the lines are
built and written by their threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from random import random
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from quantflow.core.params import ServeParams
from serving.log_writer import PredictionLog
from serving.model import ServedModel
from serving.reload import ModelSlot
from serving.shadow import Shadow

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

INLINE_BYTES = 16_000  # /predict bodies up to this size (~5,000 CJK characters) run on the event loop
DRAIN_FACTOR = 16  # an oversized body is read (and dropped) up to this many times the limit, then cut off
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
JSON_HEADERS = [(b"content-type", b"application/json")]


class BadRequest(Exception):
    """A request the service refuses: ``status`` is the 4xx code, the message says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Metrics:
    """Prometheus metrics in a registry of the app's own (two apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "quantflow_requests",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "quantflow_request_seconds",
            "Request latency in the service",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter("quantflow_texts", "Texts classified", registry=self.registry)
        self.model = Gauge(
            "quantflow_model_info",
            "The served model (value 1)",
            ["name", "version", "variant"],
            registry=self.registry,
        )
        self.version = Gauge("quantflow_model_version", "Registry version served", registry=self.registry)
        self.swaps = Counter("quantflow_model_swaps", "Model versions loaded", registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((endpoint, status))
        if children is None:  # .labels() looks up a dict under a lock: do it once per pair
            children = self._children[(endpoint, status)] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    def swapped(self, model: ServedModel) -> None:
        self.model.clear()
        self.model.labels(model.name, model.version, model.variant).set(1)
        if model.version.isdigit():
            self.version.set(int(model.version))
        self.swaps.inc()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, or 413 once it passes ``limit`` bytes (read on and dropped, so the client gets the
    answer instead of a broken pipe, up to ``DRAIN_FACTOR`` times the limit)."""
    declared = dict(scope["headers"]).get(b"content-length")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away")
        body = message.get("body", b"")
        size += len(body)
        more = message.get("more_body", False)
        if size <= limit:
            chunks.append(body)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise too_large(int(declared) if declared else size, limit)
    return b"".join(chunks)


def too_large(size: int, limit: int) -> BadRequest:
    """The 413 for a body of ``size`` bytes (the declared length when the client sent one)."""
    return BadRequest(
        413,
        f"request body is {size} bytes, over serve.max_body_bytes ({limit}): send fewer or shorter texts per request",
    )


def parse_json(body: bytes) -> Any:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            400, f"request body is not valid UTF-8 (byte {exc.start}): encode the JSON as UTF-8"
        ) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f'request body is not valid JSON ({exc}): send {{"texts": ["..."]}}') from None


def check_text(text: Any, where: str, params: ServeParams) -> str:
    if not isinstance(text, str):
        raise BadRequest(422, f"{where} must be a string (got {type(text).__name__}: {str(text)[:50]!r})")
    if len(text) > params.max_chars:
        if params.long_texts == "truncate":
            return text[: params.max_chars]
        raise BadRequest(
            422,
            f"{where} has {len(text)} characters, over serve.max_chars ({params.max_chars}): shorten it, "
            "or set serve.long_texts: truncate",
        )
    return text


def predict_texts(payload: Any, params: ServeParams) -> list[str]:
    """``{"texts": [...]}`` → the texts, checked against the limits; each kind of bad input says what is wrong."""
    if not isinstance(payload, dict) or "texts" not in payload:
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise BadRequest(422, f'body needs a "texts" field: {{"texts": ["..."]}} (got: {got})')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise BadRequest(422, f'"texts" must be a list of strings (got {type(texts).__name__})')
    if not texts:
        raise BadRequest(422, '"texts" is empty: send at least one text')
    if len(texts) > params.max_texts:
        raise BadRequest(
            422,
            f'"texts" holds {len(texts)} texts, over serve.max_texts ({params.max_texts}): split the request',
        )
    return [check_text(t, f"texts[{i}]", params) for i, t in enumerate(texts)]


def explain_text(payload: Any, params: ServeParams) -> str:
    if not isinstance(payload, dict) or "text" not in payload:
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise BadRequest(422, f'body needs a "text" field: {{"text": "..."}} (got: {got})')
    return check_text(payload["text"], '"text"', params)


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Service:
    """The ASGI app: lean handlers for the model endpoints, the FastAPI ``control`` app for everything else.

    With ``log_dir``, answered /predict texts go to the prediction log (``serve.log_*``); with ``challenger`` (the
    ``@challenger`` slot, ``serve.shadow``), they are scored by it too, into shadow lines of the same log."""

    def __init__(
        self,
        params: ServeParams,
        slot: ModelSlot,
        log_dir: Path | None = None,
        challenger: ModelSlot | None = None,
    ) -> None:
        self.params = params
        self.slot = slot
        self.metrics = Metrics()
        slot.on_swap = self.metrics.swapped
        if slot.current is not None:
            self.metrics.swapped(slot.current)
        self.log: PredictionLog | None = None
        self.shadow: Shadow | None = None
        if log_dir is not None and (params.log_sample > 0 or challenger is not None):
            self.log = PredictionLog(
                log_dir,
                keep_text=params.log_text,
                max_bytes=int(params.log_max_mb * 1e6),
                capacity=params.log_queue,
                registry=self.metrics.registry,
            )
            if challenger is not None:
                self.shadow = Shadow(challenger, self.log, params.log_queue, self.metrics.registry)
        self.control = control_app(self)
        self.lean: dict[str, Callable[[Any, ServedModel, float], Any]] = {
            "/predict": self._predict,
            "/explain": self._explain,
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While open, the alias poller runs (loads the first version, then swaps in new ones), and so do the
        prediction log's writer and the challenger's poller and scorer. On closing, the queued lines are written."""
        # what is loaded by now lives as long as the process: out of the collector's full passes, which the
        # requests queued for the log (kept ~0.05 s, so they outlive the young generation) set off more often
        gc.freeze()
        tasks = [asyncio.create_task(self.slot.poll(self.params.poll_interval_s))]
        if self.shadow is not None:
            tasks.append(asyncio.create_task(self.shadow.poll(self.params.poll_interval_s)))
            self.shadow.start()
        if self.log is not None:
            self.log.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(self.close_log)

    def close_log(self) -> None:
        """Stop the challenger (its queue is dropped, counted), then write every queued line and stop the writer."""
        if self.shadow is not None:
            self.shadow.close()
        if self.log is not None:
            self.log.close()

    def inline(self, path: str, body: bytes) -> bool:
        """Whether a lean request runs on the event loop: small /predict bodies (~0.1 ms of model time).
        /explain (one ORT row per token) and bigger bodies go to a thread so they do not stall the others."""
        return path == "/predict" and len(body) <= INLINE_BYTES

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """A lean endpoint's answer to a whole request: status and JSON body; never raises."""
        started = time.perf_counter()
        status, data = self._answer(method, path, body, started)
        out = orjson.dumps(data)
        self.metrics.observe(path, status, time.perf_counter() - started)
        return status, out

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.lean.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.control(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.params.max_body_bytes)
        except BadRequest as exc:
            await send_json(send, exc.status, orjson.dumps({"error": str(exc)}))
            return
        except ConnectionAbortedError:
            return  # nobody to answer
        method, path = scope["method"], scope["path"]
        if self.inline(path, body):
            status, out = self.answer(method, path, body)
        else:
            status, out = await asyncio.to_thread(self.answer, method, path, body)
        await send_json(send, status, out)

    def _answer(self, method: str, path: str, body: bytes, started: float) -> tuple[int, Any]:
        model = self.slot.current  # read once: a swap mid-request does not change the answering version
        try:
            if method != "POST":
                raise BadRequest(405, f"{path} takes POST with a JSON body (got {method})")
            if model is None:
                return 503, {
                    "error": f"no model loaded yet ({self.slot.last_error or 'loading'}); see /ready"
                }
            return 200, self.lean[path](parse_json(body), model, started)
        except BadRequest as exc:
            return exc.status, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 (answer 500 and keep serving; the traceback goes to the log)
            logger.exception("%s failed", path)
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}

    def _predict(self, payload: Any, model: ServedModel, started: float) -> dict[str, Any]:
        texts = predict_texts(payload, self.params)
        predictions = model.predict(texts)
        self.metrics.texts.inc(len(texts))
        if self.log is not None:
            self._keep(model, texts, predictions, started)
        return {
            "model": {"name": model.name, "version": model.version, "variant": model.variant},
            "predictions": predictions,
        }

    def _keep(self, model: ServedModel, texts: list[str], predictions: list[Any], started: float) -> None:
        """Queue an answered request for the log and the challenger, each sampled: one tuple and one
        ``put_nowait`` each, nothing formatted here (the latency is up to the predictions)."""
        assert self.log is not None
        now, sample = time.time(), self.params.log_sample
        if sample >= 1.0 or random() < sample:
            self.log.offer(("served", now, model, texts, predictions, time.perf_counter() - started))
        shadow = self.shadow
        if shadow is not None and shadow.slot.current is not None:
            sample = self.params.shadow_sample
            if sample >= 1.0 or random() < sample:
                shadow.offer((now, model, texts, predictions))

    def _explain(self, payload: Any, model: ServedModel, _started: float) -> dict[str, Any]:
        explanation = model.explain(explain_text(payload, self.params))
        return {
            "model": {"name": model.name, "version": model.version, "variant": model.variant},
            **explanation,
        }


def control_app(service: Service) -> FastAPI:
    """Health, readiness, model card and metrics; its lifespan runs the alias poller (:meth:`Service.running`)."""

    @contextlib.asynccontextmanager
    # under an ASGI server; serving/http.py opens Service.running() itself
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with service.running():
            yield

    app = FastAPI(
        title="quantflow",
        summary="Text classification with the model behind an MLflow alias",
        lifespan=lifespan,
    )

    @app.get("/health")
    def health() -> dict[str, str]:
        """The process is up (says nothing about the model: see /ready)."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """200 once a model is loaded; 503 with the last load error before that."""
        model = service.slot.current
        if model is None:
            return JSONResponse({"ready": False, "error": service.slot.last_error}, status_code=503)
        return JSONResponse({"ready": True, "version": model.version})

    @app.get("/model")
    def model_card() -> JSONResponse:
        """Name, version, alias, variant, labels and metrics of the model answering now."""
        model = service.slot.current
        if model is None:
            return JSONResponse({"error": "no model loaded yet; see /ready"}, status_code=503)
        return JSONResponse(model.describe())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
