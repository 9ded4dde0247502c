"""The registry after a killed run, on the embedded sqlite store (which answers version numbers as ``int``):
the repair keeps the version behind ``staging``, a recorded move a kill left half-done is finished or dropped,
``rollback`` goes back to the version that really held ``staging``, a dead holder's promotion lock is taken
over, and the register task retries an outage but not a user error.

Real MLflow (one sqlite file, a registered model per test), versions made with ``create_model_version`` (no model files needed).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import mlflow
import pytest
from prefect.states import Failed

from quantflow.core.failpoints import FailpointError
from quantflow.registry.promotion import (
    HISTORY_TAG,
    LOCK_SUFFIX,
    OWNER_TAG,
    STAGING,
    STATE_TAG,
    RegistryUnavailable,
    move_staging,
    read_history,
    repair,
    rollback,
    usable_version,
)
from tasks.register import RegisterError, _retry_unless_user_error


@dataclass
class Model:
    """A registered model of the test's own in the module's sqlite store."""

    client: mlflow.MlflowClient
    name: str

    def versions(self, states: list[str]) -> list[str]:
        made = []
        for state in states:
            tags = {STATE_TAG: state, OWNER_TAG: dead_owner()}
            version = self.client.create_model_version(self.name, source="file:///nowhere", tags=tags).version
            made.append(str(version))
        return made

    def history(self, moves: list[str]) -> None:
        entries, previous = [], None
        for version in moves:
            entries.append(
                {"version": version, "previous": previous, "reason": "gate", "at": "t", "by": "test"}
            )
            previous = version
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(entries))

    @property
    def staging(self) -> str:
        return str(self.client.get_registered_model(self.name).aliases[STAGING])

    def moves(self) -> list[str]:
        return [e["version"] for e in read_history(self.client, self.name)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> mlflow.MlflowClient:
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture
def model(store: mlflow.MlflowClient, request: pytest.FixtureRequest) -> Model:
    name = "m-" + "".join(c if c.isalnum() else "-" for c in request.node.name[5:])
    store.create_registered_model(name)
    return Model(store, name)


def dead_owner() -> str:
    """An owner id of a process that has exited (started and reaped here)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:{time.time():.3f}:dead"


def test_repair_on_sqlite_keeps_the_version_behind_staging(model: Model) -> None:
    """Issue item 5: an int version number compared with a str alias marked the served version abandoned."""
    model.versions(["complete", "pending"])
    model.client.set_registered_model_alias(
        model.name, STAGING, "2"
    )  # moved by a run killed before `complete`
    assert repair(model.client, model.name, lock_timeout_s=120) == ["2"]
    assert model.client.get_model_version(model.name, "2").tags[STATE_TAG] == "complete"
    usable_version(model.client, model.name, "2")  # `quantflow promote` accepts the version being served
    assert model.moves() == ["2"]  # the unrecorded move, recorded


def test_rollback_goes_back_to_the_version_that_really_held_staging(model: Model) -> None:
    """Issue item 6: history [1, 3, 5, 8], staging on 9 whose move was not recorded: back to 8, not 5."""
    model.versions(["complete"] * 9)
    model.history(["1", "3", "5", "8"])
    model.client.set_registered_model_alias(model.name, STAGING, "9")
    entry = rollback(model.client, model.name, lock_timeout_s=120)
    assert (entry["previous"], entry["version"]) == ("9", "8") and model.staging == "8"
    assert model.moves() == ["1", "3", "5", "8", "9", "8"]


@pytest.mark.parametrize("state", ["complete", "pending"])
def test_a_move_recorded_but_not_applied_is_finished_or_dropped(
    model: Model, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """History first, then the alias: a run dying between the two leaves a recorded move, which the next holder
    of the lock applies (its version complete, staging still on its `previous`) or drops."""
    model.versions(["complete", state])
    move_staging(model.client, model.name, "1", None, "gate", lock_timeout_s=120)
    monkeypatch.setenv("QUANTFLOW_FAILPOINTS", "staging:after-history=raise")
    with pytest.raises(FailpointError):
        move_staging(model.client, model.name, "2", "1", "promote", lock_timeout_s=120)
    monkeypatch.delenv("QUANTFLOW_FAILPOINTS")
    assert (model.moves(), model.staging) == (["1", "2"], "1")
    repair(model.client, model.name, lock_timeout_s=120)
    expected = "2" if state == "complete" else "1"
    assert model.staging == expected and model.moves()[-1] == expected


def test_the_promotion_lock_of_a_dead_process_is_taken_over(model: Model) -> None:
    model.versions(["complete"])
    lock = f"{model.name}{LOCK_SUFFIX}"
    model.client.create_registered_model(lock, tags={OWNER_TAG: dead_owner()})
    started = time.monotonic()
    move_staging(model.client, model.name, "1", None, "gate", lock_timeout_s=3600)
    assert time.monotonic() - started < 30
    assert not model.client.search_registered_models(f"name = '{lock}'")


def test_the_register_task_retries_an_outage_not_a_user_error() -> None:
    """Issue item 3: the retry filter skipped every QuantflowError, RegistryUnavailable included."""
    assert _retry_unless_user_error(
        None, None, Failed(data=RegistryUnavailable("MLflow at x did not answer"))
    )
    assert _retry_unless_user_error(None, None, Failed(data=ConnectionError("reset")))
    assert not _retry_unless_user_error(
        None, None, Failed(data=RegisterError("reports/metrics.json missing"))
    )
