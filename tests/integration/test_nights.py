"""Nightly batches end to end on a tiny real project (git + DVC, a real `mlflow server`, Prefect's harness).

Night 1 trains on the base data. Night 2 brings the catalog of bad batches: every one is blocked with its
reason, and the DVC data, the registry and `staging` stay as they were. Night 3 brings a good batch (and one
bad): the good one is appended, retrained on and versioned; its test split holds night 1's. Night 4 brings
nothing and does not retrain. One module so that one trained project serves every case (test time).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from flows.nightly import BatchesBlocked, RunSummary, nightly_retrain
from quantflow.core.corpora import held_back, load_builtin
from tests.integration.test_pipeline import (  # noqa: F401
    dvc,
    harness,
    make_project,
    registry_state,
    sh,
    tracking,
)
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

HOLDOUT = 0.3


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("nights"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ingest"]["holdout_fraction"] = HOLDOUT
    params["compress"]["variants"] = ["fp32"]  # test time: two trainings in this module
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    sh(["git", "config", "user.email", "t@t"], root)
    sh(["git", "config", "user.name", "nightly"], root)
    sh(["git", "commit", "-qam", "holdout"], root)
    return root


@pytest.fixture
def registry(tracking: str) -> mlflow.MlflowClient:  # noqa: F811
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


@pytest.fixture(scope="module")
def held() -> pd.DataFrame:
    """The corpus rows the project's ingest holds back: real texts no night has seen."""
    frame = load_builtin("news_vs_comment")
    return frame[held_back(frame, HOLDOUT)].sample(frac=1.0, random_state=1).reset_index(drop=True)


@pytest.fixture(scope="module")
def night1(project: Path, tracking: str, harness: None) -> RunSummary:  # noqa: F811
    summary = nightly_retrain(root=str(project))
    shutil.copy(project / "data" / "split" / "test.parquet", project / "night1_test.parquet")
    return summary


def incoming(project: Path) -> Path:
    folder = project / "data" / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def balanced(held: pd.DataFrame, start: int, n: int) -> pd.DataFrame:
    """n rows per class from the held-back rows, starting at row ``start`` of each class."""
    parts = [held[held["label"] == label].iloc[start : start + n] for label in ("news", "comment")]
    return pd.concat(parts).sample(frac=1.0, random_state=2).reset_index(drop=True)


def state(project: Path, registry: mlflow.MlflowClient, name: str) -> dict[str, Any]:  # noqa: F811
    """What a blocked batch must not change: registry, staging, dvc.lock, raw data, accepted batches."""
    return {
        "registry": registry_state(registry, name),
        "dvc.lock": (project / "dvc.lock").read_text(),
        "raw": (project / "data" / "raw" / "news_vs_comment.parquet").read_bytes(),
        "accepted": sorted(str(p.relative_to(project)) for p in (project / "data" / "accepted").rglob("*")),
        "head": sh(["git", "rev-parse", "HEAD"], project).strip(),
    }


def write_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def bad_batches(held: pd.DataFrame, train: pd.DataFrame) -> dict[str, tuple[str, bytes, list[str]]]:
    """kind → (file name, bytes, fragments the blocking message must hold)."""
    good = balanced(held, 0, 40)
    n = len(good)
    mojibake = good.assign(text=good["text"].map(lambda t: t.encode().decode("latin-1")))
    parquet = io.BytesIO()
    pd.DataFrame({"text": range(n), "label": good["label"]}).to_parquet(parquet, index=False)
    cases: dict[str, tuple[str, pd.DataFrame | bytes, list[str]]] = {
        "empty file": ("empty.csv", b"", ["empty.csv", "empty (0 bytes)"]),
        "header only": ("header.csv", b"text,label\n", ["header.csv", "header but no rows"]),
        "wrong delimiter": ("semi.csv", good.to_csv(index=False, sep=";").encode(), ["wrong delimiter ';'"]),
        "binary file": ("blob.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, ["blob.csv", "binary file"]),
        "wrong file type": ("batch.xlsx", b"PK\x03\x04 not a sheet", ["unsupported file type '.xlsx'"]),
        "unreadable parquet": (
            "junk.parquet",
            b"\x00not parquet\xff",
            ["junk.parquet", "cannot read it as Parquet"],
        ),
        "missing label column": ("nolabel.csv", write_csv(good[["text"]]), ["missing column 'label'"]),
        "text not a string": ("ints.parquet", parquet.getvalue(), ["'text' must hold strings", "int"]),
        "numeric labels": (
            "numeric.csv",
            write_csv(good.assign(label=(good["label"] == "news").astype(int))),
            ["unknown label set ['0', '1']", "label column holds numbers"],
        ),
        "unknown label set": (
            "sports.csv",
            write_csv(good.assign(label=good["label"].map({"news": "sports", "comment": "finance"}))),
            ["unknown label set", "'finance'", "allowed: ['news', 'comment']"],
        ),
        "bad-row share over the threshold": (
            "blanks.csv",
            write_csv(good.assign(text=[" " if i % 3 == 0 else t for i, t in enumerate(good["text"])])),
            ["over nightly.max_bad_row_share", "blank text", "row 0: text=' '"],
        ),
        "unknown labels in some rows": (
            "some_sports.csv",
            write_csv(
                good.assign(label=[("sports" if i % 4 == 0 else x) for i, x in enumerate(good["label"])])
            ),
            ["unknown label: 20 rows", "label='sports'"],
        ),
        "a new label in a few rows": (  # a change of the label set: blocked whatever its share
            "new_label.csv",
            write_csv(good.assign(label=[("sports" if i < 2 else x) for i, x in enumerate(good["label"])])),
            ["labels outside the label set", "'sports' (2 rows)", "whatever its share"],
        ),
        "extremely long texts": (
            "long.csv",
            write_csv(good.assign(text=good["text"].map(lambda t: (t * 3000)[:20000]))),
            ["text length out of bounds", "(20000 chars)"],
        ),
        "mojibake": ("mojibake.csv", write_csv(mojibake), ["mojibake or invalid UTF-8"]),
        "invalid UTF-8": ("gbk.csv", good.to_csv(index=False).encode("gbk"), ["mojibake or invalid UTF-8"]),
        "expected script share": (
            "english.csv",
            write_csv(good.assign(text=[f"plain english review number {i}" for i in range(n)])),
            ["expected-script (CJK) characters"],
        ),
        "markup junk": (
            "html.csv",
            write_csv(good.assign(text=[f"<div class='x'>{t}</div>" for t in good["text"]])),
            ["share of rows with HTML or URLs"],
        ),
        "duplicates within the batch": (
            "dupes.csv",
            write_csv(pd.concat([good.iloc[:10]] * 8, ignore_index=True)),
            ["duplicates within the batch"],
        ),
        "repeats yesterday's data": (
            "yesterday.csv",
            write_csv(train[["text", "label"]].iloc[:n]),
            ["already in the dataset"],
        ),
        "all rows one class": (
            "all_news.csv",
            write_csv(balanced(held, 100, 60).query("label == 'news'")),
            ["drift block: label mix (TVD)", "batch news 100%"],
        ),
        "texts labelled otherwise": (
            "flipped.csv",
            write_csv(
                train[["text", "label"]]
                .iloc[:n]
                .assign(label=lambda f: f["label"].map({"news": "comment", "comment": "news"}))
            ),
            ["text already labelled otherwise"],
        ),
    }
    return cases


@pytest.fixture(scope="module")
def night2(night1: RunSummary, project: Path, held: pd.DataFrame, tracking: str) -> dict[str, Any]:  # noqa: F811
    """All the bad batches in one night: one flow run, one verdict per batch. Run with a `--set` override: a
    night whose batches are all blocked does not retrain for it."""
    registry = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    name = night1.registered.model_name
    before = state(project, registry, name)
    train = pd.read_parquet(project / "data" / "split" / "train.parquet")
    cases = bad_batches(held, train)
    for file_name, payload, _ in cases.values():
        (incoming(project) / file_name).write_bytes(payload)
    with pytest.raises(BatchesBlocked) as err:
        nightly_retrain(root=str(project), overrides={"train.epochs": 3})
    summary = err.value.summary
    return {
        "before": before,
        "after": state(project, registry, name),
        "summary": summary,
        "cases": cases,
        "error": str(err.value),
    }


CASES = [
    "empty file",
    "header only",
    "wrong delimiter",
    "binary file",
    "wrong file type",
    "unreadable parquet",
    "missing label column",
    "text not a string",
    "numeric labels",
    "unknown label set",
    "bad-row share over the threshold",
    "unknown labels in some rows",
    "a new label in a few rows",
    "extremely long texts",
    "mojibake",
    "invalid UTF-8",
    "expected script share",
    "markup junk",
    "duplicates within the batch",
    "repeats yesterday's data",
    "all rows one class",
    "texts labelled otherwise",
]


@pytest.mark.parametrize("kind", CASES)
def test_bad_batch_is_blocked_with_its_reason_and_changes_nothing(
    night2: dict[str, Any], project: Path, kind: str
) -> None:
    file_name, _, fragments = night2["cases"][kind]
    (outcome,) = [b for b in night2["summary"].intake.batches if b.source == file_name]
    assert outcome.status == "blocked" and outcome.accepted_rows == 0
    message = "\n".join(outcome.reasons)
    for fragment in fragments:
        assert fragment in message, message
    assert file_name in night2["error"]
    assert (project / "data" / "rejected" / outcome.name / file_name).is_file()
    assert (
        outcome.reasons[0].splitlines()[0]
        in (project / "data" / "rejected" / outcome.name / "report.md").read_text()
    )
    assert night2["after"] == night2["before"]
    assert night2["summary"].registered is None and night2["summary"].retrain is None


def test_blocked_night_summary_names_every_batch(night2: dict[str, Any]) -> None:
    from flows.nightly import render_summary

    text = render_summary(night2["summary"])
    assert "Not retrained" in text
    for file_name, _, _ in night2["cases"].values():
        assert Path(file_name).stem in text


@pytest.fixture(scope="module")
def night3(night2: dict[str, Any], project: Path, held: pd.DataFrame) -> RunSummary:
    good = balanced(held, 200, 60)
    good.loc[3, "text"] = "   "  # quarantined, the batch goes on
    good.loc[5, "text"] = "<div><br/></div>"  # empty once cleaned: quarantined, not dropped by split unseen
    good.loc[7, "text"] = "https://example.com/a.html"
    good.to_csv(incoming(project) / "fresh.csv", index=False)
    good.assign(label="sports").iloc[:20].to_csv(incoming(project) / "sports.csv", index=False)
    with pytest.raises(BatchesBlocked) as err:
        nightly_retrain(root=str(project))
    return err.value.summary


def test_good_batch_is_appended_retrained_and_versioned(
    night1: RunSummary,
    night3: RunSummary,
    project: Path,
    registry: mlflow.MlflowClient,  # noqa: F811
) -> None:
    fresh, sports = night3.intake.batches
    assert (fresh.status, sports.status) == ("accepted", "blocked")
    assert fresh.accepted_rows + fresh.quarantined_rows == 120 and fresh.accepted_rows > 100
    quarantine = pd.read_csv(project / "data" / "quarantine" / "fresh.csv", keep_default_na=False)
    reasons = quarantine.set_index("row")["reason"]
    assert reasons[3] == "blank text"
    assert reasons[5].startswith("empty after cleaning") and reasons[7].startswith("empty after cleaning")
    assert (project / "data" / "processed" / "fresh.csv").is_file()
    assert (project / "reports" / "nightly" / "fresh" / "drift.png").is_file()
    assert night3.registered.version == "2"
    run = registry.get_run(night3.registered.run_id)
    assert run.data.tags["nightly.accepted_batches"] == "fresh"
    assert run.data.tags["git_commit"] == night3.git_commit
    artifacts = {a.path for a in registry.list_artifacts(night3.registered.run_id, "reports/nightly/fresh")}
    assert "reports/nightly/fresh/contract.json" in artifacts
    committed = sh(["git", "show", "--name-only", "--format=", night3.git_commit], project).split()
    accepted = "data/accepted/news_vs_comment"  # a batch belongs to its dataset
    assert set(committed) >= {"dvc.lock", f"{accepted}/fresh.parquet.dvc", f"{accepted}/.gitignore"}
    assert json.loads(dvc(["status", "--json"], project)) == {}
    assert sh(["git", "show", f"{night3.git_commit}:dvc.lock"], project) == (project / "dvc.lock").read_text()
    assert (
        night1.git_commit is None
    )  # night 1 brought no batch: nothing to version in git (git_commit: accepted)
    raw = pd.read_parquet(project / "data" / "raw" / "news_vs_comment.parquet")
    assert len(raw) == night1.results["ingest"].rows + fresh.accepted_rows


def test_test_split_of_a_night_holds_the_previous_nights(
    night1: RunSummary, night3: RunSummary, project: Path
) -> None:
    old_keys = set(pd.read_parquet(project / "night1_test.parquet")["key"])  # copied right after night 1
    new_keys = set(pd.read_parquet(project / "data" / "split" / "test.parquet")["key"])
    assert old_keys and old_keys < new_keys


def test_a_night_with_nothing_new_does_not_retrain(
    night3: RunSummary, project: Path, registry: mlflow.MlflowClient
) -> None:  # noqa: F811
    before = registry_state(registry, night3.registered.model_name)
    summary = nightly_retrain(root=str(project))
    assert summary.registered is None and summary.retrain is None and not summary.intake.batches
    assert registry_state(registry, night3.registered.model_name) == before


def test_the_data_docs_show_each_batch_as_the_contract_judged_it(
    night3: RunSummary,
    project: Path,
    registry: mlflow.MlflowClient,  # noqa: F811
) -> None:
    """One site for the project: the accepted batch with a quarantined row reads "Succeeded" (not "Failed"), the
    blocked one "Failed"; both under the night's flow run name; the site is among the run's artifacts and the
    summary links its index and each batch's page."""
    from flows.nightly import render_summary
    from tests.data.test_data_docs import assert_links_stay_inside, page_text

    site = project / "reports" / "gx" / "data_docs"
    fresh, sports = night3.intake.batches
    assert fresh.data_docs.is_relative_to(site) and sports.data_docs.is_relative_to(site)
    assert "Status: Succeeded" in page_text(fresh.data_docs) and "Status: Failed" in page_text(
        sports.data_docs
    )
    run_name = fresh.data_docs.parent.parent.name
    assert run_name.startswith("nightly_retrain-") and sports.data_docs.parent.parent.name == run_name
    assert f"Run Name {run_name}" in page_text(fresh.data_docs)
    assert_links_stay_inside(site)
    logged = {a.path for a in registry.list_artifacts(night3.registered.run_id, "reports/gx/data_docs")}
    assert "reports/gx/data_docs/index.html" in logged
    summary = render_summary(night3)
    assert (site / "index.html").resolve().as_uri() in summary
    assert f"Data Docs of batch fresh (accepted): {fresh.data_docs.resolve().as_uri()}" in summary
