"""Benchmark: `quantflow serve` vs `mlflow models serve --env-manager local` on the same registered model.

Both servers run side by side in this one run, on 127.0.0.1, and are driven by the same load generator
(wrk, one thread, single-text requests, a few seconds per cell: wrk bounds runs by time, and a Lua
``thread:stop()`` after N responses leaves wrk idling until the end of the duration, which ruins its req/s). Prints a markdown table for
BENCHMARKS.md. Usage: `make bench-serve` or `python bench/serve.py [--seconds 5]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = "这家酒店服务很好，房间干净，早餐也不错，下次还会再来。"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
"""
QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@dataclass
class Server:
    label: str
    proc: subprocess.Popen
    url: str
    path: str
    body: str
    spawned: float = 0.0
    ready_s: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server: Server, probe: str, timeout: float = 120) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with code {server.proc.returncode}")
        try:
            with urllib.request.urlopen(server.url + probe, timeout=2) as answer:
                if answer.status == 200:
                    server.ready_s = time.monotonic() - server.spawned
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{server.label} not ready after {timeout} s")


def start(label: str, cmd: list[str], path: str, body: dict, log: Path) -> Server:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    env = {**os.environ, **QUIET, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(
        label, proc, f"http://127.0.0.1:{port}", path, json.dumps(body, ensure_ascii=False), time.monotonic()
    )


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children (mlflow's CLI runs uvicorn as a child)."""
    pids = [pid] + [
        int(p)
        for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    total = 0
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            match = re.search(r"VmRSS:\s+(\d+) kB", status.read_text())
            total += int(match.group(1)) if match else 0
    return total / 1024


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(server: Server, connections: int, seconds: float, script: Path) -> dict:
    env = {**os.environ, "BENCH_BODY": server.body}
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
    ]
    out = subprocess.run(
        cmd + [server.url + server.path], capture_output=True, text=True, env=env, check=True
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


def servers(model: str, logs: Path) -> list[tuple[Server, str]]:
    py = sys.executable
    qf_cmd = [
        py,
        "-m",
        "quantflow.cli",
        "serve",
        "--port",
        "{port}",
        "--set",
        "serve.model_name=" + model.split("@")[0],
    ]
    child = [py, str(Path(__file__).resolve()), "--child", "--port", "{port}", "--model", model, "--loop"]
    mlflow_cmd = [py, "-m", "mlflow", "models", "serve", "-m", f"models:/{model}", "--env-manager", "local"]
    mlflow_cmd += ["-h", "127.0.0.1", "-p", "{port}", "-w", "1"]
    # the pyfunc's predict is type-hinted (list[str]): MLflow's fast path takes the list under "inputs"
    qf_body, ml_body = {"texts": [TEXT]}, {"inputs": [TEXT]}
    started = [
        (start("quantflow serve", qf_cmd, "/predict", qf_body, logs / "quantflow.log"), "/ready"),
        (
            start(
                "quantflow, asyncio + h11",
                [*child, "asyncio", "--http", "h11"],
                "/predict",
                qf_body,
                logs / "h11.log",
            ),
            "/ready",
        ),
        (start("mlflow models serve", mlflow_cmd, "/invocations", ml_body, logs / "mlflow.log"), "/ping"),
    ]
    # uvloop is not a dependency: measured when installed, and not chosen (see serving/server.py)
    if importlib.util.find_spec("uvloop"):
        uvloop = [*child, "uvloop", "--http", "httptools"]
        started.insert(
            1,
            (
                start("quantflow, uvloop + httptools", uvloop, "/predict", qf_body, logs / "uvloop.log"),
                "/ready",
            ),
        )
    return started


def child(port: int, model: str, loop: str, http: str) -> None:
    """The same service on another event loop / HTTP parser (quantflow serve runs asyncio + httptools)."""
    import uvicorn

    from quantflow.core.params import load_params
    from serving.server import build_service

    params = load_params(ROOT / "params.yaml", {"serve.model_name": model.split("@")[0]})
    service = build_service(params, ROOT)
    uvicorn.run(
        service, host="127.0.0.1", port=port, loop=loop, http=http, access_log=False, log_level="warning"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="quantflow-news_vs_comment@staging")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per cell (after a 1 s warm-up)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--http", default="h11", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.port, args.model, args.loop, args.http)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    script = logs / "post.lua"
    script.write_text(WRK_SCRIPT)
    started = servers(args.model, logs)
    try:
        for server, probe in started:
            wait_ready(server, probe)
        table(started, args.seconds, script)
    finally:
        for server, _ in started:
            stop(server)
    print(f"\nlogs: {logs}")


def table(started: list[tuple[Server, str]], seconds: int, script: Path) -> None:
    print(
        f"wrk -t1 -c<concurrency> -d{seconds}s (-c32: {2 * seconds}s) after a 1 s warm-up, one server at a time"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}; body to quantflow: {started[0][0].body}\n")
    for server, _ in started:
        print(
            f"- {server.label}: ready in {server.ready_s:.1f} s after spawn, RSS {rss_mb(server.proc.pid):.0f} MB"
        )
    print("\n| concurrency | server | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    results: dict[tuple[int, str], dict] = {}
    for connections in (1, 16, 32, 64):
        for server, _ in started:
            run_wrk(server, connections, 1, script)  # warm-up
            duration = 2 * seconds if connections == 32 else seconds  # the 10,000-request error check
            r = results[(connections, server.label)] = run_wrk(server, connections, duration, script)
            print(
                f"| {connections} | {server.label} | {r['requests']} | {r['rps']:,.0f} | {r['p50']:.2f} | "
                f"{r['p99']:.2f} | {r['errors']} |",
                flush=True,
            )
    for connections in (1, 16, 64):
        ratio = (
            results[(connections, "quantflow serve")]["rps"]
            / results[(connections, "mlflow models serve")]["rps"]
        )
        print(f"\nconcurrency {connections}: quantflow serve / mlflow models serve = {ratio:.1f}x", end="")
    print()


if __name__ == "__main__":
    main()
