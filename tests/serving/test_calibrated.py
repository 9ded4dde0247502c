"""A model folder's calibration entry reaches every way of asking the model: OnnxClassifier, the service's
/predict and /explain (the ASGI app in process, and ``quantflow serve`` as a subprocess on a real registry),
``quantflow predict`` and the MLflow pyfunc. A folder without the entry answers exactly as before."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantflow.cli import app as cli
from quantflow.core.bundle import ARTIFACT_KEY, MANIFEST, set_calibration
from quantflow.core.onnx_model import MODEL_FILE, OnnxClassifier, calibrate_folder
from quantflow.registry.model_code import PYFUNC_FILE
from serving.model import ServedModel
from tests.params_helpers import params_with
from tests.serving.conftest import launch, register_version, shutdown, wait_ready
from tests.serving.test_light import local_service, post

TEMPERATURE = 3.0
TEXTS = ["国家经济发展", "很好不错", "国家很好", "政府会议满意"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Written out here, not imported: the expectation must not share code with what it checks."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def raw_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """(N, C) logits straight from the ONNX graph, one ORT session of its own."""
    import onnxruntime as ort

    classifier = OnnxClassifier(folder)
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"ids": classifier.tokenizer.encode([t])})[0] for t in texts])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def calibrated(variant: Path, tmp_path: Path) -> Path:
    """A copy of the tiny variant whose model.json says: divide the logits by TEMPERATURE."""
    folder = tmp_path / "calibrated"
    shutil.copytree(variant, folder)
    set_calibration(folder, {"method": "temperature", "temperature": TEMPERATURE})
    return folder


def answer_proba(predictions: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([[p["probabilities"][lb] for lb in labels] for p in predictions])


def test_an_old_folder_answers_the_plain_softmax(variant: Path) -> None:
    assert "calibration" not in json.loads((variant / MANIFEST).read_text())
    classifier = OnnxClassifier(variant)
    assert classifier.calibration.method == "none"
    expected = softmax(raw_logits(variant, TEXTS))
    np.testing.assert_allclose(classifier.predict_proba(TEXTS), expected, atol=1e-6)


def test_the_classifier_and_served_model_apply_the_folders_temperature(
    variant: Path, calibrated: Path
) -> None:
    expected = softmax(raw_logits(variant, TEXTS) / TEMPERATURE)
    classifier = OnnxClassifier(calibrated)
    np.testing.assert_allclose(classifier.predict_proba(TEXTS), expected, atol=1e-6)
    assert classifier.predict(TEXTS) == OnnxClassifier(variant).predict(TEXTS)  # a temperature keeps labels
    served = ServedModel.load(calibrated, "m", "1", None, threads=1)
    np.testing.assert_allclose(answer_proba(served.predict(TEXTS), served.labels), expected, atol=1e-6)
    assert served.describe()["calibration"] == {"method": "temperature", "temperature": TEMPERATURE}
    assert sha256(calibrated / MODEL_FILE) == sha256(variant / MODEL_FILE)  # the graph is untouched


def test_the_service_predicts_and_explains_with_calibrated_probabilities(
    variant: Path, calibrated: Path
) -> None:
    expected = softmax(raw_logits(variant, TEXTS) / TEMPERATURE)
    service = local_service(calibrated)
    answer = asyncio.run(post(service, "/predict", {"texts": TEXTS}))
    assert answer.status_code == 200
    labels = OnnxClassifier(variant).labels
    np.testing.assert_allclose(answer_proba(answer.json()["predictions"], labels), expected, atol=1e-6)
    explained = asyncio.run(post(service, "/explain", {"text": TEXTS[2]})).json()
    np.testing.assert_allclose(answer_proba([explained], labels), expected[2:3], atol=1e-6)
    plain = asyncio.run(post(local_service(variant), "/explain", {"text": TEXTS[2]})).json()
    assert [t["token"] for t in explained["tokens"]] == [t["token"] for t in plain["tokens"]]
    assert explained["tokens"] != plain["tokens"]  # contributions are drops in the calibrated probability


@pytest.mark.slow
def test_quantflow_serve_answers_the_registered_folders_calibrated_probabilities(
    registry: mlflow.MlflowClient, variant: Path, tmp_path: Path
) -> None:
    """A version whose folder says temperature 2 is registered and put behind @staging; ``quantflow serve`` (a
    subprocess, over HTTP) answers softmax(logits / 2), not the plain softmax the same graph gives."""
    folder = tmp_path / "temperature-2"
    shutil.copytree(variant, folder)
    set_calibration(folder, {"method": "temperature", "temperature": 2.0})
    name = "quantflow-test-serve-calibrated"
    version = register_version(registry.tracking_uri, folder, name=name)
    registry.set_registered_model_alias(name, "staging", version)
    serve = {"model_name": name, "poll_interval_s": 0, "cache_dir": str(tmp_path / "cache")}
    running = launch(tmp_path, serve, {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri})
    try:
        wait_ready(running)
        answer = httpx.post(f"{running.url}/predict", json={"texts": TEXTS}, timeout=10)
        card = httpx.get(f"{running.url}/model", timeout=10).json()
    finally:
        shutdown(running)
    assert answer.status_code == 200, answer.text
    labels = OnnxClassifier(variant).labels
    served = answer_proba(answer.json()["predictions"], labels)
    logits = raw_logits(variant, TEXTS)
    np.testing.assert_allclose(served, softmax(logits / 2.0), atol=1e-6)
    assert np.abs(served - softmax(logits)).max() > 1e-3  # the entry changed what is served
    assert card["calibration"] == {"method": "temperature", "temperature": 2.0}


def test_batch_predict_and_the_pyfunc_apply_it_too(variant: Path, calibrated: Path, tmp_path: Path) -> None:
    expected = softmax(raw_logits(variant, TEXTS) / TEMPERATURE)
    labels = OnnxClassifier(variant).labels
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(src, index=False)
    result = CliRunner().invoke(
        cli, ["predict", "--input", str(src), "--output", str(dst), "--model-dir", str(calibrated)]
    )
    assert result.exit_code == 0, result.output
    out = pd.read_csv(dst)
    np.testing.assert_allclose(out[[f"proba_{lb}" for lb in labels]].to_numpy(), expected, atol=1e-6)
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(saved),
        python_model=str(PYFUNC_FILE),
        artifacts={ARTIFACT_KEY: str(calibrated)},
        pip_requirements=[],
    )
    answers = mlflow.pyfunc.load_model(str(saved)).predict(TEXTS)
    got = np.array([[a.probabilities[lb] for lb in labels] for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_calibrate_folder_fits_on_held_out_texts_and_stores_the_entry(
    variant: Path, texts: pd.DataFrame, tmp_path: Path
) -> None:
    folder = tmp_path / "fitted"
    shutil.copytree(variant, folder)
    fitted = calibrate_folder(
        folder,
        texts["text"].tolist(),
        texts["label"].tolist(),
        params_with({"calibrate.method": "temperature"}).calibrate,
        seed=0,
    )
    stored = json.loads((folder / MANIFEST).read_text())["calibration"]
    assert stored == fitted.calibration.to_dict() and stored["method"] == "temperature"
    again = OnnxClassifier(folder)
    expected = softmax(raw_logits(variant, TEXTS) / stored["temperature"])
    np.testing.assert_allclose(again.predict_proba(TEXTS), expected, atol=1e-6)
    assert sha256(folder / MODEL_FILE) == sha256(variant / MODEL_FILE)


def test_a_bad_entry_stops_the_load_and_names_the_folder(calibrated: Path) -> None:
    set_calibration(calibrated, {"method": "temperature", "temperature": -1})
    with pytest.raises(
        ValueError, match=rf"{calibrated.name}/model.json.*temperature must be a finite number > 0"
    ):
        OnnxClassifier(calibrated)
