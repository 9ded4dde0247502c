"""The prediction log and the shadow challenger (issue #17): real ``quantflow serve`` processes on the real
registry of tests/serving/conftest.py, real files read back; the size cap, day rotation and write errors at
the writer's level, with a fixed clock and a real model's answers."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from quantflow.core.onnx_model import OnnxClassifier
from quantflow.core.prediction_log import log_files, read_log
from serving.log_writer import PredictionLog
from serving.model import ServedModel
from tests.integration.test_register import build_variant, synthetic_split
from tests.serving.conftest import MODEL_NAME, Running, launch, register_version, shutdown, wait_ready

SHADOW_NAME = "quantflow-test-shadow"
NEWS, COMMENTS = ["国家经济发展会议", "政府工作改革人民代表"], ["质量很好服务不错", "满意喜欢推荐"]
WAIT_S = 15.0


# --- helpers -----------------------------------------------------------------------------------------------


def started(root: Path, env_uri: str, **serve: Any) -> Running:
    """``quantflow serve`` on the registry with ``serve`` params (log in ``root/data/served``), ready."""
    settings = {"model_name": MODEL_NAME, "poll_interval_s": 0.3, "cache_dir": str(root / "cache"), **serve}
    running = launch(root, settings, {**os.environ, "MLFLOW_TRACKING_URI": env_uri})
    try:
        wait_ready(running)
    except BaseException:
        shutdown(running)
        raise
    return running


def log_dir(running: Running) -> Path:
    return running.log.parent / "data" / "served"


def lines(folder: Path) -> list[dict[str, Any]]:
    """Every line of every log file under ``folder`` (the log folder or one day), oldest day first."""
    paths = sorted(folder.rglob("predictions-*.jsonl"))
    return [json.loads(line) for path in paths for line in path.read_bytes().splitlines()]


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the service's /metrics, 0 when absent (a counter nobody touched yet)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def predict(url: str, texts: list[str]) -> dict[str, Any]:
    answer = httpx.post(f"{url}/predict", json={"texts": texts}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- the service's log --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(registry: mlflow.MlflowClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = started(tmp_path_factory.mktemp("logged"), registry.tracking_uri)
    yield running
    shutdown(running)


@pytest.mark.slow
def test_every_text_of_a_request_is_logged_with_its_answer(logged: Running) -> None:
    texts = [*NEWS, *COMMENTS, "国家很好"]
    answer = predict(logged.url, texts)
    card = httpx.get(f"{logged.url}/model").json()
    folder = log_dir(logged)
    wait_for(lambda: len([r for r in lines(folder) if r["text"] in texts]) == len(texts), "5 lines")
    rows = [r for r in lines(folder) if r["text"] in texts]
    assert [r["text"] for r in rows] == texts  # in request order, one line each
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert [p.relative_to(folder).parts[0] for p in log_files(folder)] == [today]
    assert log_files(folder)[0].name.startswith(f"predictions-{logged.proc.pid}-")
    assert answer["model"] == {"name": card["name"], "version": card["version"], "variant": card["variant"]}
    for row, prediction, text in zip(rows, answer["predictions"], texts, strict=True):
        assert row["kind"] == "served"
        assert (row["model"], row["version"], row["variant"]) == (
            MODEL_NAME,
            card["version"],
            card["variant"],
        )
        assert (row["text_sha256"], row["length"]) == (sha(text), len(text))
        assert row["label"] == prediction["label"]
        assert row["proba"] == pytest.approx(prediction["probabilities"], abs=1e-6)
        assert row["confidence"] == pytest.approx(max(prediction["probabilities"].values()), abs=1e-6)
        assert 0 < row["latency_ms"] < 1000
        moment = datetime.fromisoformat(row["time"])
        assert abs((datetime.now(UTC) - moment).total_seconds()) < 60
    assert len({r["time"] for r in rows}) == 1  # one request, one time
    frame = read_log(folder)  # the nightly reader reads what the service wrote
    assert frame[frame["text"].isin(texts)]["label"].tolist() == [p["label"] for p in answer["predictions"]]
    assert metric(logged.url, "quantflow_prediction_log_lines_total", kind="served") >= len(texts)


@pytest.mark.slow
def test_log_text_false_keeps_the_hash_and_no_text(registry: mlflow.MlflowClient, tmp_path: Path) -> None:
    running = started(tmp_path, registry.tracking_uri, log_text=False)
    try:
        secret = "这家酒店服务很好，房间号八零八"
        predict(running.url, [secret, COMMENTS[0]])
        wait_for(lambda: len(lines(log_dir(running))) == 2, "2 lines")
    finally:
        shutdown(running)
    rows = lines(log_dir(running))
    assert [(r["text"], r["text_sha256"], r["length"]) for r in rows] == [
        (None, sha(secret), len(secret)),
        (None, sha(COMMENTS[0]), len(COMMENTS[0])),
    ]
    stored = b"".join(p.read_bytes() for p in log_dir(running).rglob("*") if p.is_file())
    for text in (secret, COMMENTS[0]):
        assert text.encode("utf-8") not in stored
        assert json.dumps(text).encode("ascii") not in stored  # nor \\u-escaped
        assert text[:4].encode("utf-8") not in stored


@pytest.mark.slow
def test_log_sample_zero_writes_nothing(registry: mlflow.MlflowClient, tmp_path: Path) -> None:
    running = started(tmp_path, registry.tracking_uri, log_sample=0)
    try:
        for _ in range(20):
            predict(running.url, NEWS)
        time.sleep(1.0)  # five writer turns
        assert metric(running.url, "quantflow_prediction_log_lines_total", kind="served") == 0
    finally:
        shutdown(running)  # a graceful stop writes what is queued: nothing
    assert not log_dir(running).exists()


@pytest.mark.slow
def test_queued_lines_are_written_on_shutdown(registry: mlflow.MlflowClient, tmp_path: Path) -> None:
    """SIGTERM right after the last answer: every answered text is in the file after the process exits."""
    running = started(tmp_path, registry.tracking_uri)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            for i in range(300):
                assert client.post("/predict", json={"texts": [f"{NEWS[0]}{i}"]}).status_code == 200
    finally:
        shutdown(running)
    assert running.proc.returncode == 0
    assert sorted(r["text"] for r in lines(log_dir(running))) == sorted(f"{NEWS[0]}{i}" for i in range(300))


@pytest.mark.slow
def test_a_full_queue_drops_and_counts_and_every_request_succeeds(
    registry: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """``log_queue: 1`` and 8 clients at once: some requests are not logged, every one is answered 200, and
    lines written plus lines dropped (queue_full) are exactly the texts answered."""
    running = started(tmp_path, registry.tracking_uri, log_queue=1)
    statuses: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=running.url, timeout=10) as http:
            statuses.extend(http.post("/predict", json={"texts": NEWS}).status_code for _ in range(60))

    try:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 480
        texts = 480 * len(NEWS)

        def written() -> float:
            return metric(running.url, "quantflow_prediction_log_lines_total", kind="served")

        dropped = metric(
            running.url, "quantflow_prediction_log_dropped_total", kind="served", reason="queue_full"
        )
        wait_for(lambda: written() + dropped == texts, "lines + dropped == texts answered")
        assert dropped > 0
        assert len(lines(log_dir(running))) == written()
    finally:
        shutdown(running)


# --- the shadow challenger -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def challenger_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained with every text labelled "comment": it answers "comment" to the news texts too, so it
    agrees with the served model on some texts and not on others."""
    split = synthetic_split().assign(label="comment")
    folder = tmp_path_factory.mktemp("challenger") / "int8"
    build_variant(folder, split)
    return folder


@pytest.fixture(scope="module")
def shadow_versions(registry: mlflow.MlflowClient, variant: Path, challenger_folder: Path) -> tuple[str, str]:
    """``SHADOW_NAME``: the served variant behind @staging, the challenger behind @challenger."""
    staging = register_version(registry.tracking_uri, variant, SHADOW_NAME)
    challenger = register_version(registry.tracking_uri, challenger_folder, SHADOW_NAME)
    registry.set_registered_model_alias(SHADOW_NAME, "staging", staging)
    registry.set_registered_model_alias(SHADOW_NAME, "challenger", challenger)
    return staging, challenger


@pytest.mark.slow
def test_shadow_lines_score_with_the_challenger_and_say_whether_it_agrees(
    registry: mlflow.MlflowClient,
    shadow_versions: tuple[str, str],
    challenger_folder: Path,
    tmp_path: Path,
) -> None:
    staging, challenger = shadow_versions
    assert staging != challenger
    running = started(tmp_path, registry.tracking_uri, model_name=SHADOW_NAME, shadow="challenger")
    try:
        texts = [*NEWS, *COMMENTS]
        wait_for(
            lambda: metric(running.url, "quantflow_shadow_model_info", version=challenger) == 1,
            "the challenger loaded",
        )
        answer = predict(running.url, texts)
        assert answer["model"]["version"] == staging
        folder = log_dir(running)
        wait_for(
            lambda: len([r for r in lines(folder) if r["kind"] == "shadow"]) == len(texts), "4 shadow lines"
        )
    finally:
        shutdown(running)
    rows = lines(folder)
    served = [r for r in rows if r["kind"] == "served"]
    shadow = [r for r in rows if r["kind"] == "shadow"]
    offline = OnnxClassifier(challenger_folder)
    expected = offline.predict(texts)
    served_labels = [p["label"] for p in answer["predictions"]]
    assert [r["label"] for r in served] == served_labels
    assert [r["text"] for r in shadow] == texts
    for row, text, label, served_label in zip(shadow, texts, expected, served_labels, strict=True):
        assert (row["model"], row["version"], row["variant"]) == (SHADOW_NAME, challenger, "onnx-int8")
        assert row["label"] == label
        assert (row["staging_version"], row["staging_label"]) == (staging, served_label)
        assert row["agree"] == (label == served_label)
        assert row["text_sha256"] == sha(text)
    assert {r["agree"] for r in shadow} == {True, False}  # the news texts: "comment" against "news"
    assert [r["time"] for r in shadow] == [r["time"] for r in served]  # joined on time and hash


@pytest.mark.slow
def test_no_challenger_alias_warns_once_and_serves(registry: mlflow.MlflowClient, tmp_path: Path) -> None:
    """``MODEL_NAME`` has no @challenger: one warning over many polls, answers as usual, no shadow lines."""
    running = started(tmp_path, registry.tracking_uri, shadow="challenger")
    try:
        for _ in range(10):
            predict(running.url, COMMENTS)
            time.sleep(0.2)  # seven polls of the alias meanwhile
        wait_for(lambda: len(lines(log_dir(running))) == 20, "20 served lines")
    finally:
        shutdown(running)
    assert {r["kind"] for r in lines(log_dir(running))} == {"served"}
    output = running.log.read_text()
    assert output.count("no version of 'quantflow-test-serve' holds the alias @challenger") == 1, output


# --- the writer: size cap, days, write errors (fixed clock, a real model's answers) --------------------------


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture(scope="module")
def model(variant: Path) -> ServedModel:
    return ServedModel.load(variant, MODEL_NAME, "7", "staging", threads=1)


def writer(folder: Path, now: str, max_bytes: int = 10**9) -> tuple[PredictionLog, CollectorRegistry]:
    registry = CollectorRegistry()
    log = PredictionLog(
        folder, keep_text=True, max_bytes=max_bytes, capacity=100, registry=registry, clock=lambda: at(now)
    )
    return log, registry


def offer(log: PredictionLog, model: ServedModel, moment: str, texts: list[str]) -> None:
    log.offer(("served", at(moment), model, texts, model.predict(texts), 0.001))


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_lines_go_to_the_file_of_their_utc_day(model: ServedModel, tmp_path: Path) -> None:
    log, registry = writer(tmp_path, "2026-03-02T00:00:01+00:00")
    offer(log, model, "2026-03-01T23:59:59.900000+00:00", NEWS)
    offer(log, model, "2026-03-02T00:00:00.100000+01:00", COMMENTS[:1])  # 23:00 UTC the day before
    offer(log, model, "2026-03-02T00:00:00.100000+00:00", COMMENTS)
    assert log.flush() == 5
    files = log_files(tmp_path)
    assert [p.parent.name for p in files] == ["2026-03-01", "2026-03-02"]
    assert {p.name for p in files} == {f"predictions-{os.getpid()}-20260302T000001Z.jsonl"}
    assert [r["time"] for r in lines(tmp_path / "2026-03-01")] == [
        "2026-03-01T23:59:59.900000Z",
        "2026-03-01T23:59:59.900000Z",
        "2026-03-01T23:00:00.100000Z",
    ]
    assert [r["text"] for r in lines(tmp_path / "2026-03-02")] == COMMENTS
    assert count(registry, "quantflow_prediction_log_lines_total", kind="served") == 5


def test_size_cap_deletes_the_oldest_days_then_drops_new_lines(model: ServedModel, tmp_path: Path) -> None:
    """Two old days of 3,000 bytes and a cap of 8,000: writes delete the oldest day first, then the next,
    never today's (nor a folder that is not a day); then only what fits is written, the rest counted."""
    for day in ("2026-03-01", "2026-03-02"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "predictions-1-20260301T000000Z.jsonl").write_bytes(b"x" * 2999 + b"\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_bytes(b"y" * 5000)
    log, registry = writer(tmp_path, "2026-03-05T12:00:00+00:00", max_bytes=8000)
    texts = [f"{COMMENTS[0]}{i}" for i in range(10)]  # ~3,300 bytes of lines

    offer(log, model, "2026-03-05T12:00:00+00:00", texts)
    assert log.flush() == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-03-02", "2026-03-05", "notes"]
    offer(log, model, "2026-03-05T12:00:01+00:00", texts)
    assert log.flush() == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-03-05", "notes"]
    offer(log, model, "2026-03-05T12:00:02+00:00", texts)
    kept = log.flush()
    assert 0 < kept < 10  # what fits under the cap
    today = tmp_path / "2026-03-05"
    assert sum(p.stat().st_size for p in today.iterdir()) <= 8000
    assert len(lines(today)) == 20 + kept
    assert (
        count(registry, "quantflow_prediction_log_dropped_total", kind="served", reason="size_cap")
        == 10 - kept
    )
    assert count(registry, "quantflow_prediction_log_lines_total", kind="served") == 20 + kept


def test_a_write_error_is_counted_and_the_next_write_works(model: ServedModel, tmp_path: Path) -> None:
    log, registry = writer(tmp_path, "2026-03-05T12:00:00+00:00")
    (tmp_path / "2026-03-05").write_text("a file where the day folder goes")
    offer(log, model, "2026-03-05T12:00:00+00:00", NEWS)
    assert log.flush() == 0
    assert count(registry, "quantflow_prediction_log_dropped_total", kind="served", reason="write_error") == 2
    (tmp_path / "2026-03-05").unlink()
    offer(log, model, "2026-03-05T12:00:01+00:00", COMMENTS)
    assert log.flush() == 2
    assert [r["text"] for r in lines(tmp_path)] == COMMENTS


def test_the_writer_thread_writes_and_close_flushes(model: ServedModel, tmp_path: Path) -> None:
    log, registry = writer(tmp_path / "served", "2026-03-05T12:00:00+00:00")
    log.start()
    offer(log, model, "2026-03-05T12:00:00+00:00", NEWS)
    wait_for(lambda: len(lines(tmp_path / "served")) == 2, "the thread's turn")
    offer(log, model, "2026-03-05T12:00:01+00:00", COMMENTS)
    log.close()
    assert [r["text"] for r in lines(tmp_path / "served")] == [*NEWS, *COMMENTS]
