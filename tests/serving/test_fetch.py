"""How the service gets a version: the alias, then the variant folder's files over the tracking server's REST API
or from the sqlite store's folder; no MLflow, torch or Prefect in its process, no child process; a version that
fails verification never lands in the cache; a store it cannot read is refused up front."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
from typer.testing import CliRunner

from quantflow.cli import app as cli
from quantflow.core.onnx_model import OnnxClassifier
from serving.registry import ModelRef, Registry, RegistryError
from serving.stores import LoggedModelArtifacts, ProxiedArtifacts
from tests.integration.test_register import register_legacy
from tests.mlflow_server import spawn, stop, wait_until_healthy
from tests.params_helpers import write_params
from tests.serving.conftest import Running, launch, register_version, shutdown, wait_ready

logger = logging.getLogger(__name__)

SWAP_TIMEOUT_S = 60.0
TEXTS = ["国家经济发展", "质量很好，服务不错"]


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str | None  # where the test logs versions (None: the server's default)
    env: dict[str, str]  # the service's environment: how it finds the store

    @property
    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def sqlite_store(root: Path) -> Store:
    """The embedded store at ``root/mlflow.db``: the service finds it from ``--root`` (no MLFLOW_TRACKING_URI)."""
    uri = f"sqlite:///{root.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("fetch", artifact_location=(root / "mlartifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return Store(uri, experiment, env)


def variant_copy(variant: Path, folder: Path, damage: str | None = None) -> Path:
    """A copy of the variant folder, with one kind of damage: a truncated model, a missing file, a bad manifest."""
    shutil.copytree(variant, folder)
    if damage == "truncated model.onnx":
        data = (folder / "model.onnx").read_bytes()
        (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    elif damage == "no vocab.json":
        (folder / "vocab.json").unlink()
    elif damage == "model.json not JSON":
        (folder / "model.json").write_text("{labels: [")
    return folder


def wait_for_version(running: Running, version: str) -> float:
    """Seconds until ``/ready`` reports ``version``."""
    started = time.perf_counter()
    while time.perf_counter() - started < SWAP_TIMEOUT_S:
        if httpx.get(f"{running.url}/ready", timeout=5).json().get("version") == version:
            return time.perf_counter() - started
        time.sleep(0.01)
    pytest.fail(f"v{version} not served after {SWAP_TIMEOUT_S:.0f} s:\n{running.log.read_text()[-3000:]}")


@pytest.fixture(params=["http", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    uri = request.getfixturevalue("mlflow_server")
    return Store(uri, None, {**os.environ, "MLFLOW_TRACKING_URI": uri})


@pytest.mark.slow
def test_alias_move_is_served_without_mlflow_torch_prefect_or_a_child_process(
    store: Store, variant: Path, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    """v1 logged by the previous register code, v2 by today's; the service (polling every 50 ms) moves from one
    to the other, and at exit reports what it imported and spawned."""
    name = f"quantflow-fetch-{store.uri.split(':')[0]}"
    old = register_legacy(store.uri, name, variant, store.experiment_id)
    new = register_version(store.uri, variant, name, store.experiment_id)
    store.client.set_registered_model_alias(name, "staging", old)
    root, facts = tmp_path, tmp_path / "facts.json"  # the sqlite store's service finds root/mlflow.db
    serve = {"model_name": name, "poll_interval_s": 0.05, "cache_dir": str(root / "cache")}
    running = launch(root, serve, store.env, facts)
    try:
        wait_ready(running)
        assert httpx.get(f"{running.url}/ready").json()["version"] == old
        store.client.set_registered_model_alias(name, "staging", new)
        swap_s = wait_for_version(running, new)
        answer = httpx.post(f"{running.url}/predict", json={"texts": TEXTS}).json()
    finally:
        shutdown(running)
    assert answer["model"]["version"] == new
    assert [p["label"] for p in answer["predictions"]] == OnnxClassifier(variant).predict(TEXTS)
    assert json.loads(facts.read_text()) == {"heavy": [], "spawned": []}
    assert sorted(p.name for p in (root / "cache" / name).iterdir()) == sorted([old, new])
    record_property("swap_seconds", round(swap_s, 3))
    logger.warning("%s store: v%s served %.3f s after @staging moved", store.uri.split(":")[0], new, swap_s)


@pytest.mark.parametrize("damage", ["truncated model.onnx", "no vocab.json", "model.json not JSON"])
def test_a_version_that_fails_verification_never_looks_cached(
    damage: str, variant: Path, tmp_path: Path
) -> None:
    store = sqlite_store(tmp_path)
    name = "quantflow-fetch-damaged"
    broken = register_legacy(
        store.uri, name, variant_copy(variant, tmp_path / "int8", damage), store.experiment_id
    )
    registry = Registry(store.uri, tmp_path / "cache")
    expected = {"truncated model.onnx": "ONNX Runtime cannot load", "no vocab.json": "lacks vocab.json"}
    with pytest.raises(RegistryError, match=expected.get(damage, "model.json is not valid JSON")):
        registry.fetch(ModelRef(name, broken, "staging"))
    assert list((tmp_path / "cache" / name).iterdir()) == []  # neither the version nor a partial folder
    good = register_legacy(store.uri, name, variant, store.experiment_id)
    folder = registry.fetch(ModelRef(name, good, "staging"))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in variant.iterdir())
    assert [p.name for p in (tmp_path / "cache" / name).iterdir()] == [good]


@pytest.mark.parametrize("uri", ["postgresql://mlflow@db/mlflow", "file:///srv/mlruns", "databricks"])
def test_a_store_the_service_cannot_read_is_refused_with_what_works(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RegistryError) as caught:
        Registry(uri, tmp_path)
    assert (
        uri in str(caught.value) and "http(s)://" in str(caught.value) and "sqlite:///" in str(caught.value)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_params(tmp_path / "params.yaml")
    result = CliRunner().invoke(
        cli, ["serve", "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)]
    )
    assert result.exit_code == 2 and uri in result.output


@pytest.mark.slow
def test_a_server_that_does_not_proxy_artifacts_is_read_through_the_logged_model(
    variant: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``mlflow server --no-serve-artifacts``: clients write artifacts themselves, and the service reads them
    through the server's logged-model endpoints (the server holds the store's credentials)."""
    server = spawn(tmp_path_factory.mktemp("mlflow_unproxied"), proxied=False)
    try:
        wait_until_healthy(server.proc, server.uri, server.log_path)
        version = register_version(server.uri, variant, "quantflow-fetch-unproxied")
        cache = tmp_path_factory.mktemp("cache")
        registry = Registry(server.uri, cache)
        assert isinstance(
            registry.store.artifacts("quantflow-fetch-unproxied", version), LoggedModelArtifacts
        )
        folder = registry.fetch(ModelRef("quantflow-fetch-unproxied", version, "staging"))
    finally:
        stop(server.proc)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in variant.iterdir())
    assert OnnxClassifier(folder).predict(TEXTS) == OnnxClassifier(variant).predict(TEXTS)


@pytest.mark.slow
def test_a_proxying_server_is_read_through_mlflow_artifacts(registry: mlflow.MlflowClient) -> None:
    """The shared server proxies artifacts: the service reads them from ``/api/2.0/mlflow-artifacts``."""
    store = Registry(registry.tracking_uri, Path("unused")).store
    assert isinstance(store.artifacts("quantflow-test-serve", "1"), ProxiedArtifacts)
