"""`quantflow reproduce`: a version registered by the nightly flow earlier in this test is rebuilt from its
recorded commit and dvc.lock in a temporary git worktree (dvc pull + dvc repro --force) and matches.

The project is the shrunken one of tests/integration/test_pipeline.py (its helpers are imported, not copied).
The flow records the commit *before* it writes dvc.lock, so the commit holds no lock: reproduce takes the lock
from the run's ``lineage/dvc.lock`` artifact, checked against the recorded sha256.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

import tests.integration.test_pipeline as pipeline
from flows.nightly import RunSummary, nightly_retrain
from flows.reproduce import ReproduceError, reproduce
from quantflow.core.params import load_params
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make test-long: a rebuild of the whole pipeline
NAME = "quantflow-test-reproduce"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mlflow_server_process: object) -> Path:  # noqa: F811
    """test_pipeline's project with its own model name and two compress variants (time), committed: the
    rebuild reads params.yaml from the recorded commit."""
    root = pipeline.make_project(tmp_path_factory.mktemp("reproduce"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["register"].update(model_name=NAME, experiment="reproduce")
    if "variants" in params["compress"]:
        params["compress"]["variants"] = ["fp32", "int8-static"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    pipeline.sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "params"], root)
    return root


@pytest.fixture(scope="module")
def registered(project: Path, mlflow_server: str) -> Iterator[RunSummary]:  # noqa: F811
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        with prefect_test_harness(server_startup_timeout=60):
            yield nightly_retrain(root=str(project))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def test_registered_version_carries_lineage(registered: RunSummary, mlflow_server: str) -> None:  # noqa: F811
    reg = registered.registered
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    tags = client.get_model_version(reg.model_name, reg.version).tags
    assert tags["git_dirty"] == "false" and len(tags["git_commit"]) == 40
    assert len(tags["dvc_lock_sha256"]) == 64
    assert tags["data_md5.data/split"].endswith(".dir") and "data_md5.artifacts/model" in tags
    assert tags["lib.torch"] and tags["lib.onnxruntime"] and tags["params_digest"]
    assert tags["prefect_flow_run_id"] not in ("", "none")
    assert tags["quantflow.state"] == "complete"
    card = client.get_model_version(reg.model_name, reg.version).description
    for section in ("model card", "Metrics on the test split", "Compression", "Data version and lineage"):
        assert section in card


def test_reproduce_rebuilds_the_version_within_tolerance(
    registered: RunSummary,
    project: Path,
    mlflow_server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = reproduce(load_params(project / "params.yaml"), project, registered.registered.version)
    assert result.passed and not result.warnings, result.render()
    names = {c.name for c in result.checks}
    assert {"test_accuracy", "test_macro_f1", "shipped_accuracy", "onnx_fp32_accuracy"} <= names
    # seeded, deterministic training: the rebuilt model is the same file, not merely as accurate
    assert "artifacts/model" in result.identical_outputs, result.render()
    assert not (project / ".git" / "worktrees").exists() or not any(
        (project / ".git" / "worktrees").iterdir()
    )


def test_reproduce_refuses_a_version_without_lineage(
    registered: RunSummary,
    project: Path,
    mlflow_server: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with pytest.raises(ReproduceError, match="not found"):
        reproduce(load_params(project / "params.yaml"), project, "99")
