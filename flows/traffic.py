"""Served traffic for ``quantflow simulate-nights``: the sandbox's own ``quantflow serve``, and texts sent through
it between nights, so the prediction log the next night reads is one a real service wrote.

The service runs as a separate process (as in production: the nightly flow never calls it), serving the
sandbox's ``@staging`` and polling for a new version, with the sandbox's params (its ``serve.log_dir``, shadow
settings). Texts go over HTTP to ``/predict`` a few per request; the service's log goes to
``.quantflow/serve.log`` in the sandbox. Stopped by its own PID (SIGTERM, so the prediction log is flushed).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from quantflow.core.corpora import held_back, load_builtin
from quantflow.core.errors import QuantflowError
from quantflow.core.params import BUILTIN_DATASETS
from quantflow.core.workspace import STATE_DIR

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
TEXTS_PER_REQUEST = 8


class TrafficError(QuantflowError):
    """The sandbox's service did not start, or refused the replayed texts."""


@dataclass(frozen=True)
class Service:
    url: str
    proc: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_ready(service: Service, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ``/ready`` answers 200 (a model is loaded); an error with the service's last output otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise TrafficError(
                f"quantflow serve exited ({service.proc.returncode}); its output, {service.log}:\n"
                f"{service.log.read_text(errors='replace')[-2000:]}"
            )
        if _get(f"{service.url}/ready") == 200:
            return
        time.sleep(0.3)
    raise TrafficError(f"quantflow serve not ready after {timeout_s:.0f} s; see {service.log}")


def stop(service: Service) -> None:
    """SIGTERM (the service flushes its prediction log and exits), SIGKILL to its group if it lingers."""
    if service.proc.poll() is not None:
        return
    service.proc.send_signal(signal.SIGTERM)
    try:
        service.proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def serving(
    root: Path, poll_interval_s: float = 1.0, settings: dict[str, str] | None = None
) -> Iterator[Service]:
    """``quantflow serve`` on ``root`` (its params.yaml, its registry, with ``settings`` as ``--set`` overrides)
    on a free 127.0.0.1 port, ready."""
    port = free_port()
    log = root / STATE_DIR / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "quantflow.cli", "serve", "--params", str(root / "params.yaml")]
    args += ["--root", str(root), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in {"serve.poll_interval_s": str(poll_interval_s), **(settings or {})}.items():
        args += ["--set", f"{key}={value}"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service = Service(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(service)
        yield service
    finally:
        stop(service)


def served_version(service: Service) -> str:
    with urllib.request.urlopen(f"{service.url}/model", timeout=5) as answer:
        return str(json.load(answer).get("version", "?"))


def wait_for_version(service: Service, version: str, timeout_s: float = 60.0) -> None:
    """Until the service answers with ``version`` (it polls the alias), so tonight's traffic meets tonight's model."""
    deadline = time.monotonic() + timeout_s
    while served_version(service) != version:
        if time.monotonic() > deadline:
            raise TrafficError(f"the service still serves v{served_version(service)}, not v{version}")
        time.sleep(0.3)


def replay(service: Service, texts: list[str]) -> int:
    """POST the texts to ``/predict``, :data:`TEXTS_PER_REQUEST` per request; how many were answered."""
    answered = 0
    for start in range(0, len(texts), TEXTS_PER_REQUEST):
        chunk = texts[start : start + TEXTS_PER_REQUEST]
        request = urllib.request.Request(
            f"{service.url}/predict",
            data=json.dumps({"texts": chunk}, ensure_ascii=False).encode("utf-8"),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answered += len(json.load(answer)["predictions"])
        except urllib.error.HTTPError as exc:
            raise TrafficError(
                f"/predict refused a replayed request ({exc.code}): {exc.read()[:300]!r}"
            ) from None
    return answered


def traffic_texts(dataset: str, holdout: float, used: set[str], count: int, seed: int) -> list[str]:
    """``count`` held-back texts of ``dataset`` that no nightly batch releases (``used``), as many per label
    (the mix the dataset is built with, so an ordinary night's traffic looks like the data), seeded."""
    corpus = load_builtin(dataset)
    held = corpus[held_back(corpus, holdout) & ~corpus["text"].isin(used)]
    held = held[held["text"].str.strip().str.len() > 0]
    groups = dict(list(held.groupby("label")))
    share = count // len(groups)
    short = {label: len(rows) for label, rows in groups.items() if len(rows) < share}
    if short:
        raise TrafficError(
            f"held-back texts left for traffic per label {short}, {share} asked per label; "
            "lower --traffic or raise --holdout"
        )
    parts = [rows.sample(n=share, random_state=seed) for rows in groups.values()]
    return pd.concat(parts).sample(frac=1.0, random_state=seed)["text"].astype(str).tolist()


def shifted_texts(dataset: str, count: int, seed: int) -> list[str]:
    """``count`` texts of another built-in corpus than ``dataset``: the traffic of the shifted night."""
    other = sorted(set(BUILTIN_DATASETS) - {dataset})[0]
    corpus = load_builtin(other)
    corpus = corpus[corpus["text"].str.strip().str.len() > 0]
    return corpus.sample(n=min(count, len(corpus)), random_state=seed)["text"].astype(str).tolist()


def used_texts(batches: list[pd.DataFrame]) -> set[str]:
    return {str(t) for batch in batches for t in batch["text"]}
