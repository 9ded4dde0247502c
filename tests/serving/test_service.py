"""``quantflow serve`` as a user meets it: a subprocess on a real registry, real HTTP requests.

Order matters only for the last test, which moves the alias (the service is shared by the module).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from quantflow.core.onnx_model import OnnxClassifier
from tests.integration.test_register import CHARS
from tests.serving.conftest import LIMITS, MODEL_NAME, Running, register_version

pytestmark = pytest.mark.slow


def predict(url: str, texts: list, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"texts": texts}, timeout=10, **kwargs)


def test_health_ready_and_model_card(service: Running, variant: Path) -> None:
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{service.url}/ready").json() == {"ready": True, "version": "1"}
    card = httpx.get(f"{service.url}/model").json()
    offline = OnnxClassifier(variant)
    assert (card["name"], card["version"], card["alias"]) == (MODEL_NAME, "1", "staging")
    assert (card["variant"], card["labels"]) == (offline.manifest.variant, offline.labels)


def test_predictions_equal_offline_evaluation(service: Running, variant: Path, texts: pd.DataFrame) -> None:
    """200 texts, one request each (as a client sends them) and in batches: labels equal the offline
    OnnxClassifier's; probabilities agree within the int8 model's per-batch activation-scale tolerance."""
    offline = OnnxClassifier(variant)
    sample = texts["text"].tolist()
    assert len(sample) == 200
    expected_labels = offline.predict(sample)
    expected_proba = np.concatenate([offline.predict_proba([t]) for t in sample])  # (200, C)
    with httpx.Client(base_url=service.url, timeout=10) as client:
        single = [client.post("/predict", json={"texts": [t]}).json() for t in sample]
        batched = [
            client.post("/predict", json={"texts": sample[i : i + LIMITS["max_texts"]]}).json()
            for i in range(0, len(sample), LIMITS["max_texts"])
        ]
    got = [r["predictions"][0] for r in single]
    assert [p["label"] for p in got] == expected_labels
    proba = np.array([[p["probabilities"][lb] for lb in offline.labels] for p in got])
    np.testing.assert_allclose(proba, expected_proba, atol=1e-5)
    assert [p["label"] for r in batched for p in r["predictions"]] == expected_labels
    assert {(r["model"]["version"], r["model"]["variant"]) for r in single} == {
        ("1", offline.manifest.variant)
    }


def test_explain_credits_the_tokens_of_the_chosen_class(service: Running, variant: Path) -> None:
    """A mixed text (news words + review words): the label is "comment", and hiding a review character is
    what lowers its probability most."""
    offline = OnnxClassifier(variant)
    text = "国家很好"
    answer = httpx.post(f"{service.url}/explain", json={"text": text}).json()
    assert [t["token"] for t in answer["tokens"]] == offline.tokenizer.tokens(text)
    assert answer["label"] == offline.predict([text])[0] == "comment"
    top = max(answer["tokens"], key=lambda t: t["contribution"])
    assert top["contribution"] > 0 and top["token"] in CHARS["comment"]
    assert answer["model"]["version"] == "1"


BAD_REQUESTS = {
    "malformed JSON": (b'{"texts": ["a"', 400, "not valid JSON"),
    "invalid UTF-8": (b'{"texts": ["\xff\xfe"]}', 400, "not valid UTF-8"),
    "missing texts": (b'{"text": "a"}', 422, '"texts" field'),
    "texts not a list": (b'{"texts": "a"}', 422, "must be a list"),
    "non-string item": (b'{"texts": ["a", 3]}', 422, "texts[1] must be a string"),
    "empty list": (b'{"texts": []}', 422, "is empty"),
    "too many texts": (('{"texts": [' + ",".join(['"a"'] * 9) + "]}").encode(), 422, "serve.max_texts"),
    "100k characters": (('{"texts": ["' + "好" * 100_000 + '"]}').encode(), 413, "serve.max_body_bytes"),
    "text over max_chars": (('{"texts": ["' + "好" * 301 + '"]}').encode(), 422, "serve.max_chars"),
    "10 MB body": (b'{"texts": ["' + b"a" * 10_000_000 + b'"]}', 413, "serve.max_body_bytes"),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_4xx_and_the_service_keeps_serving(service: Running, kind: str) -> None:
    body, status, message = BAD_REQUESTS[kind]
    answer = httpx.post(
        f"{service.url}/predict", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert predict(service.url, ["质量很好"]).status_code == 200


def test_get_on_predict_is_405(service: Running) -> None:
    answer = httpx.get(f"{service.url}/predict")
    assert answer.status_code == 405 and "POST" in answer.json()["error"]


def test_metrics_count_requests_and_name_the_version(service: Running) -> None:
    predict(service.url, ["质量很好"])
    text = httpx.get(f"{service.url}/metrics").text
    assert 'quantflow_requests_total{endpoint="/predict",status="200"}' in text
    assert 'quantflow_requests_total{endpoint="/predict",status="422"}' in text
    assert "quantflow_request_seconds_bucket" in text
    assert f'quantflow_model_info{{name="{MODEL_NAME}",variant="onnx-int8",version="1"}} 1.0' in text


def stream(url: str, stop: threading.Event, seen: list[str], failures: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                answer = client.post("/predict", json={"texts": ["国家经济发展"]})
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code}: {answer.text}")
                else:
                    seen.append(answer.json()["model"]["version"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def test_alias_move_swaps_version_without_failed_requests(
    service: Running, registry: mlflow.MlflowClient, variant: Path
) -> None:
    """Runs last: a new version goes behind @staging while two clients send requests without pause."""
    stop, seen, failures = threading.Event(), [], []
    clients = [threading.Thread(target=stream, args=(service.url, stop, seen, failures)) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        new = register_version(registry.tracking_uri, variant)
        registry.set_registered_model_alias(MODEL_NAME, "staging", new)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert failures == []
    assert seen[0] == "1" and seen[-1] == new
    switch = seen.index(new)
    assert switch > 0 and set(seen[switch + 2 :]) == {new}  # two clients: one in-flight answer may trail
    assert httpx.get(f"{service.url}/model").json()["version"] == new
