"""Registry versions and their aliases: a new ``pending`` version, ``challenger`` and ``staging`` after the gate,
and the manual moves of ``staging`` (``quantflow promote``, ``quantflow rollback``).

Every move goes through quantflow/registry/promotion.py (lock, compare-and-set, history); every registry call
is retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from quantflow.core.failpoints import failpoint
from quantflow.core.params import Params, RegisterParams
from quantflow.registry.promotion import (
    CHALLENGER,
    OWNER_TAG,
    PENDING,
    STAGING,
    STATE_TAG,
    PromotionError,
    Retry,
    aliases,
    move_challenger,
    move_staging,
    no_inner_http_retries,
    promote,
    retrying,
    rollback,
)
from quantflow.registry.tracking import client_for

logger = logging.getLogger(__name__)

Call = Callable[[str, Callable[[], Any]], Any]  # (what, fn) → fn(), retried on transient errors


def create_version(
    client: mlflow.MlflowClient,
    name: str,
    info: ModelInfo,
    run_id: str,
    version_tags: dict[str, str],
    owner: str,
) -> str:
    """A new ``pending`` version of the run's model, or the one an earlier attempt of this run created
    (its response may have been lost): a retry never makes a second version of the same run."""
    try:
        earlier = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        earlier = []
    if earlier:
        return str(earlier[0].version)
    tags = {**version_tags, STATE_TAG: PENDING, OWNER_TAG: owner}
    return str(mlflow.register_model(info.model_uri, name, tags=tags).version)


def apply_aliases(
    call: Call, client: mlflow.MlflowClient, name: str, version: str, gate: dict[str, Any], rp: RegisterParams
) -> tuple[bool, str]:
    """``challenger`` always (unless a newer run took it); ``staging`` by compare-and-set when the gate passed.

    Only on a complete version. Idempotent, so a run finishing a killed night's version can call it again: a
    version that already holds ``staging`` is left there. Returns (promoted, outcome in words)."""
    if not call(f"move @{CHALLENGER}", lambda: move_challenger(client, name, version, rp.lock_timeout_s)):
        logger.warning("register: a newer version holds @%s; v%s does not take it", CHALLENGER, version)
    failpoint("register:after-challenger")
    if not gate["passed"]:
        return False, gate["verdict"]
    if call(f"read @{STAGING}", lambda: aliases(client, name).get(STAGING)) == str(version):
        return True, gate["verdict"]
    try:
        champion = gate["champion_version"]
        call(
            f"move @{STAGING}",
            lambda: move_staging(client, name, version, champion, "gate", rp.lock_timeout_s),
        )
    except PromotionError as exc:
        return False, f"gate passed but not promoted: {exc}"
    failpoint("register:after-staging")
    return True, gate["verdict"]


def manual_move(params: Params, root: Path, version: str | None) -> dict[str, Any]:
    """``version`` given: promote it to ``staging``; None: roll ``staging`` back to the previous holder.
    Serialized and recorded exactly like the gate's moves; returns the history entry."""
    client, uri = client_for(root)
    rp = params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)
    with no_inner_http_retries():
        if version is None:
            return retrying(
                lambda: rollback(client, params.model_name, rp.lock_timeout_s), "rollback", retry, uri
            )
        return retrying(
            lambda: promote(client, params.model_name, version, rp.lock_timeout_s), "promote", retry, uri
        )
