"""Live drift and the review queue in the nightly flow, on a tiny real project (git + DVC, a real `mlflow server`,
Prefect's harness), with prediction logs written by the service's own format module and answered by the model
the first night registered.

Night 1 trains v1 (no log yet: said in one line). Night 2 brings in-distribution traffic and no batch: it does
not retrain, but reads the traffic (report in the summary, the MLflow run, a Prefect artifact) and queues texts
for review. Night 3 brings night 2's review file, labelled, as a batch (accepted by the contract) and traffic
from another corpus: v2 is trained and registered, but the live-drift check holds it at @challenger.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml

from flows.nightly import RunSummary, nightly_retrain, render_summary
from quantflow.core.corpora import load_builtin
from quantflow.core.layout import Layout
from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.params import load_params
from quantflow.core.prediction_log import day_folder, encode, served_record, shadow_record
from quantflow.intake.live import read_cursor, served_variant
from tests.integration.test_pipeline import (  # noqa: F401
    harness,
    make_project,
    registry_state,
    sh,
    tracking,
)
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

# the project's bounds on the predicted-label mix: the tiny model answers 59 % comment on its 39 test texts, 88 %
# on another corpus (TVD 0.29), about half on the same corpus
LABEL_TVD_WARN, LABEL_TVD_BLOCK = 0.1, 0.2
KNOWN = 2  # texts of the dataset among night 2's traffic
SERVED = 160 + KNOWN + 1  # unseen texts, dataset texts, one markup-only text


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("live"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["candidates"] = ["nb_lr"]  # test time: two trainings in this module
    params["compress"]["variants"] = ["fp32"]
    params["nightly"]["live_drift"].update(label_tvd_warn=LABEL_TVD_WARN, label_tvd_block=LABEL_TVD_BLOCK)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    sh(["git", "config", "user.email", "t@t"], root)
    sh(["git", "config", "user.name", "nightly"], root)
    sh(["git", "commit", "-qam", "live drift settings"], root)
    return root


@pytest.fixture
def registry(tracking: str) -> mlflow.MlflowClient:  # noqa: F811
    return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def layout_of(project: Path) -> Layout:
    return Layout.of(load_params(project / "params.yaml"), project)


def serve(project: Path, texts: list[str], version: str, shadow_version: str | None = None) -> Path:
    """The service's log of answering ``texts`` with the workspace's shipped model (registered as ``version``),
    each text also scored by the same model in shadow as ``shadow_version``. Dated just before now, past
    ``settle_s``: after the last night's cursor, before the end of the next night's window."""
    layout = layout_of(project)
    folder = served_variant(layout)
    model = OnnxClassifier(folder)
    proba = model.predict_proba(texts)
    settle = load_params(project / "params.yaml").nightly.live_drift.settle_s
    start = datetime.now(UTC) - timedelta(seconds=settle + 1, milliseconds=len(texts))
    cursor = read_cursor(project)  # a night that ran a moment ago read up to here: date the lines after it
    if cursor is not None:
        start = max(start, cursor + timedelta(milliseconds=1))
    lines: list[dict[str, Any]] = []
    for i, (text, row) in enumerate(zip(texts, proba, strict=True)):
        moment = start + timedelta(milliseconds=i)
        answer = dict(zip(model.labels, row.tolist(), strict=True))
        label = max(answer, key=answer.get)
        who = {"model": "quantflow-news_vs_comment", "variant": folder.name, "text": text, "keep_text": True}
        lines.append(
            served_record(moment=moment, version=version, label=label, proba=answer, latency_ms=0.1, **who)
        )
        if shadow_version:
            shadow = dict(staging_version=version, staging_label=label)
            lines.append(
                shadow_record(
                    moment=moment, version=shadow_version, label=label, proba=answer, **shadow, **who
                )
            )
    path = day_folder(layout.served_log_dir, start) / f"predictions-{random.randint(1, 99999)}-0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(lines))
    return path


def unseen(project: Path, dataset: str, n: int) -> pd.DataFrame:
    """n texts of a built-in corpus that are not in the project's raw data, half per label, seeded."""
    raw = set(pd.read_parquet(layout_of(project).raw)["text"])
    corpus = load_builtin(dataset)
    corpus = corpus[~corpus["text"].isin(raw) & (corpus["text"].str.strip().str.len() > 4)]
    parts = [group.sample(n // 2, random_state=3) for _, group in corpus.groupby("label")]
    return pd.concat(parts).sample(frac=1.0, random_state=4).reset_index(drop=True)


@pytest.fixture(scope="module")
def night1(project: Path, tracking: str, harness: None) -> RunSummary:  # noqa: F811
    return nightly_retrain(root=str(project))


@pytest.fixture(scope="module")
def night2(night1: RunSummary, project: Path) -> dict[str, Any]:
    """In-distribution traffic answered by v1, every text also scored in shadow; no batch. Users also send
    texts the dataset holds and junk (markup only): neither may reach the review queue."""
    known = pd.read_parquet(layout_of(project).raw).iloc[:KNOWN]
    junk = pd.DataFrame({"text": ["<p><br/></p>"], "label": ["news"]})
    traffic = pd.concat([unseen(project, "news_vs_comment", 160), known, junk], ignore_index=True)
    serve(
        project, traffic["text"].tolist(), night1.registered.version, shadow_version=night1.registered.version
    )
    summary = nightly_retrain(root=str(project))
    return {"summary": summary, "traffic": traffic, "cursor": read_cursor(project)}


@pytest.fixture(scope="module")
def night3(night2: dict[str, Any], night1: RunSummary, project: Path) -> RunSummary:
    """Night 2's review file, labelled, dropped into incoming; traffic from another corpus answered by v1."""
    review = night2["summary"].live.review.path
    truth = dict(zip(night2["traffic"]["text"], night2["traffic"]["label"], strict=True))
    labelled = pd.read_csv(review, dtype=str, keep_default_na=False)
    incoming = project / "data" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    labelled.assign(label=labelled["text"].map(truth)).to_csv(incoming / review.name, index=False)
    shifted = unseen(project, "review_sentiment", 160)["text"].tolist()
    serve(project, shifted, night1.registered.version)
    return nightly_retrain(root=str(project))


def test_a_night_without_a_log_says_so_in_one_line(night1: RunSummary, project: Path) -> None:
    live = night1.live
    assert live.status == "no log" and night1.registered.promoted
    summary = render_summary(night1)
    line = "Live drift: no prediction log in `data/served` (the service writes it): nothing to read."
    assert summary.count("Live drift") == 1 and line in summary
    (check,) = [c for c in night1.registered.gate["checks"] if c["name"] == "live_drift"]
    assert check["passed"] and check["value"] is None


def test_a_night_that_does_not_retrain_reads_the_traffic(
    night2: dict[str, Any], night1: RunSummary, project: Path, registry: mlflow.MlflowClient
) -> None:
    summary: RunSummary = night2["summary"]
    live = summary.live
    assert summary.registered is None and summary.retrain is None  # nothing new: no retrain
    assert (live.status, live.served, live.shadow, live.with_text) == ("measured", SERVED, SERVED, SERVED)
    assert live.verdict in ("ok", "warn"), live.drift.rows
    figures = {r["metric"] for r in live.drift.rows}
    assert figures == {
        "text length (KS)",
        "predicted label mix (TVD)",
        "mean confidence drop",
        "OOV rate increase",
        "shadow disagreement",
    }
    assert re.search(r"on the \d+ test texts", live.reference)  # the served model's answers on its test split
    text = render_summary(summary)
    assert f"Live drift: **{live.verdict}** on {SERVED} served texts" in text
    assert "| shadow disagreement | 0.000 |" in text
    assert f"Served by quantflow-news_vs_comment v{night1.registered.version} (fp32): {SERVED}." in text
    # the pipeline's MLflow run of the night that did not retrain holds the report and the live_* metrics
    (run,) = registry.search_runs(
        [registry.get_experiment_by_name("quantflow").experiment_id],
        order_by=["start_time DESC"],
        max_results=1,
    )
    assert run.data.tags["quantflow.outcome"].startswith("not retrained")
    logged = {a.path for a in registry.list_artifacts(run.info.run_id, "reports/nightly/live")}
    assert logged == {f"reports/nightly/live/live_drift.{ext}" for ext in ("json", "md", "png")}
    assert run.data.metrics["live_served_texts"] == SERVED and run.data.metrics["live_disagreement"] == 0.0
    assert "live_label_tvd" in run.data.metrics and "live_review_texts" in run.data.metrics
    assert night2["cursor"] is not None and night2["cursor"].isoformat().startswith(live.until[:19])


def test_the_prefect_artifact_holds_the_live_report(night2: dict[str, Any], harness: None) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["live-drift"]))
        )
    assert any(night2["summary"].live.headline() in str(a.data) for a in found)


def test_the_review_queue_holds_served_texts_not_in_the_dataset(
    night2: dict[str, Any], project: Path
) -> None:
    review = night2["summary"].live.review
    assert review.path.parent == project / "data" / "review" and review.path.name.startswith("20")
    exported = pd.read_csv(review.path, dtype=str, keep_default_na=False)
    assert list(exported.columns) == ["text", "label"] and set(exported["label"]) == {""}
    assert len(exported) == review.rows == 160 and review.known == KNOWN  # neither known texts nor junk
    assert set(exported["text"]) <= set(night2["traffic"]["text"].iloc[:160])
    assert f"Review queue: {review.rows} texts in `data/review/{review.path.name}`" in render_summary(
        night2["summary"]
    )


def test_a_labelled_review_file_is_accepted_as_a_batch(night3: RunSummary, night2: dict[str, Any]) -> None:
    (batch,) = night3.intake.batches
    assert batch.source == night2["summary"].live.review.path.name
    assert batch.status == "accepted" and batch.accepted_rows == night2["summary"].live.review.rows
    assert batch.quarantined_rows == 0 and night3.retrain == "1 batch(es) accepted"


def test_a_live_drift_block_registers_but_does_not_promote(
    night3: RunSummary, night1: RunSummary, registry: mlflow.MlflowClient
) -> None:
    reg = night3.registered
    assert night3.live.verdict == "block"
    assert reg.version == "2" and not reg.promoted
    aliases = registry_state(registry, reg.model_name)["aliases"]
    assert aliases == {"challenger": "2", "staging": night1.registered.version}
    failed = [c for c in reg.gate["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["live_drift"]
    assert "predicted label mix (TVD) = " in failed[0]["detail"]
    assert f"over its block bound {LABEL_TVD_BLOCK}" in failed[0]["detail"]
    assert failed[0]["threshold"] == LABEL_TVD_BLOCK and failed[0]["value"] > LABEL_TVD_BLOCK
    version = registry.get_model_version(reg.model_name, reg.version)
    assert version.tags["gate.live_drift.passed"] == "false"
    assert "predicted label mix (TVD)" in version.tags["gate.live_drift.detail"]
    text = render_summary(night3)
    assert (
        "NOT promoted (staging unchanged)" in text and "- FAIL live_drift: predicted label mix (TVD)" in text
    )
    assert "Live drift: **block**" in text


def test_the_next_review_queue_leaves_the_first_file(night3: RunSummary, night2: dict[str, Any]) -> None:
    first, second = night2["summary"].live.review.path, night3.live.review.path
    assert second != first and first.is_file() and second.is_file()
