"""A model of either family through the whole path: train → evaluate → compress (parity, int8) → register on a real
``mlflow server`` → the champion check across families → ``quantflow serve``, ``quantflow predict`` and the
MLflow pyfunc.

Two tiny projects share one corpus (so one test split): one trains the neural candidate only, one the TF-IDF
candidate only (``train.candidates``), each with the pipeline's own step functions. Model A gets the neural
model first and the linear one as its challenger; model B the reverse. The service then serves A's
``@staging``: the linear version that was compared against a neural champion.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest

from quantflow.core.layout import Layout
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier
from quantflow.core.params import Params
from quantflow.registry.promotion import STAGING
from tasks.register import RegisterResult, register
from tasks.stages import run_stage
from tests.conftest import NEWS_WORDS, REVIEW_WORDS
from tests.params_helpers import params_with
from tests.serving.conftest import launch, shutdown, wait_ready

pytestmark = pytest.mark.slow

TINY_NEURAL = {
    "model": "textcnn",
    "embed_dim": 16,
    "num_filters": 8,
    "kernel_sizes": [2, 3],
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.01,
    "threads": 1,
    "schedule": "constant",
    "warmup_fraction": 0.0,
}
STEPS = ("split", "preprocess", "train", "evaluate", "compress")


def corpus(size: int = 600) -> pd.DataFrame:
    """Short texts mixing news and comment words, labelled by the majority (a tie: a coin): many texts sit near
    the boundary, so the two families make different mistakes and the paired test has pairs to compare."""
    rng = random.Random(5)
    texts, labels = [], []
    for _ in range(size):
        share, k = rng.random(), rng.randint(2, 6)
        words = [rng.choice(NEWS_WORDS if rng.random() < share else REVIEW_WORDS) for _ in range(k)]
        news = sum(w in NEWS_WORDS for w in words)
        texts.append("".join(words) + rng.choice("。！，"))
        labels.append(
            "news" if 2 * news > k else "comment" if 2 * news < k else rng.choice(["news", "comment"])
        )
    return pd.DataFrame({"text": texts, "label": labels})


def project_params(family: str, name: str = "unused") -> Params:
    return params_with(
        {
            "ingest.dataset": "news_vs_comment",
            "preprocess.min_freq": 1,
            "preprocess.max_len": 32,
            "train.candidates": [family],
            **{f"train.{k}": v for k, v in TINY_NEURAL.items()},
            "evaluate.baseline_max_features": 5000,
            "compress.variants": ["fp32", "int8-static"],
            "compress.latency_texts": 20,
            "compress.throughput_texts": 64,
            "register.model_name": name,
            "register.experiment": "quantflow-test-family",
            "register.min_f1": 0.5,
            "compress.max_drop_pp": 5.0,
            # auto picks isotonic on this tiny validation split: its flat steps give every occluded token of a
            # confident text the same probability, so /explain would credit none (a limit of isotonic, not here)
            "calibrate.method": "temperature",
        }
    )


@dataclass(frozen=True)
class Project:
    family: str
    root: Path
    layout: Layout
    chosen: str  # the variant compress chose (what register logs)

    def params(self, name: str) -> Params:
        return project_params(self.family, name)

    @property
    def variant_dir(self) -> Path:
        return self.layout.variant_dir(self.chosen)


def build_project(root: Path, family: str) -> Project:
    """The pipeline's steps split … compress on the corpus, in a project folder laid out as `quantflow run`'s."""
    params = project_params(family)
    layout = Layout.of(params, root)
    layout.raw.parent.mkdir(parents=True)
    corpus().to_parquet(layout.raw, index=False)
    for step in STEPS:
        run_stage(step, params, layout)
    chosen = json.loads(layout.compression_report.read_text())["chosen"]
    return Project(family, root, layout, chosen)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, mlflow_server_process: object) -> dict[str, Project]:
    """Both projects (built while the tracking server starts)."""
    return {f: build_project(tmp_path_factory.mktemp(f), f) for f in ("neural", "tfidf_lr")}


def test_the_linear_project_trains_exports_and_quantizes_the_tfidf_model(
    projects: dict[str, Project],
) -> None:
    """Parity with scikit-learn within compress.parity_atol, and an int8 variant with quantized ops."""
    project = projects["tfidf_lr"]
    metrics = json.loads(project.layout.metrics.read_text())
    assert metrics["model"] == {"candidate": "tfidf_lr", "family": "classic", "arch": "tfidf_lr"}
    report = json.loads(project.layout.compression_report.read_text())
    assert (
        report["parity"]["max_abs_diff"]
        <= report["parity"]["atol"]
        == project.params("x").compress.parity_atol
    )
    assert project.chosen == "int8-static"
    ops = {n.op_type for n in onnx.load(project.variant_dir / MODEL_FILE).graph.node}
    assert {"TfIdfVectorizer", "QuantizeLinear", "MatMulInteger"} <= ops
    neural = json.loads(projects["neural"].layout.metrics.read_text())["model"]
    assert neural["family"] == "neural" and neural["arch"] == "textcnn"


@pytest.fixture(scope="module")
def registered(projects: dict[str, Project], mlflow_server: str) -> dict[str, list[RegisterResult]]:
    """A: neural v1 (champion), then linear v2. B: linear v1, then neural v2."""
    orders = {
        "quantflow-test-family-a": ("neural", "tfidf_lr"),
        "quantflow-test-family-b": ("tfidf_lr", "neural"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        return {
            name: [register(projects[f].params(name), projects[f].root) for f in order]
            for name, order in orders.items()
        }


def right(folder: Path, test: pd.DataFrame) -> np.ndarray:
    """(N,) whether the folder's model labels each test text correctly."""
    return np.array(OnnxClassifier(folder).predict(test["text"].tolist())) == test["label"].to_numpy()


@pytest.mark.parametrize(
    ("name", "champion", "challenger"),
    [("quantflow-test-family-a", "neural", "tfidf_lr"), ("quantflow-test-family-b", "tfidf_lr", "neural")],
    ids=["neural champion, linear challenger", "linear champion, neural challenger"],
)
def test_the_champion_check_compares_across_families(
    registered: dict[str, list[RegisterResult]],
    projects: dict[str, Project],
    mlflow_server: str,
    name: str,
    champion: str,
    challenger: str,
) -> None:
    first, second = registered[name]
    assert first.promoted and first.gate["champion_version"] is None
    paired = second.gate["paired"]
    assert second.gate["champion_version"] == first.version == paired["version"]
    test = pd.read_parquet(projects[challenger].layout.split_file("test"))
    assert paired["n"] == len(test)
    # each side scored from its own variant folder, whatever its family: the discordant pairs are theirs
    champ, cand = right(projects[champion].variant_dir, test), right(projects[challenger].variant_dir, test)
    assert (paired["only_candidate_right"], paired["only_champion_right"]) == (
        int(np.sum(cand & ~champ)),
        int(np.sum(~cand & champ)),
    )
    assert np.sum(cand != champ) > 0  # the families disagree somewhere: the comparison has teeth
    assert paired["champion_accuracy"] == pytest.approx(champ.mean())
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version(name, second.version)
    assert version.tags["quantflow.family"] == ("classic" if challenger == "tfidf_lr" else "neural")
    assert version.tags["gate.champion.passed"] == str(second.gate["checks"][-1]["passed"]).lower()
    assert f"vs champion v{first.version}" in version.tags["gate.champion.detail"]
    assert "## Candidates" in version.description and f"**{challenger}** (shipped)" in version.description


@pytest.fixture(scope="module")
def served(
    registered: dict[str, list[RegisterResult]], mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """`quantflow serve` on A's @staging (the linear version, if the gate let it past the neural champion)."""
    name = "quantflow-test-family-a"
    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    client.set_registered_model_alias(
        name, STAGING, registered[name][1].version
    )  # the linear one, in any case
    root = tmp_path_factory.mktemp("family_serve")
    serve = {"model_name": name, "poll_interval_s": 0, "cache_dir": str(root / "cache")}
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    running = launch(root, serve, env)
    try:
        wait_ready(running)
        yield {"running": running, "root": root, "env": env, "name": name}
    finally:
        shutdown(running)


def test_the_service_serves_and_explains_the_linear_model(served: dict, projects: dict[str, Project]) -> None:
    url, folder = served["running"].url, projects["tfidf_lr"].variant_dir
    offline = OnnxClassifier(folder)
    texts = pd.read_parquet(projects["tfidf_lr"].layout.split_file("test"))["text"].tolist()[:8]
    answer = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=10).json()
    assert [p["label"] for p in answer["predictions"]] == offline.predict(texts)
    proba = [[p["probabilities"][lb] for lb in offline.labels] for p in answer["predictions"]]
    np.testing.assert_allclose(proba, offline.predict_proba(texts), atol=1e-5)
    assert answer["model"]["variant"] == "onnx-int8-static"
    explained = httpx.post(f"{url}/explain", json={"text": texts[0]}, timeout=10).json()
    assert explained["label"] == offline.predict(texts[:1])[0]
    assert any(t["contribution"] != 0 for t in explained["tokens"])


def test_quantflow_predict_and_the_pyfunc_give_the_same_labels(
    served: dict, projects: dict[str, Project], mlflow_server: str, tmp_path: Path
) -> None:
    test = pd.read_parquet(projects["tfidf_lr"].layout.split_file("test"))
    expected = OnnxClassifier(projects["tfidf_lr"].variant_dir).predict(test["text"].tolist())
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    test[["text"]].to_csv(src, index=False)
    root = served["root"]
    args = ["predict", "--input", str(src), "--output", str(dst), "--params", str(root / "params.yaml")]
    done = subprocess.run(
        [sys.executable, "-m", "quantflow.cli", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        env=served["env"],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert pd.read_csv(dst)["label"].tolist() == expected
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{served['name']}@{STAGING}")
        assert [p.label for p in model.predict(test["text"].tolist())] == expected
    finally:
        mlflow.set_tracking_uri(None)
