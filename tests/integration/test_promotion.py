"""Promotion you can trust, against a real ``mlflow server``: audit trail, rollback, manual promotion, and the
faults: the server going away mid-register, a promotion racing another, a register killed with SIGKILL.

Faults are real: a small TCP relay sits between the client and the server and, when it sees a given request,
acts before relaying the server's answer (drops every connection and stops listening, SIGKILLs the register
process, or lets another promotion land first). Nothing in MLflow is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

import tests.integration.test_register as fake
from quantflow.cli import app
from quantflow.core.failpoints import FailpointError
from quantflow.core.params import Params
from quantflow.registry.promotion import (
    CHALLENGER,
    LOCK_SUFFIX,
    STAGING,
    STATE_TAG,
    PromotionError,
    RegistryUnavailable,
    move_staging,
    read_history,
)
from quantflow.registry.registration import NIGHT_TAG
from tasks.register import register
from tests.mlflow_server import free_port, mlflow_server, mlflow_server_process  # noqa: F401
from tests.params_helpers import params_with

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CREATE_VERSION = b"POST /api/2.0/mlflow/model-versions/create"
SET_ALIAS = b"POST /api/2.0/mlflow/registered-models/alias"


class FaultyLink:
    """A TCP relay to the server; ``action`` runs once, when the answer to the first request containing
    ``trigger`` arrives, before that answer is relayed."""

    def __init__(self, target: str, trigger: bytes, action: Callable[[FaultyLink], None]) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.trigger, self.action = trigger, action
        self.armed = threading.Event()
        self.fired = threading.Event()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if upstream and self.trigger in chunk:
                    self.armed.set()
                if not upstream and self.armed.is_set() and not self.fired.is_set():
                    self.fired.set()
                    self.action(self)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def cut(self) -> None:
        """The server is gone: new connections are refused, open ones drop (shutdown wakes blocked threads)."""
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, mlflow_server_process: object) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("template") / "int8"
    fake.build_variant(folder, fake.synthetic_split())
    return folder


@pytest.fixture
def make_root(tmp_path: Path, template: Path) -> Callable[..., Path]:
    """A project folder as register reads it (the fake reports of test_register) plus a params.yaml."""

    def make(int8_accuracy: float = 0.985) -> Path:
        root = Path(tempfile_dir(tmp_path))
        shutil.copytree(template, root / "artifacts" / "variants" / "int8")
        fake.write_reports(root / "reports", int8_accuracy)
        (root / "data" / "split").mkdir(parents=True)
        fake.synthetic_split().to_parquet(root / "data" / "split" / "test.parquet")
        return root

    return make


def tempfile_dir(base: Path) -> Path:
    index = len(list(base.glob("p*")))
    folder = base / f"p{index}"
    folder.mkdir()
    return folder


@pytest.fixture
def params(request: pytest.FixtureRequest) -> Params:
    """A registered model of the test's own, fast retries and a short lock timeout."""
    name = f"promo-{request.node.name[5:40].replace('_', '-')}"
    return params_with(
        {
            "register.model_name": name,
            "register.experiment": "promotion",
            "register.retries": 2,
            "register.retry_backoff_s": 0.2,
            "compress.max_drop_pp": 1.0,  # the fake int8 trails fp32 by 0.5 points
            "register.lock_timeout_s": 120,
            "register.bootstrap_samples": 200,
        }
    )


@pytest.fixture
def client(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def state(client: mlflow.MlflowClient, name: str) -> dict:
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "aliases": dict(client.get_registered_model(name).aliases),
        "states": {v.version: v.tags.get(STATE_TAG) for v in versions},
        "history": [e["version"] for e in read_history(client, name)],
        "lock": bool(client.search_registered_models(f"name = '{name}{LOCK_SUFFIX}'")),
    }


def another_version(client: mlflow.MlflowClient, name: str, of: str) -> str:
    """A second, complete version of the same logged model: a real version without the cost of a run."""
    source = client.get_model_version(name, of)
    return str(mlflow.register_model(source.source, name, tags={STATE_TAG: "complete"}).version)


def assert_consistent(client: mlflow.MlflowClient, name: str) -> None:
    """Every alias points at a complete version, staging is the last recorded move, no lock is left."""
    now = state(client, name)
    for alias, version in now["aliases"].items():
        assert now["states"][version] == "complete", (alias, now)
    assert now["history"][-1] == now["aliases"][STAGING], now
    assert not now["lock"], now


def test_every_staging_move_is_recorded_and_rolled_back(
    client: mlflow.MlflowClient, make_root: Callable[..., Path], params: Params
) -> None:
    first = register(params, make_root())
    second = register(params, make_root())  # same model, same texts: not significantly worse, promoted
    bad = register(params, make_root(int8_accuracy=0.9))
    assert (first.promoted, second.promoted, bad.promoted) == (True, True, False)
    name = params.model_name
    assert client.get_registered_model(name).aliases == {STAGING: second.version, CHALLENGER: bad.version}
    tags = client.get_model_version(name, second.version).tags
    assert float(tags["gate.paired.p_value"]) == 1.0 and tags["gate.champion.passed"] == "true"
    assert tags["gate.paired.version"] == first.version
    refused = client.get_model_version(name, bad.version)
    assert "max_drop_pp failed" in refused.tags["gate.verdict"] and "Gate: failed" in refused.description

    root = make_root()
    (root / "params.yaml").write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    cli = ["--params", str(root / "params.yaml"), "--root", str(root)]
    out = CliRunner().invoke(app, ["rollback", *cli])
    assert out.exit_code == 0, out.output
    assert client.get_registered_model(name).aliases[STAGING] == first.version
    out = CliRunner().invoke(app, ["promote", "--version", bad.version, *cli])  # a human overrides the gate
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(app, ["rollback", *cli])
    assert client.get_registered_model(name).aliases[STAGING] == first.version, out.output
    history = read_history(client, name)
    assert [e["version"] for e in history] == [
        first.version,
        second.version,
        first.version,
        bad.version,
        first.version,
    ]
    assert [e["reason"].split()[0] for e in history] == ["gate", "gate", "rollback", "promote", "rollback"]
    assert all(e["at"] and e["by"] for e in history)
    out = CliRunner().invoke(app, ["rollback", *cli])  # back past the first move: nothing to go back to
    assert out.exit_code == 2 and "no earlier @staging" in out.output
    assert_consistent(client, name)


def test_concurrent_promotions_are_serialized(
    client: mlflow.MlflowClient, make_root: Callable[..., Path], params: Params
) -> None:
    name = params.model_name
    first = register(params, make_root())
    versions = [first.version, another_version(client, name, first.version)]
    move_staging(client, name, versions[1], first.version, "promote", lock_timeout_s=120)
    champion = client.get_registered_model(name).aliases[STAGING]
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def contender(version: str) -> None:
        barrier.wait()
        try:
            move_staging(client, name, version, champion, "gate", lock_timeout_s=120)
            outcomes.append(f"won v{version}")
        except PromotionError as exc:
            outcomes.append(f"stale: {exc}")

    # four runs evaluated against the same champion try to replace it with v1: one move, three refusals
    threads = [threading.Thread(target=contender, args=(versions[0],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and len(outcomes) == 4, outcomes
    assert all("(stale)" in o for o in outcomes if o not in winners), outcomes
    assert client.get_registered_model(name).aliases[STAGING] == winners[0].split("v")[1]
    assert len(read_history(client, name)) == 3


def test_stale_candidate_never_overwrites_a_newer_promotion(
    client: mlflow.MlflowClient,
    make_root: Callable[..., Path],
    params: Params,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_server: str,  # noqa: F811
) -> None:
    name = params.model_name
    first = register(params, make_root())
    other = another_version(client, name, first.version)

    def newer_promotion_lands(_: FaultyLink) -> None:  # while the candidate is being registered
        move_staging(client, name, other, first.version, "promote", lock_timeout_s=120)

    link = FaultyLink(mlflow_server, CREATE_VERSION, newer_promotion_lands)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", link.uri)
    late = register(params, make_root())
    assert link.fired.is_set() and late.gate["passed"] and not late.promoted
    assert "stale" in late.outcome
    assert client.get_registered_model(name).aliases == {STAGING: other, CHALLENGER: late.version}
    assert "stale" in client.get_model_version(name, late.version).tags["promotion.outcome"]
    assert_consistent(client, name)


def test_unreachable_server_fails_clearly_and_leaves_no_aliased_half_version(
    client: mlflow.MlflowClient,
    make_root: Callable[..., Path],
    params: Params,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = params.model_name
    first = register(params, make_root())
    link = FaultyLink(client.tracking_uri, CREATE_VERSION, FaultyLink.cut)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", link.uri)
    with pytest.raises(RegistryUnavailable, match=r"did not answer .* after 3 attempts") as err:
        register(params, make_root())
    assert link.uri in str(err.value) and "Nothing was promoted" in str(err.value)
    half = state(client, name)
    assert half["aliases"] == {STAGING: first.version, CHALLENGER: first.version}
    assert sorted(half["states"].values()) == ["complete", "pending"]  # created, never finished

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # the server is back
    again = register(params, make_root())
    assert again.promoted
    after = state(client, name)
    assert sorted(after["states"].values()) == ["abandoned", "complete", "complete"]
    assert_consistent(client, name)


KILLED_REGISTER = """
import sys
from pathlib import Path
from quantflow.core.failpoints import FailpointError
from quantflow.core.params import Params
from quantflow.registry.registration import NIGHT_TAG
from tasks.register import register
register(Params.model_validate_json(sys.argv[2]), Path(sys.argv[1]))
"""


def test_sigkill_during_register_then_next_run_repairs(
    client: mlflow.MlflowClient, make_root: Callable[..., Path], params: Params
) -> None:
    name = params.model_name
    first = register(params, make_root())
    child: list[subprocess.Popen] = []

    def kill(_: FaultyLink) -> None:  # the first alias move: challenger set, promotion lock still held
        os.kill(child[0].pid, signal.SIGKILL)

    link = FaultyLink(client.tracking_uri, SET_ALIAS, kill)
    env = {**os.environ, "MLFLOW_TRACKING_URI": link.uri, "PYTHONPATH": str(REPO)}
    child.append(
        subprocess.Popen(
            [sys.executable, "-c", KILLED_REGISTER, str(make_root()), params.model_dump_json(by_alias=True)],
            env=env,
            cwd=REPO,
        )
    )
    assert child[0].wait(timeout=180) == -signal.SIGKILL
    assert link.fired.is_set()
    killed = state(client, name)
    assert killed["lock"] and killed["aliases"][CHALLENGER] != first.version  # the lock a kill leaves
    # aliases only on complete versions: the version was complete before its first alias moved
    assert killed["states"][killed["aliases"][CHALLENGER]] == "complete"

    after = register(params, make_root())  # the dead holder's promotion lock is taken over
    assert after.promoted
    now = state(client, name)
    assert now["states"][killed["aliases"][CHALLENGER]] == "complete"
    assert now["aliases"] == {STAGING: after.version, CHALLENGER: after.version}
    assert_consistent(client, name)


def test_a_night_registers_one_version_whatever_stops_it(
    client: mlflow.MlflowClient,
    make_root: Callable[..., Path],
    params: Params,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A version tagged with a night is reused by the next registration of that night: a pending one is
    completed (never abandoned for a second copy), a complete one keeps its number and gets its aliases."""
    name, root = params.model_name, make_root()
    register(params, root)
    night = {NIGHT_TAG: "night-1"}
    monkeypatch.setenv("QUANTFLOW_FAILPOINTS", "register:after-version=raise")
    with pytest.raises(FailpointError):
        register(params, root, night)
    (pending,) = [v for v, s in state(client, name)["states"].items() if s == "pending"]
    monkeypatch.setenv("QUANTFLOW_FAILPOINTS", "register:after-complete=raise")
    with pytest.raises(FailpointError):
        register(params, root, night)  # completes the pending version, dies before its aliases
    assert state(client, name)["states"][pending] == "complete"
    monkeypatch.delenv("QUANTFLOW_FAILPOINTS")
    again = register(params, root, night)
    assert again.reused and again.version == pending and again.promoted
    assert sorted(state(client, name)["states"].values()) == ["complete", "complete"]
    assert state(client, name)["aliases"] == {STAGING: pending, CHALLENGER: pending}
    assert "Gate: passed" in client.get_model_version(name, pending).description
    assert_consistent(client, name)
