"""One registration, in the order that keeps faults harmless: repair, gate, run, pending version, card, complete,
aliases.

Every new version gets the alias ``challenger``; it also gets ``staging`` when the gate passes
(quantflow/registry/gate.py). Aliases only: registry stages are deprecated. A version is created ``pending``
and carries its gate tags from the start; the model card, then ``quantflow.state=complete``, then the aliases
follow, so an alias never points at a version that is not complete, and a run killed before ``complete`` leaves
a version no alias points at, which the next run marks ``abandoned``.

A nightly run tags its run and version with ``quantflow.night``: registering the same night again (the task's
retry, or the next run finishing a night that was killed or met an outage) reuses that night's version instead of
making a second one. A pending version of the night is completed rather than abandoned: it is only ever created
after its run logged everything (reports, gate.json, the model), so it holds exactly the night's model; its card
and aliases are what is missing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from quantflow.core.failpoints import failpoint
from quantflow.core.params import Params, RegisterParams
from quantflow.core.shipped_calibration import describe
from quantflow.registry.candidate import Inputs, candidate_tags
from quantflow.registry.card import model_card
from quantflow.registry.gate import Check, gate_tags, run_gate
from quantflow.registry.promotion import (
    COMPLETE,
    OWNER_TAG,
    PENDING,
    STATE_TAG,
    Retry,
    active_owner,
    no_inner_http_retries,
    read_history,
    repair,
    retrying,
)
from quantflow.registry.runlog import experiment_description, history_table, log_run, model_description
from quantflow.registry.tracking import (
    ensure_experiment,
    make_client,
    resolve_tracking_uri,
    restoring_sys_path,
    using_tracking_uri,
)
from quantflow.registry.versions import Call, apply_aliases, create_version

logger = logging.getLogger(__name__)

NIGHT_TAG = "quantflow.night"  # the nightly run that trained the model: one version per night
HISTORY_ARTIFACT = "staging_history.md"  # the staging.history tag as a table, in every register run


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    gate: dict  # {"passed", "verdict", "checks": [{"name", "value", "threshold", "passed", "detail"}...]}
    tracking_uri: str
    outcome: str = ""  # the verdict, or why a passing candidate was still not promoted
    reused: bool = False  # the night's version existed already (a retry, or a run finishing a killed night)


def night_version(client: mlflow.MlflowClient, name: str, night: str, owner: str) -> ModelVersion | None:
    """The version registered for ``night`` that is not abandoned (complete first), or None.

    A pending one is adopted (its owner becomes ``owner``) so the repair that follows leaves it alone."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return None
    mine = [
        v for v in versions if v.tags.get(NIGHT_TAG) == night and v.tags.get(STATE_TAG) in (PENDING, COMPLETE)
    ]
    if not mine:
        return None
    found = max(mine, key=lambda v: (v.tags.get(STATE_TAG) == COMPLETE, int(v.version)))
    if found.tags.get(STATE_TAG) == PENDING:
        client.set_model_version_tag(name, str(found.version), OWNER_TAG, owner)
    logger.info(
        "register: night %s already has %s v%s (%s): finishing it",
        night,
        name,
        found.version,
        found.tags.get(STATE_TAG),
    )
    return found


def describe_model(client: mlflow.MlflowClient, name: str, description: str) -> None:
    """Set the registered model's description unless someone already wrote one (theirs is kept)."""
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=description)


def load_gate(client: mlflow.MlflowClient, run_id: str) -> dict[str, Any]:
    """The gate decision a run logged (``gate.json``): a reused version keeps the decision it was made with."""
    with tempfile.TemporaryDirectory() as scratch:
        path = client.download_artifacts(run_id, "gate.json", scratch)
        return json.loads(Path(path).read_text(encoding="utf-8"))


def finish_version(
    call: Call,
    client: mlflow.MlflowClient,
    candidate: tuple[str, str, str, dict[str, Any], dict[str, str]],
    inputs: Inputs,
    pending: bool,
    rp: RegisterParams,
) -> tuple[bool, str]:
    """Card and ``complete`` (when still pending), then the aliases, then the outcome tag and the staging history
    as a table in the run (``staging_history.md``); (promoted, outcome).

    ``candidate`` is (model name, version, run id, gate, the version's tags)."""
    name, version, run_id, gate, tags = candidate
    if pending:
        card = model_card(name, version, inputs, gate, tags)
        call("model card", lambda: client.update_model_version(name, version, description=card))
        call("complete", lambda: client.set_model_version_tag(name, version, STATE_TAG, COMPLETE))
        failpoint("register:after-complete")
    promoted, outcome = apply_aliases(call, client, name, version, gate, rp)
    call("outcome", lambda: client.set_model_version_tag(name, version, "promotion.outcome", outcome))
    table = call("staging history", lambda: history_table(read_history(client, name)))
    call("history table", lambda: client.log_text(run_id, table, HISTORY_ARTIFACT))
    return promoted, outcome


def new_version(
    call: Call,
    client: mlflow.MlflowClient,
    params: Params,
    inputs: Inputs,
    base_tags: dict[str, str],
    owner: str,
    root: Path,
    experiment_id: str,
    run_id: str | None = None,
    checks: tuple[Check, ...] = (),
) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """Gate (with the caller's ``checks``), the run (the pipeline's ``run_id``, or a new one), then a pending
    version (and the model's description when it has none); returns (version, run id, gate, the run's and
    version's tags)."""
    name, rp = params.model_name, params.register
    gate = call(
        "champion evaluation",
        lambda: run_gate(client, name, inputs, rp, params.compress.max_drop_pp, checks),
    )
    all_tags = {**base_tags, **gate_tags(gate)}
    run_id, info = call(
        "log run", lambda: log_run(client, experiment_id, params, inputs, gate, all_tags, root, run_id)
    )
    failpoint("register:after-run")
    version = call("create version", lambda: create_version(client, name, info, run_id, all_tags, owner))
    failpoint("register:after-version")
    call("model description", lambda: describe_model(client, name, model_description(params)))
    return version, run_id, gate, all_tags


def version_tags(params: Params, inputs: Inputs) -> dict[str, str]:
    """What every run and version carries beside the caller's tags: params digest, variant, its calibration
    (``temperature T=0.573``; the figures are the ``calibration_*`` metrics), the candidate."""
    return {
        "params_digest": params.digest(),
        "quantflow.variant": inputs.variant,
        "quantflow.calibration": describe(inputs.calibration["calibration"]),
        **candidate_tags(inputs.metrics),
    }


def register_candidate(
    params: Params,
    root: Path,
    inputs: Inputs,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    checks: tuple[Check, ...] = (),
) -> RegisterResult:
    """Log the run, register the candidate as a new version of ``params.model_name``, apply the gate.

    ``tags`` (git commit, dvc.lock digest, flow-run id, the night...) go on the run and the version, beside
    ``params_digest``. ``run_id``: the pipeline's run to log into (pipeline_run.py), left running; without it
    a run of its own is made and ended. ``checks``: gate checks the caller made (the night's live drift). With a
    ``quantflow.night`` tag whose version exists, that version is finished instead (with the gate it had).
    Raises RegistryUnavailable when the tracking server stays unreachable after ``register.retries``.
    """
    started = time.perf_counter()
    uri, artifact_dir = resolve_tracking_uri(root)
    client = make_client(uri)
    name, rp = params.model_name, params.register
    retry = Retry(rp.retries + 1, rp.retry_backoff_s)

    def call(what: str, fn: Any) -> Any:
        return retrying(fn, what, retry, uri)

    base_tags = {**(tags or {}), **version_tags(params, inputs)}
    night = base_tags.get(NIGHT_TAG)
    with using_tracking_uri(uri), restoring_sys_path(), no_inner_http_retries(), active_owner() as owner:
        earlier = (
            call("the night's version", lambda: night_version(client, name, night, owner)) if night else None
        )
        call("repair half-registered versions", lambda: repair(client, name, rp.lock_timeout_s))
        if earlier is None:
            experiment_id = call(
                "experiment",
                lambda: ensure_experiment(
                    client, rp.experiment, artifact_dir, experiment_description(params)
                ),
            )
            version, run_id, gate, all_tags = new_version(
                call, client, params, inputs, base_tags, owner, root, experiment_id, run_id, checks
            )
            pending = True
        else:
            version, run_id, all_tags = str(earlier.version), earlier.run_id, dict(earlier.tags)
            gate = call("the night's gate", lambda: load_gate(client, run_id))
            pending = earlier.tags.get(STATE_TAG) == PENDING
        promoted, outcome = finish_version(
            call, client, (name, version, run_id, gate, all_tags), inputs, pending, rp
        )
    logger.info(
        "register: %s v%s (run %s): %s, in %.1f s on %s",
        name,
        version,
        run_id,
        outcome,
        time.perf_counter() - started,
        uri,
    )
    return RegisterResult(run_id, name, version, promoted, gate, uri, outcome, reused=earlier is not None)
