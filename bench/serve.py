"""Benchmark: `quantflow serve` against MLflow's serving, side by side in one run, plus the serving goals.

Servers, all on 127.0.0.1, all answering single-text requests from the same load generator (wrk, one thread):
- ``quantflow serve`` on the registered model (``--model``, default ``quantflow-news_vs_comment@staging``), and
  the same with ``serve.workers=2``;
- the same app on uvicorn (asyncio + httptools): the server ``quantflow serve`` ran before its own;
- ``mlflow models serve`` of the registered model (the register step's DataFrame pyfunc);
- ``mlflow models serve`` of the best plain MLflow configuration: the type-hinted models-from-code pyfunc
  bench/pyfunc_typed.py over the same int8 ONNX folder, logged with ``mlflow.pyfunc.log_model`` into a scratch
  tracking store.
Cells alternate (every server at one concurrency, then the next concurrency; the server order rotates each
round), ``--rounds`` rounds, each cell a 1 s warm-up then ``--seconds`` of wrk. Besides wrk's figures, each
cell records the server's CPU time per request (/proc), steadier than req/s on a shared machine.
Then the goal rows (bench/serve_goals.py). Writes the Serving section of BENCHMARKS.md. Every ``quantflow
serve`` here logs its predictions (the shipped ``serve.log_sample``) into the scratch folder, never into the
project's ``data/served`` (the nightly flow would read the benchmark's traffic as production's).

``--log-overhead`` measures the prediction log's cost instead (issue #17): two ``quantflow serve`` on the same
folder, ``serve.log_sample`` 1.0 and 0, driven in turn at concurrency 16 (the order swaps each round), their
req/s ratio by round, plus the log's costs in process; it writes its own block of the Serving section.

Usage: ``make bench-serve`` or ``python bench/serve.py [--seconds 5] [--rounds 2] [--model-dir DIR]``
(``--model-dir``: a local variant folder instead of the registry; the registered-model row is then left out);
``make bench-serve-log`` or ``python bench/serve.py --log-overhead [--seconds 5] [--rounds 6] [--model-dir DIR]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import serve_goals as goals

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from quantflow.core.benchmarks import uptime, write_section  # noqa: E402

START, END = "<!-- bench-serve:begin -->", "<!-- bench-serve:end -->"
LOG_START, LOG_END = "<!-- bench-serve-log:begin -->", "<!-- bench-serve-log:end -->"
LOG_ON, LOG_OFF = "log on (log_sample 1.0)", "log off (log_sample 0)"
LOG_CONCURRENCY, LOG_GOAL = 16, 0.90
QF, QF2, UVICORN = "quantflow serve", "quantflow serve, 2 workers", "quantflow app on uvicorn"
ML_REGISTERED, ML_TYPED = "mlflow serve, registered pyfunc", "mlflow serve, type-hinted pyfunc"
QUIET = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
WRK_SCRIPT = 'wrk.method = "POST"\nwrk.body = os.getenv("BENCH_BODY")\nwrk.headers["Content-Type"] = "application/json"\n'


@dataclass
class Server:
    label: str
    proc: subprocess.Popen
    port: int
    path: str
    body: str
    probe: str
    spawned: float = 0.0
    ready_s: float = 0.0
    cells: dict[tuple[int, int], dict] = field(default_factory=dict)  # (concurrency, round) → wrk figures

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    label: str, cmd: list[str], path: str, body: dict, probe: str, log: Path, env: dict | None = None
) -> Server:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    full_env = {
        **os.environ,
        **QUIET,
        **(env or {}),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(label, proc, port, path, json.dumps(body, ensure_ascii=False), probe, time.monotonic())


def wait_ready(server: Server, timeout: float = 180) -> None:
    while time.monotonic() - server.spawned < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with code {server.proc.returncode}")
        try:
            with urllib.request.urlopen(server.url + server.probe, timeout=2) as answer:
                if answer.status == 200:
                    server.ready_s = time.monotonic() - server.spawned
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.label} not ready after {timeout} s")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


def rss_mb(pid: int) -> float:
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


def wrk_command(server: Server, connections: int, seconds: float, script: Path) -> list[str]:
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        server.url + server.path,
    ]


def run_wrk(server: Server, connections: int, seconds: float, script: Path) -> dict:
    """One wrk run: req/s, p50/p99 ms, requests, errors (non-2xx + socket errors), server CPU µs/request."""
    cpu = goals.cpu_seconds(server.proc.pid)
    out = subprocess.run(
        wrk_command(server, connections, seconds, script),
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": server.body},
        check=True,
    ).stdout
    cpu = goals.cpu_seconds(server.proc.pid) - cpu
    return parse_wrk(out, cpu)


def parse_wrk(out: str, cpu: float) -> dict:
    """wrk's summary (``--latency``) as numbers; ``cpu``: the server's CPU seconds over the run."""
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "requests": requests,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0),
        "cpu_us": cpu / max(requests, 1) * 1e6,
    }


# --- the model and the servers ----------------------------------------------------------------------------------


def variant_folder(model: str, model_dir: Path | None, work: Path) -> Path:
    """The int8 ONNX folder behind ``model`` (downloaded from the registry), or ``model_dir``."""
    if model_dir is not None:
        return model_dir.resolve()
    import mlflow

    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model}", dst_path=str(work / "registered")
        )
    )
    return next(downloaded.rglob("model.onnx")).parent


def log_typed_pyfunc(folder: Path, work: Path) -> tuple[str, str]:
    """bench/pyfunc_typed.py logged as a models-from-code pyfunc in a scratch store: (model URI, tracking URI)."""
    import mlflow

    uri = f"sqlite:///{work / 'typed.db'}"
    mlflow.set_tracking_uri(uri)
    artifacts = (work / "typed-artifacts").as_uri()  # not the store's default ./mlruns in the project
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench-serve", artifact_location=artifacts))
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="typed",
                python_model=str(ROOT / "bench" / "pyfunc_typed.py"),
                artifacts={"model_dir": str(folder)},
                pip_requirements=[],
            )
    finally:
        mlflow.set_tracking_uri(None)
    return info.model_uri, uri


def start_servers(args: argparse.Namespace, folder: Path, work: Path) -> list[Server]:
    """Every server of the comparison, ready; a server that fails to start stops the others."""
    py, text = sys.executable, goals.TEXT
    registry = {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}  # log_typed_pyfunc moves the env's
    qf_body = {"texts": [text]}
    name, _, alias = args.model.partition("@")
    source = ["--model-dir", str(folder)] if args.model_dir else ["--set", f"serve.model_name={name}"]
    qf = [py, "-m", "quantflow.cli", "serve", "--port", "{port}", *source, "--set", f"serve.alias={alias}"]
    qf += ["--set", f"serve.log_dir={work / 'served'}"]
    child = [
        py,
        str(Path(__file__).resolve()),
        "--uvicorn-child",
        "--port",
        "{port}",
        "--model-dir",
        str(folder),
        "--log-dir",
        str(work / "served"),
    ]
    typed_uri, typed_store = log_typed_pyfunc(folder, work)
    ml = [py, "-m", "mlflow", "models", "serve", "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"]
    ml += ["-w", "1"]
    typed = [*ml, "-m", typed_uri]
    servers = [
        start(QF, qf, "/predict", qf_body, "/ready", work / "qf.log", registry),
        start(
            QF2, [*qf, "--set", "serve.workers=2"], "/predict", qf_body, "/ready", work / "qf2.log", registry
        ),
        start(UVICORN, child, "/predict", qf_body, "/ready", work / "uvicorn.log"),
        start(
            ML_TYPED,
            typed,
            "/invocations",
            {"inputs": [text]},
            "/ping",
            work / "typed.log",
            {"MLFLOW_TRACKING_URI": typed_store},
        ),
    ]
    if not args.model_dir:
        registered, body = [*ml, "-m", f"models:/{args.model}"], {"inputs": [text]}
        servers.append(
            start(ML_REGISTERED, registered, "/invocations", body, "/ping", work / "registered.log", registry)
        )
    try:
        for server in servers:
            wait_ready(server)
    except RuntimeError:
        for server in servers:
            stop(server)
        raise
    return servers


def uvicorn_child(port: int, model_dir: Path, log_dir: Path) -> None:
    """The service's app on uvicorn (asyncio loop, httptools parser): the server `quantflow serve` used before."""
    import uvicorn

    from quantflow.core.params import load_params
    from serving.server import build_service

    params = load_params(ROOT / "params.yaml", {"serve.log_dir": str(log_dir)})
    service = build_service(params, ROOT, model_dir)
    uvicorn.run(
        service,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# --- the comparison ------------------------------------------------------------------------------------------------


def compare(servers: list[Server], concurrencies: list[int], seconds: int, rounds: int, script: Path) -> None:
    """Every server at every concurrency, ``rounds`` times; within a concurrency the order rotates by round."""
    for round_ in range(rounds):
        for c in concurrencies:
            shift = round_ % len(servers)
            for server in servers[shift:] + servers[:shift]:
                run_wrk(server, c, 1, script)  # warm-up
                cell = server.cells[(c, round_)] = run_wrk(server, c, seconds, script)
                print(
                    f"round {round_ + 1} c{c} {server.label}: {cell['rps']:,.0f} req/s, p99 {cell['p99']:.2f} ms, {cell['errors']} errors",
                    flush=True,
                )


def comparison_table(servers: list[Server], concurrencies: list[int], rounds: int) -> list[str]:
    lines = [
        "| concurrency | server | req/s by round | p50 ms | p99 ms | errors | server CPU µs/request |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        for s in servers:
            cells = [s.cells[(c, r)] for r in range(rounds)]
            errors = sum(x["errors"] for x in cells)
            lines.append(
                f"| {c} | {s.label} | {seq(cells, 'rps', ',.0f')} | {seq(cells, 'p50', '.2f')} | "
                f"{seq(cells, 'p99', '.2f')} | {errors} | {seq(cells, 'cpu_us', '.0f')} |"
            )
    return lines


def seq(cells: list[dict], key: str, fmt: str) -> str:
    """One figure of every round, ``a / b``."""
    return " / ".join(format(cell[key], fmt) for cell in cells)


def ratios(servers: list[Server], concurrencies: list[int], rounds: int) -> list[str]:
    by = {s.label: s for s in servers}
    lines = []
    for other in (ML_TYPED, ML_REGISTERED, UVICORN):
        if other not in by:
            continue
        per_c = []
        for c in concurrencies:
            values = [by[QF].cells[(c, r)]["rps"] / by[other].cells[(c, r)]["rps"] for r in range(rounds)]
            per_c.append(f"c{c} " + " / ".join(f"{v:.1f}x" for v in values))
        lines.append(f"- `quantflow serve` / {other}, req/s by round: {'; '.join(per_c)}")
    return lines


# --- the goal rows ----------------------------------------------------------------------------------------------------


def goal_rows(
    servers: list[Server], folder: Path, args: argparse.Namespace, script: Path, work: Path
) -> list[str]:
    """One row per goal of the issue: what was measured, the target, met or not (on this run's machine)."""
    from quantflow.core.params import load_params

    by = {s.label: s for s in servers}
    qf, read_timeout = by[QF], load_params(ROOT / "params.yaml").serve.read_timeout_s
    rows = ["| goal | target | measured | met |", "|---|---|---|---|"]
    slow = goals.slow_clients({QF: qf.port, ML_TYPED: by[ML_TYPED].port}, read_timeout)
    q, m = slow[QF], slow[ML_TYPED]
    last = f"{q['last_s']:.2f} s" if q["last_s"] is not None else "not all closed"
    rows.append(
        f"| 20 idle/half-open connections closed (`quantflow serve`, read_timeout_s {read_timeout:g}) | ≤ {read_timeout + 1:g} s "
        f"| {q['closed']}/{q['count']} closed, the last after {last} (mlflow serve/uvicorn: {m['open_at_limit']}/20 still open "
        f"after {read_timeout + 1:g} s) | {'yes' if q['open_at_limit'] == 0 else 'no'} |"
    )
    held = goals.with_open_connections(qf.port, 500, lambda: run_wrk(qf, 16, args.seconds, script))
    rows.append(
        f"| `/predict` p99 with 500 open connections (wrk c16 beside them) | ≤ 10 ms | p99 {held['p99']:.2f} ms, "
        f"{held['rps']:,.0f} req/s, {held['errors']} errors; {held['held_open']}/500 still open after | "
        f"{'yes' if held['p99'] <= 10 and held['held_open'] == 500 else 'no'} |"
    )
    best16 = max(qf.cells[(16, r)]["rps"] for r in range(args.rounds))
    many = run_wrk(qf, 32, max(args.seconds, 1.5 * 10_000 / max(best16, 1)), script)
    rows.append(
        f"| 10,000 requests at concurrency 32 | 0 errors | {many['requests']:,} requests, {many['errors']} errors, "
        f"p99 {many['p99']:.2f} ms | {'yes' if many['errors'] == 0 and many['requests'] >= 10_000 else 'no'} |"
    )
    rows += [ratio_row(by, 16, args.rounds), p99_row(qf, 16, args.rounds)]
    rows.append(staging_move_row(folder, args, script, work))
    return rows + batch_rows(folder, args, work)


def staging_move_row(folder: Path, args: argparse.Namespace, script: Path, work: Path) -> str:
    """``--moves`` moves of ``@staging`` between two registered versions (the served folder registered twice, as
    the register step logs it, in a scratch sqlite store) while wrk keeps concurrency 16 on ``/predict``: seconds
    from each move until ``/ready`` names the new version, and wrk's failed requests over the whole time."""
    uri, name = f"sqlite:///{work / 'moves.db'}", "bench-serve-moves"
    client, versions = goals.registered_twice(folder, work / "moves-artifacts", uri, name)
    client.set_registered_model_alias(name, "staging", versions[0])
    poll = args.poll_interval
    cmd = [
        sys.executable,
        "-m",
        "quantflow.cli",
        "serve",
        "--port",
        "{port}",
        "--set",
        f"serve.model_name={name}",
    ]
    cmd += ["--set", f"serve.poll_interval_s={poll:g}", "--set", f"serve.cache_dir={work / 'moves-cache'}"]
    cmd += ["--set", f"serve.log_dir={work / 'served'}"]
    server = start(
        "moves",
        cmd,
        "/predict",
        {"texts": [goals.TEXT]},
        "/ready",
        work / "moves.log",
        {"MLFLOW_TRACKING_URI": uri},
    )
    try:
        wait_ready(server)
        load = subprocess.Popen(
            wrk_command(server, 16, 3600, script),
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "BENCH_BODY": server.body},
        )
        time.sleep(1)
        seconds = [
            goals.move_and_wait(client, name, versions[(i + 1) % 2], server.url, limit=poll + 30)
            for i in range(args.moves)
        ]
        time.sleep(1)
        load.send_signal(signal.SIGINT)  # wrk prints its summary and exits
        done = parse_wrk(load.communicate(timeout=30)[0], 0.0)
    finally:
        stop(server)
    limit = poll + 2
    shown = " / ".join("not served" if s is None else f"{s:.2f}" for s in seconds)
    within = sum(s is not None and s <= limit for s in seconds)
    met = within == args.moves and done["errors"] == 0
    return (
        f"| a `staging` move reaches the service under load (poll_interval_s {poll:g}, wrk c16 on `/predict` "
        f"throughout) | ≤ {limit:g} s, {args.moves} of {args.moves}, 0 failed requests | {shown} s; {within} of "
        f"{args.moves} within; {done['requests']:,} requests, {done['errors']} failed, p99 {done['p99']:.2f} ms | "
        f"{'yes' if met else 'no'} |"
    )


def ratio_row(by: dict[str, Server], c: int, rounds: int) -> str:
    values = [by[QF].cells[(c, r)]["rps"] / by[ML_TYPED].cells[(c, r)]["rps"] for r in range(rounds)]
    shown = " / ".join(f"{v:.1f}x" for v in values)
    met = "yes" if min(values) >= 5 else "no"
    return (
        f"| throughput vs the type-hinted MLflow pyfunc, concurrency {c} | ≥ 5x | {shown} by round | {met} |"
    )


def p99_row(server: Server, c: int, rounds: int) -> str:
    values = [server.cells[(c, r)]["p99"] for r in range(rounds)]
    shown = " / ".join(f"{v:.2f} ms" for v in values)
    met = "yes" if max(values) <= 5 else "no"
    return f"| `quantflow serve` p99 at concurrency {c} | ≤ 5 ms | {shown} by round | {met} |"


def batch_rows(folder: Path, args: argparse.Namespace, work: Path) -> list[str]:
    texts = goals.corpus(args.texts, args.batch_texts)
    timed = goals.batch_vs_loop(folder, texts, args.rounds, work)
    share = [loop / path for loop, path in zip(timed["loop"], timed["predict_path"], strict=True)]
    start = goals.start_up(folder, work)
    dask = goals.dask_vs_single(folder, goals.corpus(args.texts, args.dask_texts), work)
    loop, path, command = (
        " / ".join(f"{v:.2f}" for v in timed[k]) for k in ("loop", "predict_path", "command")
    )
    shares = " / ".join(f"{v:.0%}" for v in share)
    return [
        f"| batch predict vs a plain ORT loop (same tokenizer, batches of 64), {len(texts):,} texts | ≥ 90 % | "
        f"loop {loop} s; read + score + write {path} s = {shares} of the loop's speed; the whole command, "
        f"start-up included, {command} s | {'yes' if min(share) >= 0.9 else 'no'} |",
        f"| `quantflow predict` start-up (one-text file, whole command, median of 3) | ≤ 1 s | "
        f"Parquet {start['parquet']:.2f} s; JSONL {start['jsonl']:.2f} s (pandas reader) | "
        f"{'yes' if start['parquet'] <= 1 else 'no'} |",
        f"| Dask path, 2-worker LocalCluster, {dask['rows']:,} texts in 8 parts | same labels | "
        f"{dask['differ']} labels differ; {dask['dask_s']:.1f} s vs {dask['single_s']:.1f} s single-process "
        f"(both whole commands) | {'yes' if dask['differ'] == 0 else 'no'} |",
    ]


def breakdown_rows(folder: Path, servers: list[Server]) -> list[str]:
    stages = goals.breakdown(folder)
    qf = next(s for s in servers if s.label == QF)
    cpu16 = [cell["cpu_us"] for (c, _), cell in qf.cells.items() if c == 16]
    rows = ["| stage | CPU µs |", "|---|---:|"] + [f"| {name} | {us:.1f} |" for name, us in stages.items()]
    rows.append(
        f"| under wrk at concurrency 16: the server process's CPU per request (kernel I/O included) | {min(cpu16):.0f} |"
    )
    return rows


# --- the prediction log's cost -------------------------------------------------------------------------------------


def log_overhead(args: argparse.Namespace, folder: Path, work: Path, script: Path, load: str) -> str:
    """Log on and log off side by side at concurrency 16, ``--rounds`` alternating rounds; the rendered block."""
    body = {"texts": [goals.TEXT]}
    base = [sys.executable, "-m", "quantflow.cli", "serve", "--port", "{port}", "--model-dir", str(folder)]
    base += ["--set", f"serve.log_dir={work / 'served'}"]
    servers = [
        start(LOG_OFF, [*base, "--set", "serve.log_sample=0"], "/predict", body, "/ready", work / "off.log"),
        start(LOG_ON, [*base, "--set", "serve.log_sample=1.0"], "/predict", body, "/ready", work / "on.log"),
    ]
    try:
        for server in servers:
            wait_ready(server)
        compare(servers, [LOG_CONCURRENCY], args.seconds, args.rounds, script)
        counts = log_counts(servers[1].url)
    finally:
        for server in servers:
            stop(server)
    after = uptime()
    in_process = goals.log_costs(folder, work)
    disk = sum(p.stat().st_size for p in (work / "served").rglob("*.jsonl"))
    for logged in ("served", "served-in-process"):  # ~130 MB a run: counted, not kept
        shutil.rmtree(work / logged, ignore_errors=True)
    return render_log(args, servers, counts, in_process, disk, (load, after), folder)


def log_counts(url: str) -> dict[str, float]:
    """The log-on server's counters: lines written, lines dropped by reason (``/metrics``)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts = {"written": 0.0}
    for name, labels, value in re.findall(
        r"^(quantflow_prediction_log_\w+_total)\{([^}]*)\} (\S+)$", text, re.M
    ):
        if name.endswith("lines_total"):
            counts["written"] += float(value)
        else:
            counts[re.search(r'reason="(\w+)"', labels).group(1)] = float(value)
    return counts


def log_rows(servers: list[Server], rounds: int) -> tuple[list[str], list[float]]:
    """One row per round (off, on, their ratio) and the ratios."""
    off, on = servers
    rows = [
        "| round | log off req/s | log on req/s | on / off | p99 ms off / on | server CPU µs/request off / on |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for r in range(rounds):
        a, b = off.cells[(LOG_CONCURRENCY, r)], on.cells[(LOG_CONCURRENCY, r)]
        ratios.append(b["rps"] / a["rps"])
        rows.append(
            f"| {r + 1} | {a['rps']:,.0f} | {b['rps']:,.0f} | {ratios[-1]:.3f} | {a['p99']:.2f} / {b['p99']:.2f} | "
            f"{a['cpu_us']:.0f} / {b['cpu_us']:.0f} |"
        )
    return rows, ratios


def render_log(
    args: argparse.Namespace,
    servers: list[Server],
    counts: dict[str, float],
    in_process: dict[str, float],
    disk: int,
    load: tuple[str, str],
    folder: Path,
) -> str:
    rows, ratios = log_rows(servers, args.rounds)
    total = [sum(s.cells[(LOG_CONCURRENCY, r)]["requests"] for r in range(args.rounds)) for s in servers]
    median = statistics.median(ratios)
    errors = sum(c["errors"] for s in servers for c in s.cells.values())
    dropped = ", ".join(f"{k} {v:,.0f}" for k, v in counts.items() if k != "written") or "none"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    met = "met" if median >= LOG_GOAL else "not met"
    return (
        "\n".join(
            [
                LOG_START,
                f"Run of {when}: `{' '.join(['python', 'bench/serve.py', *sys.argv[1:]])}`; served: {served(folder)}.",
                f"`uptime` before: `{load[0]}`; after: `{load[1]}`",
                "",
                f"wrk -t1 -c{LOG_CONCURRENCY} -d{args.seconds}s after a 1 s warm-up, single-text `/predict`, {args.rounds} "
                "rounds, the two servers in turn (the order swaps each round):",
                "",
                *rows,
                "",
                f"- log on / log off, req/s: median of the rounds **{median:.3f}** (min {min(ratios):.3f}, max "
                f"{max(ratios):.3f}); all requests {total[1]:,} / {total[0]:,} = {total[1] / total[0]:.3f}. Goal ≥ "
                f"{LOG_GOAL:.2f} (logging costs ≤ 10 %): {met} on this run's machine. wrk errors: {errors}.",
                f"- the log-on server wrote {counts['written']:,.0f} lines ({disk / 1e6:.1f} MB, {disk / max(counts['written'], 1):.0f} "
                f"bytes a line); dropped: {dropped}.",
                "- in process (thread CPU, best of 5): "
                + "; ".join(f"{k} {v:.1f} µs" for k, v in in_process.items())
                + ".",
                LOG_END,
            ]
        )
        + "\n"
    )


# --- main ----------------------------------------------------------------------------------------------------


def served(folder: Path) -> str:
    """What the variant folder holds, from its model.json: architecture, family and variant."""
    card = json.loads((folder / "model.json").read_text())
    config = card.get("config", {})
    return (
        f"`{config.get('arch')}` ({config.get('family', 'neural')} family), variant `{card.get('variant')}`"
    )


def render(
    args: argparse.Namespace,
    servers: list[Server],
    concurrencies: list[int],
    goal: list[str],
    stages: list[str],
    load: str,
    folder: Path,
) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = f"`{args.model_dir}`" if args.model_dir else f"`{args.model}`"
    lines = [
        START,
        f"Run of {when}: `{' '.join(['python', 'bench/serve.py', *sys.argv[1:]])}` (`make bench-serve`), model {source}.",
        f"`uptime` before: `{load}`",
        "",
        f"Served: {served(folder)}; every server loads the same ONNX folder.",
        "",
        *[
            f"- {s.label}: ready {s.ready_s:.1f} s after spawn, RSS {rss_mb(s.proc.pid):.0f} MB"
            for s in servers
        ],
        "",
        f"wrk -t1 -c<concurrency> -d{args.seconds}s after a 1 s warm-up, single-text requests, {args.rounds} rounds alternating:",
        "",
        *comparison_table(servers, concurrencies, args.rounds),
        "",
        *ratios(servers, concurrencies, args.rounds),
        "",
        "Goals (met or not on this run's machine; see the load above):",
        "",
        *goal,
        "",
        "Where a single-text `/predict` spends its CPU (in process, thread time, best of 5):",
        "",
        *stages,
        END,
    ]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="quantflow-news_vs_comment@staging")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="a local variant folder instead of the registry"
    )
    parser.add_argument("--seconds", type=int, default=5, help="seconds per cell (after a 1 s warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--texts", type=Path, default=ROOT / "data" / "split", help="Parquet file(s) with a text column"
    )
    parser.add_argument("--moves", type=int, default=5, help="@staging moves under load")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="serve.poll_interval_s of the moves")
    parser.add_argument("--batch-texts", type=int, default=20_000)
    parser.add_argument("--dask-texts", type=int, default=200_000)
    parser.add_argument(
        "--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone"
    )
    parser.add_argument(
        "--log-overhead",
        action="store_true",
        help="only the prediction log's cost: log on vs off at concurrency 16, alternating (own BENCHMARKS.md block)",
    )
    parser.add_argument("--uvicorn-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.uvicorn_child:
        uvicorn_child(args.port, args.model_dir, args.log_dir)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    load = uptime()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    folder = variant_folder(args.model, args.model_dir, work)
    if args.log_overhead:
        text = log_overhead(args, folder, work, script, load)
        print(text)
        if not args.no_write:
            write_section(text, ROOT / "BENCHMARKS.md", LOG_START, LOG_END)
        print(f"logs and scratch files: {work}")
        return
    servers = start_servers(args, folder, work)
    try:
        compare(servers, concurrencies, args.seconds, args.rounds, script)
        goal = goal_rows(servers, folder, args, script, work)
        stages = breakdown_rows(folder, servers)
        text = render(args, servers, concurrencies, goal, stages, load, folder)
    finally:
        for server in servers:
            stop(server)
        # the servers' prediction logs (up to serve.log_max_mb): counted in /metrics, not kept
        shutil.rmtree(work / "served", ignore_errors=True)
    print(text)
    if not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md", START, END)
    print(f"logs and scratch files: {work}")


if __name__ == "__main__":
    main()
