"""Epochs as they end: training reports each history row here, and whoever listens sees the learning curve live.

The nightly flow listens with its MLflow run (quantflow/registry/pipeline_run.py), so the run's curves grow
while a candidate trains; ``quantflow stage train`` (what ``dvc repro`` runs) has no listener. A listener that
fails is logged and dropped: a learning curve never stops a training. Rows reported in a DDP worker process stay
in that process (the run gets them from the history file when the model is registered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]  # (candidate, {"epoch": n, "train_loss": ..., ...})

_listeners: list[Listener] = []
_candidate: ContextVar[str] = ContextVar("quantflow_candidate", default="model")


@contextmanager
def training(candidate: str) -> Iterator[None]:
    """The rows reported inside the block belong to ``candidate`` (a value of ``train.candidates``)."""
    token = _candidate.set(candidate)
    try:
        yield
    finally:
        _candidate.reset(token)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """``listener`` gets every row reported inside the block, from any thread of this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        if listener in _listeners:  # not when report() dropped it
            _listeners.remove(listener)


def report(row: dict[str, Any]) -> None:
    """One finished epoch's history row, to every listener; a listener that raises is dropped."""
    candidate = _candidate.get()
    for listener in list(_listeners):
        try:
            listener(candidate, row)
        except Exception as exc:  # noqa: BLE001 - a listener's failure must not fail the training
            logger.warning(
                "epoch listener %r failed (%s: %s); it gets no more rows", listener, type(exc).__name__, exc
            )
            if listener in _listeners:
                _listeners.remove(listener)
