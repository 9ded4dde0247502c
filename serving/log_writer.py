"""The prediction log's writer (the format: quantflow/core/prediction_log.py): one thread per server process
turns the queued requests into lines and appends them, in batches, to that process's file of the day.

The request path only queues: :meth:`PredictionLog.offer` is one ``put_nowait`` of a tuple of what the request
already holds (the model object, its texts, its predictions, the time), one tuple per request. Records, hashes,
JSON and the write happen here, every ``FLUSH_S``; the thread shares the interpreter lock with the requests,
so the lines are encoded with orjson (BENCHMARKS.md, Serving: the prediction log's cost).

Nothing here blocks or fails a request, and nothing stops the service:
- a full queue (``serve.log_queue`` requests) drops that request's lines;
- the size cap (``serve.log_max_mb``, every worker's day folders together): before a write that would pass it,
  the oldest day folders other than today's are deleted; if it is still passed, the lines that do not fit are
  dropped;
- a write error (disk full, a file where the folder should be, no permission) drops the batch, logged at most
  once a minute; a removed folder is made again at the next write.
Each dropped line is counted in ``quantflow_prediction_log_dropped_total{kind, reason}`` and each written one in
``quantflow_prediction_log_lines_total{kind}``. :meth:`PredictionLog.close` writes what is still queued.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from quantflow.core.prediction_log import (
    day_folder,
    encode_lines,
    file_name,
    served_record,
    shadow_record,
)

logger = logging.getLogger(__name__)

# The writer wakes this often: a line reaches its file within it (plus the write). Short turns keep the
# interpreter lock free for the requests: at concurrency 16, turns of 0.2 s (~1,600 requests' lines, ~14 ms of
# work, preempted only every 5 ms) took p99 from 3.7 to 11 ms; 0.05 s turns, 5-8 ms (BENCHMARKS.md, Serving).
FLUSH_S = 0.05
COMPLAIN_S = 60.0  # a failing write is logged at most this often (it is counted every time)
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")

# what the service queues, one tuple per request (built on the request path: no formatting there):
#   ("served", unix time, ServedModel, texts, predictions, seconds in the service)
#   ("shadow", unix time of the served answer, challenger ServedModel, texts, its predictions,
#    served ServedModel, served predictions)
Entry = tuple[Any, ...]


class PredictionLog:
    """The queue between the requests and the writer thread, the thread, and its counters."""

    def __init__(
        self,
        log_dir: Path,
        *,
        keep_text: bool,
        max_bytes: int,
        capacity: int,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log_dir = log_dir
        self.keep_text = keep_text
        self.max_bytes = max_bytes
        self.clock = clock  # "today" for the size cap (the lines carry their own times)
        self.queue: queue.Queue[Entry] = queue.Queue(capacity)
        self.name = file_name(os.getpid(), datetime.fromtimestamp(clock(), UTC))
        self.lines = Counter(
            "quantflow_prediction_log_lines",
            "Lines written to the prediction log",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "quantflow_prediction_log_dropped",
            "Prediction log lines not written: queue_full, size_cap, write_error (shadow lines also "
            "shadow_queue_full, shadow_error, shutdown)",
            ["kind", "reason"],
            registry=registry,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._complained: dict[str, float] = {}

    def offer(self, entry: Entry) -> None:
        """Queue one answered request; the request path: never blocks, never raises."""
        try:
            self.queue.put_nowait(entry)
        except queue.Full:
            self.drop(entry[0], "queue_full", len(entry[3]))

    def drop(self, kind: str, reason: str, lines: int) -> None:
        self.dropped.labels(kind, reason).inc(lines)

    def start(self) -> None:
        """Start the writer thread, in the server process (after the fork: each worker has its own file)."""
        self.name = file_name(os.getpid(), datetime.fromtimestamp(self.clock(), UTC))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is still queued and stop the thread (graceful shutdown)."""
        self._stop.set()
        if self._thread is None:
            self._turn()
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error(
                "prediction log: the writer did not finish within %.0f s; queued lines lost", timeout_s
            )
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self._turn()
        self._turn()

    def _turn(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 (a bug must not end the log: logged, the next turn goes on)
            logger.exception("prediction log: a batch failed")

    def flush(self) -> int:
        """Append the lines of every queued request to the day files now; the number of lines written."""
        entries = drain(self.queue)
        by_day: dict[date, tuple[datetime, list[dict[str, Any]]]] = {}
        for entry in entries:
            moment = datetime.fromtimestamp(entry[1], UTC)
            records = (served_lines if entry[0] == "served" else shadow_lines)(entry, moment, self.keep_text)
            by_day.setdefault(moment.date(), (moment, []))[1].extend(records)
        return sum(
            self.append(day_folder(self.log_dir, m), records) for m, records in sorted(by_day.values())
        )

    def append(self, folder: Path, records: list[dict[str, Any]]) -> int:
        """``records`` at the end of this process's file in ``folder``, as many as the size cap lets in."""
        lines = encode_lines(records)
        try:
            kept = self._fit(lines, folder.name)
            if kept:
                folder.mkdir(parents=True, exist_ok=True)
                append_bytes(folder / self.name, b"".join(lines[:kept]))
        except OSError as exc:
            self._count(records, self.dropped, "write_error")
            self._complain("write_error", f"cannot write {folder / self.name} ({exc}): lines dropped")
            return 0
        if kept < len(lines):
            self._count(records[kept:], self.dropped, "size_cap")
            self._complain(
                "size_cap",
                f"{self.log_dir} is at serve.log_max_mb ({self.max_bytes / 1e6:g} MB) with only today's "
                "files left: new lines dropped; raise serve.log_max_mb or lower serve.log_sample",
            )
        self._count(records[:kept], self.lines)
        return kept

    def _fit(self, lines: list[bytes], writing: str) -> int:
        """How many of ``lines`` fit under the cap, once the oldest day folders (not today's, nor the one
        written to) are deleted as far as needed."""
        needed = sum(map(len, lines))
        sizes = day_sizes(self.log_dir)
        total = sum(sizes.values())
        today = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")
        for day in sorted(sizes):
            if total + needed <= self.max_bytes or day >= today:
                break
            if day == writing:
                continue
            shutil.rmtree(self.log_dir / day, ignore_errors=True)  # another worker may be deleting it too
            total -= sizes[day]
            logger.warning(
                "prediction log: %s over serve.log_max_mb (%g MB): deleted %s (%.1f MB)",
                self.log_dir,
                self.max_bytes / 1e6,
                day,
                sizes[day] / 1e6,
            )
        room = self.max_bytes - total
        return sum(1 for end in itertools.accumulate(map(len, lines)) if end <= room)

    def _count(self, records: list[dict[str, Any]], counter: Counter, *reason: str) -> None:
        shadow = sum(1 for r in records if r["kind"] == "shadow")
        for kind, lines in (("served", len(records) - shadow), ("shadow", shadow)):
            if lines:
                counter.labels(kind, *reason).inc(lines)

    def _complain(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self._complained.get(reason, -COMPLAIN_S) >= COMPLAIN_S:
            self._complained[reason] = now
            logger.error("prediction log: %s (counted in quantflow_prediction_log_dropped_total)", message)


def served_lines(entry: Entry, moment: datetime, keep_text: bool) -> list[dict[str, Any]]:
    """The ``served`` records of one queued request, one per text."""
    _, _, model, texts, predictions, seconds = entry
    name, version, variant, latency_ms = model.name, model.version, model.variant, seconds * 1000
    return [
        served_record(
            moment=moment,
            model=name,
            version=version,
            variant=variant,
            text=text,
            keep_text=keep_text,
            label=p["label"],
            proba=p["probabilities"],
            latency_ms=latency_ms,
        )
        for text, p in zip(texts, predictions, strict=True)
    ]


def shadow_lines(entry: Entry, moment: datetime, keep_text: bool) -> list[dict[str, Any]]:
    """The ``shadow`` records of one request the challenger scored, with the served answers beside."""
    _, _, challenger, texts, predictions, served, served_predictions = entry
    name, version, variant = challenger.name, challenger.version, challenger.variant
    return [
        shadow_record(
            moment=moment,
            model=name,
            version=version,
            variant=variant,
            text=text,
            keep_text=keep_text,
            label=p["label"],
            proba=p["probabilities"],
            staging_version=served.version,
            staging_label=s["label"],
        )
        for text, p, s in zip(texts, predictions, served_predictions, strict=True)
    ]


def drain(source: queue.Queue) -> list[Any]:
    """Everything in ``source`` now, without waiting: under its lock at once (a ``get_nowait`` each cost ~1 µs,
    an eighth of a line's writing)."""
    with source.mutex:
        items = list(source.queue)
        source.queue.clear()
        source.not_full.notify_all()
    return items


def day_sizes(log_dir: Path) -> dict[str, int]:
    """Bytes in each day folder of the log, every worker's files (none yet: empty)."""
    sizes: dict[str, int] = {}
    if not log_dir.exists():
        return sizes
    for day in os.scandir(log_dir):
        if DAY.fullmatch(day.name) and day.is_dir():
            sizes[day.name] = 0
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile by another worker's cap
                for entry in os.scandir(day.path):
                    with contextlib.suppress(FileNotFoundError):
                        sizes[day.name] += entry.stat().st_size
    return sizes


def append_bytes(path: Path, data: bytes) -> None:
    """Append ``data`` whole or not at all: a failed write (disk full) is cut back off, so the next batch does
    not glue its first line to half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
