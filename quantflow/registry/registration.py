"""One registration, in the order that keeps faults harmless: repair, gate, run, pending version, card, aliases.

Every new version gets the alias ``challenger``; it also gets ``staging`` when the gate passes
(quantflow/registry/gate.py). Aliases only: registry stages are deprecated. A version is created ``pending``
and carries its gate tags from the start; the model card, the aliases and finally ``quantflow.state=complete``
follow, so a run killed half-way leaves a version no alias points at, which the next run marks ``abandoned``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantflow.core.params import Params
from quantflow.registry.candidate import Inputs
from quantflow.registry.card import model_card
from quantflow.registry.gate import gate_tags, run_gate
from quantflow.registry.promotion import (
    COMPLETE,
    STATE_TAG,
    Retry,
    active_owner,
    no_inner_http_retries,
    repair,
    retrying,
)
from quantflow.registry.runlog import log_run
from quantflow.registry.tracking import (
    ensure_experiment,
    make_client,
    resolve_tracking_uri,
    restoring_sys_path,
    using_tracking_uri,
)
from quantflow.registry.versions import apply_aliases, create_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    gate: dict  # {"passed", "verdict", "checks": [{"name", "value", "threshold", "passed", "detail"}...]}
    tracking_uri: str
    outcome: str = ""  # the verdict, or why a passing candidate was still not promoted


def register_candidate(
    params: Params, root: Path, inputs: Inputs, tags: dict[str, str] | None = None
) -> RegisterResult:
    """Log the run, register the candidate as a new version of ``params.model_name``, apply the gate.

    ``tags`` (git commit, dvc.lock digest, flow-run id...) go on the run and the version, beside
    ``params_digest``. Raises RegistryUnavailable when the tracking server stays unreachable after
    ``register.retries``.
    """
    started = time.perf_counter()
    uri, artifact_dir = resolve_tracking_uri(root)
    client = make_client(uri)
    name, rp = params.model_name, params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)

    def call(what: str, fn: Any) -> Any:
        return retrying(fn, what, retry, uri)

    base_tags = {**(tags or {}), "params_digest": params.digest(), "quantflow.variant": inputs.variant}
    with using_tracking_uri(uri), restoring_sys_path(), no_inner_http_retries(), active_owner() as owner:
        call("repair half-registered versions", lambda: repair(client, name, rp.lock_timeout_s))
        experiment_id = call("experiment", lambda: ensure_experiment(client, rp.experiment, artifact_dir))
        gate = call(
            "champion evaluation", lambda: run_gate(client, name, inputs, rp, params.compress.max_drop_pp)
        )
        all_tags = {**base_tags, **gate_tags(gate)}
        run_id, info = call(
            "log run", lambda: log_run(client, experiment_id, params, inputs, gate, all_tags, root)
        )
        version = call("create version", lambda: create_version(client, name, info, run_id, all_tags, owner))
        card = model_card(name, version, inputs, gate, all_tags)
        call("model card", lambda: client.update_model_version(name, version, description=card))
        promoted, outcome = apply_aliases(call, client, name, version, gate, rp)
        finish = {STATE_TAG: COMPLETE, "promotion.outcome": outcome}
        for key, value in finish.items():
            call("finish", lambda k=key, v=value: client.set_model_version_tag(name, version, k, v))
    logger.info(
        "register: %s v%s (run %s): %s, in %.1f s on %s",
        name,
        version,
        run_id,
        outcome,
        time.perf_counter() - started,
        uri,
    )
    return RegisterResult(run_id, name, version, promoted, gate, uri, outcome)
