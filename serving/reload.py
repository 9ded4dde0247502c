"""The model slot: which version answers now, and the poller that swaps in a new one when the alias moves.

A swap is one attribute assignment (atomic under the GIL): a request reads ``slot.current`` once and keeps
that object, so requests in flight finish on the old version while new ones get the new. The new version is
downloaded and loaded beside the old one first; a failed load leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from serving.model import ServedModel
from serving.registry import ModelRef, Registry

logger = logging.getLogger(__name__)

RETRY_S = 2.0  # until a first version loads, retry this often


class ModelSlot:
    """Holds the served model; ``load_latest`` is the only writer (run by the poller, one at a time)."""

    def __init__(
        self,
        registry: Registry | None,
        name: str,
        alias: str,
        threads: int,
        folder: Path | None = None,
        on_swap: Callable[[ServedModel], None] | None = None,
        role: str = "serving",  # what the log says it does with a version it loads
    ) -> None:
        if registry is None and folder is None:
            raise ValueError("a model slot needs a registry or a model folder (got neither)")
        self.registry = registry
        self.name = name
        self.alias = alias
        self.threads = threads
        self.folder = folder
        self.on_swap = on_swap
        self.role = role
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def load_latest(self) -> bool:
        """Load the version behind the alias if it is not the one served; True when it swapped."""
        with self._lock:
            if self.registry is None:
                if self.current is not None:
                    return False
                assert self.folder is not None
                model = ServedModel.load(self.folder, self.name, "local", None, self.threads)
            else:
                ref = self.registry.resolve(self.name, self.alias)
                if self.current is not None and self.current.version == ref.version:
                    return False
                model = self._load(ref)
            old, self.current = self.current, model
            self.last_error = None
        logger.info(
            "%s %s v%s (%s)%s",
            self.role,
            model.name,
            model.version,
            model.variant,
            f", was v{old.version}" if old else "",
        )
        if self.on_swap:
            self.on_swap(model)
        return True

    def _load(self, ref: ModelRef) -> ServedModel:
        assert self.registry is not None
        folder = self.registry.fetch(ref)
        return ServedModel.load(folder, ref.name, ref.version, ref.alias, self.threads)

    async def poll(self, interval_s: float) -> None:
        """Forever: load (on the first turn) or re-check the alias every ``interval_s``; errors are logged
        and kept for ``/ready``, never raised, so a registry outage only delays the next version."""
        while True:
            try:
                await asyncio.to_thread(self.load_latest)
            except Exception as exc:  # noqa: BLE001 (any failure: keep serving the old version)
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("could not load %s@%s: %s", self.name, self.alias, self.last_error)
            if self.current is not None and (self.registry is None or interval_s <= 0):
                return  # a local folder never changes; interval 0 means "load once"
            await asyncio.sleep(interval_s if self.current is not None else RETRY_S)
