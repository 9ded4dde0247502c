"""The whole nightly flow, shrunk: a temp git + DVC project, a real `mlflow server`, Prefect's test harness.

One good run is shared by the tests of this module; the bad-input runs follow it and must leave its registry,
its `staging` alias and its DVC data as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from flows.nightly import RunSummary, nightly_retrain
from quantflow.core.errors import DataError, ValidationFailed
from quantflow.core.params import ParamsError
from quantflow.intake.versioning import tool_env
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROJECT_FILES = (
    "dvc.yaml",
    "expectations",
    "quantflow",
    "tasks",
    "data/external/.gitkeep",
    "data/accepted/.gitkeep",
)
TINY = {
    "ingest": {"dataset": "news_vs_comment", "max_rows_per_class": 200},
    "validate": {"min_rows_per_class": 20},
    "preprocess": {"max_len": 48, "max_vocab": 1500},
    "train": {
        "embed_dim": 16,
        "num_filters": 16,
        "kernel_sizes": [2, 3],
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.01,
        "threads": 1,
    },
    "evaluate": {"baseline_max_features": 5000},
    "register": {"min_f1": 0.5},
}


def sh(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(args: list[str], cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def make_project(root: Path) -> Path:
    """A git + DVC repository holding the project's pipeline files and a tiny params.yaml."""
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/reports/\n/dvc-remote/\n")
    sh(["git", "init", "-q"], root)
    dvc(["init", "-q"], root)
    dvc(["remote", "add", "-d", "local", str(root / "dvc-remote")], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project"], root)
    return root


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> Iterator[str]:  # noqa: F811
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    yield mlflow_server
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def good_run(project: Path, tracking: str, harness: None) -> RunSummary:
    return nightly_retrain(root=str(project))


@pytest.fixture
def client(tracking: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def registry_state(client: mlflow.MlflowClient, name: str) -> dict[str, Any]:
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "versions": sorted(v.version for v in versions),
        "aliases": dict(client.get_registered_model(name).aliases),
    }


def test_registers_version_with_both_aliases(good_run: RunSummary, client: mlflow.MlflowClient) -> None:
    reg = good_run.registered
    assert reg.model_name == "quantflow-news_vs_comment" and reg.version == "1" and reg.promoted
    assert registry_state(client, reg.model_name)["aliases"] == {"challenger": "1", "staging": "1"}
    version = client.get_model_version(reg.model_name, "1")
    assert version.tags["gate.passed"] == "true"
    run = client.get_run(reg.run_id)
    assert (
        run.data.tags["git_commit"] == sh(["git", "rev-parse", "HEAD"], Path(good_run_root(good_run))).strip()
    )
    assert run.data.tags["prefect_flow_run_id"] not in ("", "none")
    assert len(run.data.tags["dvc_lock_sha256"]) == 64


def good_run_root(summary: RunSummary) -> Path:
    return summary.results["ingest"].path.parents[2]


def test_staging_model_answers_raw_text(good_run: RunSummary, tracking: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{good_run.registered.model_name}@staging")
    texts = ["国务院召开全国经济工作会议", "这本书质量不错，推荐购买"]
    out = model.predict(texts)
    assert len(out) == 2 and {p.label for p in out} <= {"news", "comment"}
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in out)
    # a DataFrame with a text column gives the same answers
    assert [p.label for p in model.predict(pd.DataFrame({"text": texts}))] == [p.label for p in out]


def test_metrics_reports_and_clean_dvc_status(good_run: RunSummary, project: Path) -> None:
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    compression = json.loads((project / "reports" / "compression.json").read_text())
    assert {"fp32", "baseline"} <= set(metrics) and {"fp32", "int8-static"} <= set(compression["variants"])
    assert (project / "reports" / "plots" / "confusion_matrix.png").is_file()
    assert json.loads(dvc(["status", "--json"], project)) == {}
    assert "up to date" in dvc(["repro"], project).lower()
    assert any((project / "dvc-remote").rglob("*")), "the flow pushes the data to the DVC remote"


def test_repro_after_changing_epochs_reruns_train_onwards(good_run: RunSummary, project: Path) -> None:
    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["epochs"] = 3
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    output = dvc(["repro"], project)
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "compress"}, output
    assert json.loads(dvc(["status", "--json"], project)) == {}
    assert len(json.loads((project / "reports" / "train_history.json").read_text())) >= 2


def write_user_file(project: Path, frame: pd.DataFrame, name: str) -> str:
    path = project / "data" / "external" / name
    frame.to_csv(path, index=False)
    return str(path.relative_to(project))


@pytest.mark.parametrize(
    "case",
    ["label outside the set", "missing text column", "empty file", "unreadable file", "unknown dataset"],
)
def test_bad_input_stops_the_run_and_changes_nothing(
    good_run: RunSummary, project: Path, case: str, client: mlflow.MlflowClient, tiny_frame: pd.DataFrame
) -> None:
    name = good_run.registered.model_name
    before = (
        registry_state(client, name),
        (project / "dvc.lock").read_text(),
        (project / "data" / "raw" / "news_vs_comment.parquet").read_bytes(),
    )
    user = {"dataset": "news_vs_comment", "text_column": "text", "label_column": "label"}
    if case == "label outside the set":
        bad = tiny_frame.copy()
        bad.loc[5, "label"] = "sports"
        overrides, expected = {"ingest.path": write_user_file(project, bad, "bad.csv")}, ValidationFailed
        message = ["label", "sports", "row 5"]
    elif case == "missing text column":
        path = write_user_file(project, tiny_frame[["label"]], "nolabel.csv")
        overrides, expected, message = {"ingest.path": path}, DataError, ["nolabel.csv", "'text'"]
    elif case == "empty file":
        (project / "data" / "external" / "empty.csv").write_text("")
        overrides, expected, message = (
            {"ingest.path": "data/external/empty.csv"},
            DataError,
            ["empty.csv", "empty"],
        )
    elif case == "unreadable file":
        (project / "data" / "external" / "junk.parquet").write_bytes(b"\x00not parquet\xff")
        overrides, expected = {"ingest.path": "data/external/junk.parquet"}, DataError
        message = ["junk.parquet", "cannot read"]
    else:
        overrides, expected, message = {"ingest.dataset": "tweets"}, ParamsError, ["ingest", "tweets"]
    if "ingest.path" in overrides:
        overrides.update(
            {f"ingest.{k}": v for k, v in user.items()}, **{"validate.labels": ["news", "comment"]}
        )
    with pytest.raises(expected) as err:
        nightly_retrain(root=str(project), overrides=overrides)
    for fragment in message:
        assert fragment in str(err.value)
    after = (
        registry_state(client, name),
        (project / "dvc.lock").read_text(),
        (project / "data" / "raw" / "news_vs_comment.parquet").read_bytes(),
    )
    assert after == before
    for leftover in (project / "data" / "external").glob("*.*"):
        leftover.unlink()
