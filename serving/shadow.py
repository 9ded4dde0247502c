"""The shadow challenger (``serve.shadow: challenger``): the version behind ``@challenger`` scores the texts the
served model answered, after the response, and the prediction log gets a ``shadow`` line per text with the
served version and label beside it (``agree``).

The challenger has its own :class:`ModelSlot` on the same registry and cache as the served one, and is polled
like it, every ``serve.poll_interval_s``. No ``@challenger`` alias: one warning (again only after one has come
and gone), no shadow lines, the service serves as ever. A sampled request (``serve.shadow_sample``) is queued
with one ``put_nowait`` when its answer is built (a queue of its own, ``serve.log_queue`` requests long; full:
the request is not shadowed, counted) and scored by a thread at its next turn (every ``TURN_S``), so after the
response has gone; the texts of several requests are scored in one ORT batch. ORT releases the interpreter
lock while it runs: the challenger costs a second core more than the requests' time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from serving.log_writer import PredictionLog, drain
from serving.model import ServedModel
from serving.reload import RETRY_S, ModelSlot

logger = logging.getLogger(__name__)

TURN_S = 0.1  # the scoring thread drains its queue this often
BATCH_TEXTS = 64  # texts per challenger call (a request holds at most serve.max_texts: never split)
COMPLAIN_S = 60.0

# one answered request: (unix time, served ServedModel, texts, served predictions)
Request = tuple[float, ServedModel, list[str], list[dict[str, Any]]]


class Shadow:
    """The challenger's slot, poller, queue and scoring thread; its lines go through ``log``."""

    def __init__(
        self, slot: ModelSlot, log: PredictionLog, capacity: int, registry: CollectorRegistry
    ) -> None:
        if slot.registry is None:
            raise ValueError("the shadow challenger needs a registry slot (got a local model folder)")
        self.slot = slot
        self.log = log
        self.queue: queue.Queue[Request] = queue.Queue(capacity)
        self.model_info = Gauge(
            "quantflow_shadow_model_info",
            "The challenger scoring answered texts in the shadow (value 1)",
            ["name", "version", "variant"],
            registry=registry,
        )
        slot.on_swap = self._swapped
        self.warned = False  # the missing alias was reported
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._complained = -COMPLAIN_S

    def offer(self, request: Request) -> None:
        """Queue one answered request (the request path: never blocks, never raises)."""
        try:
            self.queue.put_nowait(request)
        except queue.Full:
            self.log.drop("shadow", "shadow_queue_full", len(request[2]))

    # the alias
    def refresh(self) -> None:
        """One look at ``@challenger``: load the version behind it if new, or stop shadowing if it is gone."""
        assert self.slot.registry is not None
        if self.slot.registry.lookup(self.slot.name, self.slot.alias) is None:
            self._absent()
            return
        self.warned = False
        self.slot.load_latest()

    def _absent(self) -> None:
        gone, self.slot.current = self.slot.current, None
        if gone is not None:
            self.model_info.clear()
            logger.warning(
                "shadow: @%s left %s v%s: shadow scoring stopped", self.slot.alias, gone.name, gone.version
            )
        if not self.warned:
            self.warned = True
            assert self.slot.registry is not None
            logger.warning(
                "serve.shadow: no version of %r holds the alias @%s in %s: no shadow lines until one does "
                "(MlflowClient().set_registered_model_alias(%r, %r, <version>)); serving goes on",
                self.slot.name,
                self.slot.alias,
                self.slot.registry.tracking_uri,
                self.slot.name,
                self.slot.alias,
            )

    def _swapped(self, model: ServedModel) -> None:
        self.model_info.clear()
        self.model_info.labels(model.name, model.version, model.variant).set(1)

    async def poll(self, interval_s: float) -> None:
        """Until cancelled: look at the alias every ``interval_s`` (0: until a first answer); errors are logged,
        never raised."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # noqa: BLE001 (a registry outage: the challenger, if any, stays)
                logger.error(
                    "shadow: could not load %s@%s: %s: %s",
                    self.slot.name,
                    self.slot.alias,
                    type(exc).__name__,
                    exc,
                )
            else:
                if interval_s <= 0:
                    return
            await asyncio.sleep(interval_s if interval_s > 0 else RETRY_S)

    # the scoring thread
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop after the batch being scored; what is still queued is dropped (counted as ``shutdown``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        left = drain(self.queue)
        if left:
            self.log.drop("shadow", "shutdown", sum(len(r[2]) for r in left))

    def _run(self) -> None:
        while not self._stop.wait(TURN_S):
            self.score_pending()

    def score_pending(self) -> int:
        """Score every queued request with the challenger and hand the lines to the log; texts scored."""
        requests = drain(self.queue)
        challenger = self.slot.current
        if not requests or challenger is None:  # the alias went away after they were queued
            return 0
        scored = 0
        for batch in batches(requests, BATCH_TEXTS):
            texts = [text for request in batch for text in request[2]]
            try:
                predictions = challenger.predict(texts)
            except Exception as exc:  # noqa: BLE001 (a broken challenger must not stop the thread)
                self.log.drop("shadow", "shadow_error", len(texts))
                self._complain(
                    f"{challenger.name} v{challenger.version} failed on a batch: {type(exc).__name__}: {exc}"
                )
                continue
            start = 0
            for moment, served, request_texts, served_predictions in batch:
                end = start + len(request_texts)
                answer = predictions[start:end]
                self.log.offer(
                    ("shadow", moment, challenger, request_texts, answer, served, served_predictions)
                )
                start = end
            scored += len(texts)
        return scored

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._complained >= COMPLAIN_S:
            self._complained = now
            logger.error("shadow: %s (counted in quantflow_prediction_log_dropped_total)", message)


def batches(requests: list[Request], texts: int) -> list[list[Request]]:
    """Consecutive requests grouped up to ``texts`` texts a group (a bigger request is a group of its own)."""
    groups: list[list[Request]] = []
    size = texts
    for request in requests:
        if size + len(request[2]) > texts:
            groups.append([])
            size = 0
        groups[-1].append(request)
        size += len(request[2])
    return groups
