"""The production feedback loop end to end, with the real service: serve → prediction log → the nightly flow's
live-drift report → review queue → the reviewed file through the batch contract → retrain.

Night 1 trains v1 on a tiny real project (git + DVC, a real `mlflow server`, Prefect's harness). Then
`quantflow serve` (a real process, flows/traffic.py, the same one `simulate-nights --traffic` uses) answers
texts twice: once with `serve.log_text: false`, whose log must hold no text, then with texts. Night 2 reads
that traffic and queues texts for review; the queue, labelled, is night 3's batch: accepted and retrained on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.nightly import RunSummary, nightly_retrain
from flows.traffic import replay, serving
from quantflow.core.corpora import load_builtin
from quantflow.core.layout import Layout
from quantflow.core.params import load_params
from quantflow.core.prediction_log import log_files, read_log, text_hash
from tests.integration.test_pipeline import harness, make_project, sh, tracking  # noqa: F401
from tests.mlflow_server import mlflow_server, mlflow_server_process  # noqa: F401

pytestmark = pytest.mark.slow

HIDDEN, SHOWN = 20, 150  # texts answered with log_text false, then with log_text true


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("loop"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["candidates"] = ["nb_lr"]  # test time: two trainings in this module
    params["compress"]["variants"] = ["fp32"]
    params["nightly"]["live_drift"]["settle_s"] = 0.5
    params["nightly"]["review_size"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False))
    sh(["git", "config", "user.email", "t@t"], root)
    sh(["git", "config", "user.name", "loop"], root)
    sh(["git", "commit", "-qam", "feedback loop settings"], root)
    return root


def layout_of(project: Path) -> Layout:
    return Layout.of(load_params(project / "params.yaml"), project)


@pytest.fixture(scope="module")
def traffic(project: Path) -> pd.DataFrame:
    """Texts of the corpus the project's raw data does not hold, with their true labels (the reviewer's)."""
    raw = set(pd.read_parquet(layout_of(project).raw)["text"])
    corpus = load_builtin("news_vs_comment")
    corpus = corpus[~corpus["text"].isin(raw) & (corpus["text"].str.strip().str.len() > 4)]
    corpus = corpus.drop_duplicates("text")
    half = (HIDDEN + SHOWN) // 2
    parts = [group.sample(half, random_state=5) for _, group in corpus.groupby("label")]
    return pd.concat(parts).sample(frac=1.0, random_state=6).reset_index(drop=True)


@pytest.fixture(scope="module")
def night1(project: Path, tracking: str, harness: None) -> RunSummary:  # noqa: F811
    return nightly_retrain(root=str(project))


@pytest.fixture(scope="module")
def served(night1: RunSummary, project: Path, traffic: pd.DataFrame) -> dict[str, int]:
    """The real service answers the first HIDDEN texts without logging them, then the rest with their text;
    stopped by SIGTERM (the writer flushes) before the night reads the log."""
    texts = traffic["text"].tolist()
    with serving(project, settings={"serve.log_text": "false"}) as service:
        hidden = replay(service, texts[:HIDDEN])
    with serving(project) as service:
        shown = replay(service, texts[HIDDEN:])
    time.sleep(
        load_params(project / "params.yaml").nightly.live_drift.settle_s
    )  # then the night reads them all
    return {"hidden": hidden, "shown": shown}


@pytest.fixture(scope="module")
def night2(served: dict[str, int], project: Path) -> RunSummary:
    return nightly_retrain(root=str(project))


@pytest.fixture(scope="module")
def night3(night2: RunSummary, project: Path, traffic: pd.DataFrame) -> RunSummary:
    """Night 2's review file, labelled by the reviewer (the corpus's labels), dropped into incoming."""
    review = night2.live.review.path
    truth = dict(zip(traffic["text"], traffic["label"], strict=True))
    labelled = pd.read_csv(review, dtype=str, keep_default_na=False)
    incoming = layout_of(project).incoming_dir
    incoming.mkdir(parents=True, exist_ok=True)
    labelled.assign(label=labelled["text"].map(truth)).to_csv(incoming / review.name, index=False)
    return nightly_retrain(root=str(project))


def test_the_service_logs_every_answer_and_log_text_false_stores_no_text(
    served: dict[str, int], project: Path, traffic: pd.DataFrame, night1: RunSummary
) -> None:
    assert served == {"hidden": HIDDEN, "shown": SHOWN}
    log = read_log(layout_of(project).served_log_dir)
    lines = log[log["kind"] == "served"]
    assert len(lines) == HIDDEN + SHOWN
    assert set(lines["version"]) == {night1.registered.version}
    hidden = traffic["text"].iloc[:HIDDEN].tolist()
    by_hash = lines.set_index("text_sha256")
    assert by_hash.loc[[text_hash(t) for t in hidden], "text"].isna().all()
    stored = b"".join(path.read_bytes() for path in log_files(layout_of(project).served_log_dir))
    leaked = [t for t in hidden if t.encode("utf-8") in stored]
    assert not leaked, f"log_text false, yet the log holds {len(leaked)} texts, e.g. {leaked[0]!r}"


def test_the_night_reads_the_served_traffic(night2: RunSummary) -> None:
    live = night2.live
    assert live.status == "measured", live.status
    assert (live.served, live.with_text) == (HIDDEN + SHOWN, SHOWN)
    assert live.verdict in ("ok", "warn", "block")
    assert night2.registered is None  # no batch: nothing to retrain on, the traffic is still read


def test_the_review_queue_holds_served_texts_the_dataset_lacks(
    night2: RunSummary, traffic: pd.DataFrame, project: Path
) -> None:
    review = pd.read_csv(night2.live.review.path, dtype=str, keep_default_na=False)
    assert list(review.columns) == ["text", "label"]
    assert 0 < len(review) <= 40
    assert (review["label"] == "").all()
    assert set(review["text"]) <= set(traffic["text"].iloc[HIDDEN:])  # only texts the log holds
    raw = set(pd.read_parquet(layout_of(project).raw)["text"])
    assert not set(review["text"]) & raw


def test_the_reviewed_file_is_accepted_and_retrained_on(
    night3: RunSummary, night2: RunSummary, night1: RunSummary
) -> None:
    (batch,) = night3.intake.batches
    assert batch.status == "accepted", batch.reasons
    assert batch.accepted_rows == len(pd.read_csv(night2.live.review.path))
    assert night3.registered is not None
    assert int(night3.registered.version) > int(night1.registered.version)
