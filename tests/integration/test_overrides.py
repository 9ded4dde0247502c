"""`--set` is a recorded experiment, and accepted batches belong to their dataset (issue 19, items 1 and 2).

A tiny real project (tests/integration/test_pipeline.py's helpers: git + DVC, a real `mlflow server`, Prefect's
harness). Night 1 runs with `--set train.epochs=1` and a news batch: the override is in params.yaml, in the lock
and in the night's commit, `dvc status` is clean, the version's lineage records that commit and lock, and
`quantflow reproduce` rebuilds the same model. A failing `--set` night leaves params.yaml as it was. Night 2
switches `ingest.dataset` while night 1's accepted news batch is stored: it trains on its own dataset only, and
commits its override although it accepted no batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from flows.nightly import RunSummary, nightly_retrain
from flows.reproduce import reproduce
from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.errors import DataError
from quantflow.core.params import load_params
from quantflow.intake.versioning import file_sha256
from tests.integration.test_pipeline import dvc, harness, make_project, sh, tracking  # noqa: F401
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

HOLDOUT = 0.3
EPOCHS = 1  # the override; params.yaml says test_pipeline's TINY epochs (2)
NEWS, REVIEW = "quantflow-test-overrides-news", "quantflow-test-overrides-review"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("overrides"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["holdout_fraction"] = HOLDOUT
    params["compress"]["variants"] = ["fp32"]  # test time: two trainings and a rebuild in this module
    params["register"].update(model_name=NEWS, experiment="overrides")
    assert params["train"]["epochs"] != EPOCHS
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    sh(["git", "config", "user.email", "t@t"], root)
    sh(["git", "config", "user.name", "nightly"], root)
    sh(["git", "commit", "-qam", "test params"], root)
    return root


@pytest.fixture
def registry(tracking: str) -> mlflow.MlflowClient:  # noqa: F811
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def lock_params(project: Path, stage: str, section: str) -> dict[str, Any]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return lock["stages"][stage]["params"]["params.yaml"][section]


def news_batch() -> pd.DataFrame:
    """60 rows per class of the news corpus's held-back rows: texts the project's ingest never read."""
    frame = load_builtin("news_vs_comment")
    held = frame[held_back(frame, HOLDOUT)].sample(frac=1.0, random_state=1)
    return pd.concat([held[held["label"] == label].iloc[:60] for label in ("news", "comment")])


@pytest.fixture(scope="module")
def night1(project: Path, tracking: str, harness: None) -> RunSummary:  # noqa: F811
    incoming = project / "data" / "incoming"
    incoming.mkdir(parents=True)
    news_batch().to_csv(incoming / "fresh.csv", index=False)
    return nightly_retrain(root=str(project), overrides={"train.epochs": EPOCHS})


def test_an_override_is_in_params_the_lock_and_the_nights_commit(night1: RunSummary, project: Path) -> None:
    assert [b.status for b in night1.intake.batches] == ["accepted"]
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == EPOCHS
    assert lock_params(project, "train", "train")["epochs"] == EPOCHS
    history = json.loads((project / "artifacts" / "candidates" / "neural" / "history.json").read_text())
    assert len(history) == EPOCHS  # the model built is the override's
    assert json.loads(dvc(["status", "--json"], project)) == {}
    assert night1.git_commit == sh(["git", "rev-parse", "HEAD"], project).strip()
    for name in ("params.yaml", "dvc.lock"):
        assert sh(["git", "show", f"{night1.git_commit}:{name}"], project) == (project / name).read_text()
    assert not sh(["git", "status", "--porcelain", "--untracked-files=no"], project).strip()


def test_the_versions_lineage_records_that_commit_and_lock(
    night1: RunSummary,
    project: Path,
    registry: mlflow.MlflowClient,  # noqa: F811
) -> None:
    reg = night1.registered
    tags = registry.get_model_version(reg.model_name, reg.version).tags
    assert (tags["git_commit"], tags["git_dirty"]) == (night1.git_commit, "false")
    assert tags["dvc_lock_sha256"] == file_sha256(project / "dvc.lock")
    assert tags["params_digest"] == load_params(project / "params.yaml").digest()


@pytest.mark.long  # make test-long: a rebuild of the whole pipeline
def test_reproduce_of_the_override_version_matches(
    night1: RunSummary,
    project: Path,
    tracking: str,  # noqa: F811
) -> None:
    result = reproduce(load_params(project / "params.yaml"), project, night1.registered.version)
    assert result.passed and not result.warnings, result.render()
    assert "artifacts/model" in result.identical_outputs, result.render()


def test_git_dirty_counts_params_and_the_lock(night1: RunSummary, project: Path) -> None:
    from quantflow.intake.versioning import lineage

    path = project / "params.yaml"
    committed = path.read_text()
    try:
        path.write_text(committed + "# a hand edit\n")
        assert lineage(project).git_dirty
    finally:
        path.write_text(committed)
    assert not lineage(project).git_dirty


def test_a_failed_override_night_restores_params(night1: RunSummary, project: Path) -> None:
    before = {name: (project / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    head = sh(["git", "rev-parse", "HEAD"], project)
    overrides = {"ingest.path": "data/external/missing.csv", "validate.labels": ["news", "comment"]}
    with pytest.raises(DataError, match="missing.csv"):
        nightly_retrain(root=str(project), overrides=overrides)
    assert {name: (project / name).read_bytes() for name in before} == before
    assert sh(["git", "rev-parse", "HEAD"], project) == head
    assert json.loads(dvc(["status", "--json"], project)) == {}
    [archived] = sorted((project / ".quantflow" / "nights").glob("*.json"))[-1:]
    assert "params.yaml restored" in json.loads(archived.read_text())["outcome"]


@pytest.fixture(scope="module")
def night2(night1: RunSummary, project: Path) -> RunSummary:
    overrides = {"ingest.dataset": "review_sentiment", "register.model_name": REVIEW}
    return nightly_retrain(root=str(project), overrides=overrides)


def test_switching_the_dataset_leaves_the_other_datasets_batches_out(
    night1: RunSummary, night2: RunSummary, project: Path
) -> None:
    stored = project / "data" / "accepted" / "news_vs_comment" / f"{night1.intake.batches[0].name}.parquet"
    assert stored.is_file()  # night 1's batch, kept for its dataset
    raw = pd.read_parquet(project / "data" / "raw" / "review_sentiment.parquet")
    assert set(raw["label"]) == {"positive", "negative"}
    assert night2.registered.model_name == REVIEW and night2.registered.version == "1"
    ingest = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]
    assert "data/accepted/review_sentiment" in {d["path"] for d in ingest["deps"]}
    assert ingest["params"]["params.yaml"]["ingest"]["dataset"] == "review_sentiment"
    assert json.loads(dvc(["status", "--json"], project)) == {}


def test_an_override_night_without_batches_commits_its_params(
    night2: RunSummary,
    project: Path,
    registry: mlflow.MlflowClient,  # noqa: F811
) -> None:
    assert night2.git_commit and night2.git_commit == sh(["git", "rev-parse", "HEAD"], project).strip()
    committed = yaml.safe_load(sh(["git", "show", f"{night2.git_commit}:params.yaml"], project))
    assert committed["ingest"]["dataset"] == "review_sentiment"
    message = sh(["git", "log", "-1", "--format=%s", night2.git_commit], project).strip()
    assert message == (
        f"nightly data: no new batches; params: ingest.dataset=review_sentiment, register.model_name={REVIEW}"
    )  # the commit says why a night without batches committed
    tags = registry.get_model_version(REVIEW, night2.registered.version).tags
    assert (tags["git_commit"], tags["git_dirty"]) == (night2.git_commit, "false")


def test_an_override_equal_to_params_yaml_is_no_change(night2: RunSummary, project: Path) -> None:
    head = sh(["git", "rev-parse", "HEAD"], project)
    summary = nightly_retrain(root=str(project), overrides={"ingest.dataset": "review_sentiment"})
    assert summary.registered is None and summary.retrain is None
    assert sh(["git", "rev-parse", "HEAD"], project) == head


def test_a_night_killed_after_writing_its_overrides_rolls_back_params(
    night2: RunSummary, project: Path
) -> None:
    """The journal of a night that wrote its overrides and died (as after a kill: nothing else ran) makes the
    next run restore params.yaml before it checks the DVC outputs out."""
    from flows.night import open_night, write_overrides
    from quantflow.core.layout import Layout

    path = project / "params.yaml"
    before = path.read_bytes()
    overrides = {"train.epochs": EPOCHS + 4}
    params = load_params(path, overrides)
    layout = Layout.of(params, project)
    write_overrides(layout, open_night(layout, "params.yaml", overrides, params), params)
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == EPOCHS + 4
    summary = nightly_retrain(root=str(project))
    assert summary.recovered is not None and summary.recovered.action == "rolled back"
    assert path.read_bytes() == before
    assert summary.registered is None  # restored, the pipeline is up to date: nothing to retrain
    assert json.loads(dvc(["status", "--json"], project)) == {}
