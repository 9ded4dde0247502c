"""Moving the ``staging`` alias safely: retries, a registry-side lock, compare-and-set, an audit trail, repair.

MLflow has no compare-and-set on aliases, so promotions are serialized by a lock that lives in the registry
itself: a registered model named ``<name>--promotion-lock``. Creating a registered model is atomic (its name
is a unique key in the server's database), so exactly one process holds the lock; it records its owner
(host, pid) so a lock left by a killed process is taken over once that process is gone or the lock is older
than ``register.lock_timeout_s``. Under the lock the current ``staging`` version is compared with the one the
caller evaluated against; if another run moved it meanwhile, the move is refused (a stale candidate never
overwrites a newer promotion).

Every move of ``staging`` is appended to the registered model's ``staging.history`` tag (JSON), which
``rollback`` replays. The entry is written *before* the alias moves, under the same lock: a kill between the two
leaves a recorded move that did not happen, which the next holder of the lock finishes (the entry's ``previous``
still holds ``staging`` and its version is complete) or drops; an alias moved without an entry (older code) is
recorded by the repair. Versions carry ``quantflow.state``: ``pending`` while register works on them,
``complete`` once every tag and the card are on them (only then may an alias point at them), ``abandoned`` when
a later run finds the pending version's process dead. Version numbers are compared as ``str`` everywhere: the
sqlite store answers ``int``, aliases and the REST store ``str``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from quantflow.core.errors import QuantflowError
from quantflow.core.failpoints import failpoint

logger = logging.getLogger(__name__)

CHALLENGER, STAGING = "challenger", "staging"
HISTORY_TAG = "staging.history"
STATE_TAG, OWNER_TAG = "quantflow.state", "quantflow.owner"
PENDING, COMPLETE, ABANDONED = "pending", "complete", "abandoned"
LOCK_SUFFIX = "--promotion-lock"
HISTORY_KEEP = 40  # entries kept in the tag (a tag value is a bounded string)
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
T = TypeVar("T")


class RegistryUnavailable(QuantflowError):
    """The tracking server did not answer after every retry."""


class PromotionError(QuantflowError):
    """A promotion or rollback was refused: the message says why and what to do."""


@dataclass(frozen=True)
class Retry:
    attempts: int  # total tries, >= 1
    backoff_s: float  # first pause; doubles each time


def is_transient(exc: BaseException) -> bool:
    """A network failure or a 5xx from the server: worth another try. A 4xx (bad name...) is not."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES or "failed with exception" in str(exc)
    return False


def retrying(call: Callable[[], T], what: str, retry: Retry, uri: str) -> T:
    """``call()``, retried on transient errors with exponential backoff; then a RegistryUnavailable."""
    delay = retry.backoff_s
    for attempt in range(1, retry.attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == retry.attempts:
                raise RegistryUnavailable(
                    f"MLflow at {uri} did not answer ({what}) after {retry.attempts} attempts: "
                    f"{str(exc).splitlines()[0][:300]}. Nothing was promoted; start the server (or fix "
                    "MLFLOW_TRACKING_URI) and rerun: the next run marks any half-registered version abandoned"
                ) from exc
            logger.warning(
                "%s failed (attempt %d/%d), retrying in %.1f s: %s", what, attempt, retry.attempts, delay, exc
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def no_inner_http_retries() -> Iterator[None]:
    """MLflow's own HTTP retries (7, backoff up to 2 min) would hide an outage for minutes: ours replace them."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({k: v for k, v in keys.items() if saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


# owners (register calls, lock holders) at work in this process: a pending version or a lock of this process
# whose owner is not listed here was left by an earlier call that failed, and may be repaired at once
ACTIVE_OWNERS: set[str] = set()


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{time.time():.3f}:{uuid.uuid4().hex[:8]}"


@contextmanager
def active_owner() -> Iterator[str]:
    """A fresh owner id, listed as active in this process for the block."""
    owner = owner_id()
    ACTIVE_OWNERS.add(owner)
    try:
        yield owner
    finally:
        ACTIVE_OWNERS.discard(owner)


def owner_is_gone(owner: str, timeout_s: float) -> bool:
    """True when the owner's process (same host) no longer exists, or the owner is older than ``timeout_s``."""
    host, pid_text, started, *_ = (owner.split(":") + ["", "", ""])[:4]
    try:
        pid, since = int(pid_text), float(started)
    except ValueError:
        return True  # unreadable: nobody can still be relying on it
    if time.time() - since > timeout_s:
        return True
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return owner not in ACTIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


# --- the lock -----------------------------------------------------------------------------------------------


def _try_lock(client: mlflow.MlflowClient, lock: str, owner: str, timeout_s: float) -> bool:
    try:
        client.create_registered_model(lock, tags={OWNER_TAG: owner}, description="promotion lock")
        return True
    except MlflowException as exc:
        if _missing(exc):
            # the server met the existing lock, then looked it up for its "already exists" message after the
            # holder had released it (mlflow's SQLAlchemy store does exactly that): free now, try again
            return False
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    try:
        holder = client.get_registered_model(lock).tags.get(OWNER_TAG, "")
    except MlflowException as exc:
        if _missing(exc):
            return False  # released meanwhile: try again at once
        raise
    if owner_is_gone(holder, timeout_s):
        logger.warning("promotion lock %s held by %s, which is gone: taking it over", lock, holder)
        _delete_quietly(client, lock)
    return False


def _delete_quietly(client: mlflow.MlflowClient, lock: str) -> None:
    try:
        client.delete_registered_model(lock)
    except MlflowException as exc:
        if not _missing(exc):
            raise


@contextmanager
def promotion_lock(
    client: mlflow.MlflowClient, name: str, timeout_s: float, wait_s: float = 60.0
) -> Iterator[None]:
    """Hold ``<name>--promotion-lock`` for the block; waits up to ``wait_s`` for another holder."""
    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + wait_s
    pause = 0.05
    with active_owner() as owner:
        while not _try_lock(client, lock, owner, timeout_s):
            if time.monotonic() > deadline:
                raise PromotionError(
                    f"promotion lock {lock!r} still held after {wait_s:.0f} s; if no run is active, delete "
                    f"the registered model {lock!r} in the MLflow UI and rerun"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        try:
            yield
        finally:
            _delete_quietly(client, lock)


# --- history and alias moves --------------------------------------------------------------------------------


def aliases(client: mlflow.MlflowClient, name: str) -> dict[str, str]:
    try:
        # str(): the sqlite store answers version numbers as int, the REST store as str
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise


def read_history(client: mlflow.MlflowClient, name: str) -> list[dict[str, Any]]:
    try:
        raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    return json.loads(raw) if raw else []


def _append_history(client: mlflow.MlflowClient, name: str, entry: dict[str, Any]) -> None:
    history = (read_history(client, name) + [entry])[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history, separators=(",", ":")))


def _record_move(
    client: mlflow.MlflowClient, name: str, version: str, previous: str | None, reason: str
) -> dict[str, Any]:
    """Append the move to the history, then set ``staging``, then the versions' own tags (caller holds the lock).

    History first: a kill after it leaves a recorded move that :func:`_repair_history` finishes or drops, never an
    alias whose move the history lacks (``rollback`` would then skip a version)."""
    version, previous = str(version), None if previous is None else str(previous)
    entry = {
        "version": version,
        "previous": previous,
        "reason": reason,
        "at": now_iso(),
        "by": f"{getpass.getuser()}@{socket.gethostname()}",
    }
    _append_history(client, name, entry)
    failpoint("staging:after-history")
    client.set_registered_model_alias(name, STAGING, version)
    client.set_model_version_tag(name, version, "staging.entered_at", entry["at"])
    client.set_model_version_tag(name, version, "staging.entered_by", f"{reason} ({entry['by']})")
    if previous:
        client.set_model_version_tag(name, previous, "staging.left_at", entry["at"])
    return entry


def move_staging(
    client: mlflow.MlflowClient,
    name: str,
    version: str,
    expected: str | None,
    reason: str,
    lock_timeout_s: float,
) -> dict[str, Any]:
    """Compare-and-set: move ``staging`` to ``version`` only if it still points at ``expected``."""
    with promotion_lock(client, name, lock_timeout_s):
        _repair_history(client, name)  # a move a killed holder recorded but did not apply is settled first
        return _compare_and_move(client, name, str(version), expected, reason)


def _compare_and_move(
    client: mlflow.MlflowClient, name: str, version: str, expected: str | None, reason: str
) -> dict[str, Any]:
    expected = None if expected is None else str(expected)
    current = aliases(client, name).get(STAGING)
    if current != expected:
        raise PromotionError(
            f"@{STAGING} of {name} moved from v{expected} to v{current} while v{version} was being "
            f"evaluated: not promoted (stale). Compare against v{current} by rerunning, or "
            f"`quantflow promote --version {version}` on purpose"
        )
    if current == version:
        raise PromotionError(f"{name} v{version} already holds @{STAGING}: nothing to move")
    return _record_move(client, name, version, current, reason)


def move_challenger(client: mlflow.MlflowClient, name: str, version: str, lock_timeout_s: float) -> bool:
    """Point ``challenger`` at ``version`` unless a newer version already holds it (two runs at once)."""
    with promotion_lock(client, name, lock_timeout_s):
        current = aliases(client, name).get(CHALLENGER)
        if current is not None and int(current) > int(version):
            return False
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        return True


def rollback_target(history: list[dict[str, Any]], current: str | None = None) -> str:
    """Replay the history as a stack (a promotion pushes, a rollback pops) and name the version that held
    ``staging`` before ``current`` (the top of the stack when the history is complete)."""
    stack: list[str] = []
    for entry in history:
        version = str(entry["version"])
        if entry["reason"].startswith("rollback") and stack:
            stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        else:
            stack.append(version)
    if current is not None and stack and stack[-1] != str(current):
        stack.append(str(current))  # a move the history lacks: the recorded top is the one before it
    if len(stack) < 2:
        raise PromotionError(
            f"no earlier @{STAGING} version in the history ({len(history)} moves recorded); "
            "use `quantflow promote --version N` instead"
        )
    return stack[-2]


def usable_version(client: mlflow.MlflowClient, name: str, version: str) -> None:
    """A manual target must exist and not be an abandoned, half-registered version."""
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as exc:
        if _missing(exc):
            raise PromotionError(f"{name} has no version {version!r}; list them in the MLflow UI") from None
        raise
    if mv.tags.get(STATE_TAG) in (PENDING, ABANDONED):
        raise PromotionError(
            f"{name} v{version} is {mv.tags[STATE_TAG]} (its register run did not finish): not promotable"
        )


def promote(
    client: mlflow.MlflowClient, name: str, version: str, lock_timeout_s: float, reason: str = "promote"
) -> dict[str, Any]:
    """Manual promotion: ``staging`` → ``version``, serialized and recorded like the gate's moves."""
    usable_version(client, name, version)
    current = aliases(client, name).get(STAGING)
    if current == version:
        raise PromotionError(f"{name} v{version} already holds @{STAGING}")
    return move_staging(client, name, version, current, reason, lock_timeout_s)


def rollback(client: mlflow.MlflowClient, name: str, lock_timeout_s: float) -> dict[str, Any]:
    """``staging`` back to the version that held it before the current one, from the recorded history.

    One lock for the whole decision: the history is settled first (a move a killed run left half-done), so the
    target is the version that really held ``staging`` before (history [1, 3, 5, 8] with v9 behind the alias
    but unrecorded → v8)."""
    with promotion_lock(client, name, lock_timeout_s):
        _repair_history(client, name)
        current = aliases(client, name).get(STAGING)
        target = rollback_target(read_history(client, name), current)
        usable_version(client, name, target)
        return _compare_and_move(client, name, target, current, f"rollback from v{current}")


# --- repair after a killed run ------------------------------------------------------------------------------


def repair(client: mlflow.MlflowClient, name: str, lock_timeout_s: float) -> list[str]:
    """Finish what killed runs left: a pending version of a dead process is marked abandoned and loses
    ``challenger``, unless it already holds ``staging`` (an alias moved by older code: it is marked complete);
    the history is settled (:func:`_repair_history`). Returns the versions it touched."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    touched: list[str] = []
    with promotion_lock(client, name, lock_timeout_s):
        current = aliases(client, name)
        for mv in versions:
            number = str(mv.version)  # int from the sqlite store: compared with an alias, a str
            if mv.tags.get(STATE_TAG) != PENDING or not owner_is_gone(
                mv.tags.get(OWNER_TAG, ""), lock_timeout_s
            ):
                continue
            state = COMPLETE if current.get(STAGING) == number else ABANDONED
            client.set_model_version_tag(name, number, STATE_TAG, state)
            logger.warning("repair: %s v%s left pending by a dead run: now %s", name, number, state)
            touched.append(number)
        _repair_challenger(client, name, versions, current, touched)
        _repair_history(client, name)
    return touched


def _repair_challenger(
    client: mlflow.MlflowClient, name: str, versions: list[Any], current: dict[str, str], abandoned: list[str]
) -> None:
    if current.get(CHALLENGER) not in abandoned or current.get(CHALLENGER) == current.get(STAGING):
        return
    done = [
        int(v.version)
        for v in versions
        if v.tags.get(STATE_TAG, COMPLETE) == COMPLETE and str(v.version) not in abandoned
    ]
    if done:
        client.set_registered_model_alias(name, CHALLENGER, str(max(done)))
    else:
        client.delete_registered_model_alias(name, CHALLENGER)


def version_state(client: mlflow.MlflowClient, name: str, version: str) -> str | None:
    """``quantflow.state`` of a version (None: no such version; untagged versions of older code: complete)."""
    try:
        return client.get_model_version(name, str(version)).tags.get(STATE_TAG, COMPLETE)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise


def _repair_history(client: mlflow.MlflowClient, name: str) -> None:
    """Make the last history entry and the alias agree (caller holds the lock).

    A recorded move whose alias did not move (killed between the two): finished when ``staging`` still holds the
    entry's ``previous`` and the version is complete, else dropped. An alias moved without an entry: recorded."""
    history = read_history(client, name)
    staging = aliases(client, name).get(STAGING)
    last = history[-1] if history else None
    if last is not None and str(last["version"]) == staging:
        return
    if last is not None and last.get("previous") == staging:
        if version_state(client, name, last["version"]) == COMPLETE:
            client.set_registered_model_alias(name, STAGING, str(last["version"]))
            logger.warning(
                "repair: %s @%s → v%s, a recorded move a killed run did not apply",
                name,
                STAGING,
                last["version"],
            )
            return
        logger.warning("repair: %s: dropping the recorded move to v%s (not complete)", name, last["version"])
        history = history[:-1]
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history, separators=(",", ":")))
        if (history[-1]["version"] if history else None) == staging:
            return
    if staging is not None:
        entry = {
            "version": staging,
            "previous": history[-1]["version"] if history else None,
            "reason": "repair: move of a killed run",
            "at": now_iso(),
            "by": f"{getpass.getuser()}@{socket.gethostname()}",
        }
        _append_history(client, name, entry)
