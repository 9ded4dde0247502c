"""The serving issue's goal rows for ``bench/serve.py``: slow clients, 500 open connections, 10,000 requests,
batch predict against a plain ONNX Runtime loop, predict start-up, the Dask path, and where a request's time
goes. Each function measures one thing and returns a dict of plain numbers; bench/serve.py renders them.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TEXT = "这家酒店服务很好，房间干净，早餐也不错，下次还会再来。"
BODY = ('{"texts": ["' + TEXT + '"]}').encode()


# --- slow clients -------------------------------------------------------------------------------------------


def half_open(port: int, count: int = 20) -> list[socket.socket]:
    """``count`` slow clients: a third send nothing, a third half a header, a third headers and half a body."""
    head = f"POST /predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    partial = [
        b"",
        b"POST /predict HTTP/1.1\r\nHost: b\r\nContent-Le",
        head.encode() + BODY[: len(BODY) // 2],
    ]
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if partial[i % 3]:
            sock.sendall(partial[i % 3])
        socks.append(sock)
    return socks


def closed_after(socks: list[socket.socket], started: float, timeout: float) -> list[float | None]:
    """Seconds from ``started`` until the server closed each connection (None: still open at ``timeout``)."""
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    closed: list[float | None] = [None] * len(socks)
    while any(c is None for c in closed) and time.monotonic() - started < timeout:
        for key, _ in selector.select(timeout=0.05):
            try:
                chunk = socks[key.data].recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed[key.data] = time.monotonic() - started
                selector.unregister(socks[key.data])
    selector.close()
    for sock in socks:
        sock.close()
    return closed


def slow_clients(ports: dict[str, int], read_timeout_s: float) -> dict[str, dict[str, Any]]:
    """20 slow clients on each server at once; when each server closed them (watched up to timeout + 5 s)."""
    started = time.monotonic()
    opened = {label: half_open(port) for label, port in ports.items()}
    out = {}
    for label, socks in opened.items():
        closed = closed_after(socks, started, read_timeout_s + 5)
        done = [c for c in closed if c is not None]
        out[label] = {
            "closed": len(done),
            "count": len(closed),
            "last_s": max(done) if len(done) == len(closed) else None,
            "open_at_limit": sum(1 for c in closed if c is None or c > read_timeout_s + 1),
        }
    return out


# --- load with many idle connections, and the 10,000-request run ----------------------------------------------


def idle_connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for sock in socks:
        try:
            n += sock.recv(1, socket.MSG_PEEK) != b""  # data (a 503?) counts as open; b"" is a close
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def with_open_connections(port: int, count: int, measure: Callable[[], dict]) -> dict:
    """``measure()`` (a wrk run) while ``count`` idle connections are held open; how many stayed open."""
    socks = idle_connections(port, count)
    try:
        time.sleep(0.5)
        result = measure()
        result["held_open"] = still_open(socks)
        result["held"] = count
    finally:
        for sock in socks:
            sock.close()
    return result


# --- batch predict -------------------------------------------------------------------------------------------


def corpus(texts_from: Path, n: int) -> list[str]:
    """``n`` real texts: the project's split (train, val, test) repeated as needed."""
    files = sorted(texts_from.glob("*.parquet")) if texts_from.is_dir() else [texts_from]
    if not files:
        raise SystemExit(
            f"{texts_from}: no Parquet files with a text column; run `make run` first or pass --texts"
        )
    texts = pd.concat([pd.read_parquet(f, columns=["text"]) for f in files])["text"].astype(str).tolist()
    return (texts * (n // len(texts) + 1))[:n]


def plain_loop(folder: Path, texts: list[str], batch_size: int = 64) -> float:
    """The reference: the same tokenizer and one ORT session, batches of 64 in file order, probabilities kept."""
    from quantflow.core.onnx_model import OnnxClassifier, softmax

    classifier = OnnxClassifier(folder, threads=1)
    started = time.perf_counter()
    parts = [
        softmax(classifier.logits(classifier.tokenizer.encode(texts[i : i + batch_size])))
        for i in range(0, len(texts), batch_size)
    ]
    np.concatenate(parts)
    return time.perf_counter() - started


def quantflow_predict(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "quantflow.cli", "predict", *args], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"quantflow predict {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def batch_vs_loop(folder: Path, texts: list[str], rounds: int, work: Path) -> dict[str, list[float]]:
    """Alternating, ``rounds`` times: the plain loop (in process, texts in memory), ``predict_path`` in process
    (read Parquet, score, write Parquet) and the ``quantflow predict`` command (start-up included)."""
    from serving.model import ServedModel
    from serving.scoring import predict_path

    src = work / "batch.parquet"
    pd.DataFrame({"text": texts}).to_parquet(src, index=False)
    model = ServedModel.load(folder, folder.name, "local", None, 1)
    out: dict[str, list[float]] = {"loop": [], "predict_path": [], "command": []}
    devnull = open(os.devnull, "w")  # noqa: SIM115 (tqdm's bar would flood the bench output)
    for _ in range(rounds):
        out["loop"].append(plain_loop(folder, texts))
        stderr, sys.stderr = sys.stderr, devnull
        try:
            started = time.perf_counter()
            predict_path(model, src, work / "batch-out.parquet")
            out["predict_path"].append(time.perf_counter() - started)
        finally:
            sys.stderr = stderr
        out["command"].append(
            quantflow_predict(
                ["--input", str(src), "--output", str(work / "cmd-out.parquet"), "--model-dir", str(folder)]
            )
        )
    devnull.close()
    return out


def start_up(folder: Path, work: Path, runs: int = 3) -> dict[str, float]:
    """Wall time of ``quantflow predict`` on a one-text file (start-up + one text), median of ``runs``."""
    out = {}
    for kind in ("parquet", "jsonl"):
        src = work / f"one.{kind}"
        frame = pd.DataFrame({"text": [TEXT]})
        frame.to_parquet(src) if kind == "parquet" else frame.to_json(src, orient="records", lines=True)
        args = ["--input", str(src), "--output", str(work / f"one-out.{kind}"), "--model-dir", str(folder)]
        out[kind] = float(np.median([quantflow_predict(args) for _ in range(runs)]))
    return out


def dask_vs_single(folder: Path, texts: list[str], work: Path, parts: int = 8) -> dict[str, Any]:
    """The same partitioned dataset scored by one process and by a 2-worker LocalCluster: timings and how many
    labels differ (joined on a row id)."""
    dataset = work / "dataset"
    dataset.mkdir(exist_ok=True)
    frame = pd.DataFrame({"id": np.arange(len(texts)), "text": texts})
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[rows].to_parquet(dataset / f"part-{i:03d}.parquet", index=False)
    single, scored = work / "single.parquet", work / "scored"
    common = ["--input", str(dataset), "--model-dir", str(folder)]
    seconds_single = quantflow_predict([*common, "--output", str(single)])
    seconds_dask = quantflow_predict([*common, "--output", str(scored), "--workers", "2"])
    a = pd.read_parquet(single).sort_values("id")["label"].to_numpy()
    b = pd.read_parquet(scored).sort_values("id")["label"].to_numpy()
    return {
        "rows": len(texts),
        "single_s": seconds_single,
        "dask_s": seconds_dask,
        "differ": int((a != b).sum()) if len(a) == len(b) else -1,
    }


# --- @staging moves ----------------------------------------------------------------------------------------------


def registered_twice(folder: Path, artifacts: Path, uri: str, name: str) -> tuple[Any, list[str]]:
    """``folder`` logged as the register step logs a variant (quantflow.registry.model_code) and registered as two
    versions of ``name`` in the store ``uri``: (an MlflowClient, the two versions)."""
    import mlflow

    from quantflow.registry.model_code import log_pyfunc

    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("bench-serve-moves", artifact_location=artifacts.as_uri())
        versions = []
        for _ in range(2):
            with mlflow.start_run(experiment_id=experiment) as run:
                info = log_pyfunc(run.info.run_id, folder, [TEXT])
            versions.append(str(mlflow.register_model(info.model_uri, name).version))
    finally:
        mlflow.set_tracking_uri(None)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), versions


def move_and_wait(client: Any, name: str, version: str, url: str, limit: float) -> float | None:
    """Move ``@staging`` of ``name`` to ``version``, then poll ``/ready`` until it names that version: the seconds
    it took (None: not within ``limit``); a second's pause after, so moves do not overlap."""
    import json
    import urllib.request

    started = time.monotonic()
    client.set_registered_model_alias(name, "staging", version)
    while time.monotonic() - started < limit:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as answer:
                if str(json.load(answer).get("version")) == version:
                    took = time.monotonic() - started
                    time.sleep(1)
                    return took
        except OSError:
            pass
        time.sleep(0.02)
    return None


# --- where a request's time goes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (mlflow's CLI runs uvicorn as a child)."""
    pids = [pid] + [
        int(p)
        for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def per_call_us(fn: Callable[[], object], n: int = 2000, repeats: int = 5) -> float:
    """CPU µs per call (thread time, so other processes on a busy machine inflate it less), best of repeats."""
    for _ in range(n // 10):
        fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - started) / n * 1e6)
    return best


def breakdown(folder: Path) -> dict[str, float]:
    """One single-text /predict in process, stage by stage (CPU µs): HTTP parsing and answering by the server,
    JSON in and checks, tokenizer, ONNX Runtime, probabilities and response building, JSON out."""
    import asyncio

    import orjson

    from quantflow.core.onnx_model import softmax
    from quantflow.core.params import load_params
    from serving.app import Service, parse_json, predict_texts
    from serving.http import Limits, Server
    from serving.reload import ModelSlot

    slot = ModelSlot(None, folder.name, "staging", 1, folder=folder)
    slot.load_latest()
    service = Service(load_params(ROOT / "params.yaml").serve, slot)
    model = slot.current
    classifier = model.classifier
    ids = classifier.tokenizer.encode([TEXT])
    logits = classifier.logits(ids)
    answer = service._predict(parse_json(BODY), model, time.perf_counter())
    stages = {
        "JSON in + checks": per_call_us(lambda: predict_texts(parse_json(BODY), service.params)),
        "tokenizer": per_call_us(lambda: classifier.tokenizer.encode([TEXT])),
        "ONNX Runtime": per_call_us(lambda: classifier.logits(ids)),
        "softmax": per_call_us(lambda: softmax(logits)),
        "labels + probabilities dicts": per_call_us(lambda: model.predict([TEXT]))
        - per_call_us(lambda: softmax(classifier.logits(classifier.tokenizer.encode([TEXT])))),
        "JSON out": per_call_us(lambda: orjson.dumps(answer)),
    }
    stages["labels + probabilities dicts"] = max(0.0, stages["labels + probabilities dicts"])
    whole = asyncio.run(_through_server(service, Server, Limits))
    stages["HTTP server (parse, dispatch, metrics, write)"] = max(0.0, whole - sum(stages.values()))
    stages["whole request in process"] = whole
    return stages


def log_costs(folder: Path, work: Path, lines: int = 20_000) -> dict[str, float]:
    """The prediction log in process (thread CPU µs): on the request path, sampling + queueing one single-text
    request (``Service._keep``); in the writer thread, one line (record, hash, orjson, its share of the write)."""
    from quantflow.core.params import load_params
    from serving.app import Service
    from serving.reload import ModelSlot

    slot = ModelSlot(None, folder.name, "staging", 1, folder=folder)
    slot.load_latest()
    params = load_params(ROOT / "params.yaml").serve.model_copy(update={"log_queue": lines})
    service = Service(params, slot, work / "served-in-process")
    model, log = slot.current, service.log
    texts = [TEXT]
    predictions = model.predict(texts)
    per_request = per_call_us(lambda: service._keep(model, texts, predictions, time.perf_counter()), n=2000)
    log.flush()
    best = float("inf")
    for _ in range(3):
        for _ in range(lines):
            service._keep(model, texts, predictions, time.perf_counter())
        started = time.thread_time()
        written = log.flush()
        best = min(best, (time.thread_time() - started) / written * 1e6)
    return {"request path (sample + put_nowait), per request": per_request, "writer thread, per line": best}


async def _through_server(service: Any, server_cls: Any, limits_cls: Any) -> float:
    """A raw request fed to the server's connection (a transport that drops what is written), CPU µs each."""
    import asyncio

    raw = (
        b"POST /predict HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(BODY),
            BODY,
        )
    )

    class Sink(asyncio.Transport):
        def write(self, data: bytes) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    connection = server_cls(service, limits_cls.of(service.params)).protocol()
    connection.connection_made(Sink())
    return per_call_us(lambda: connection.data_received(raw))


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-serve-goals-"))
