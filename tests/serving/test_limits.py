"""Slow clients and overload, with raw sockets against a real ``quantflow serve`` process on 127.0.0.1.

Two servers on a local variant folder: ``slow`` (short read and keep-alive timeouts, default caps and bind
address) and ``capped`` (tiny connection and in-flight caps, a long read timeout).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.params_helpers import write_params
from tests.serving.conftest import Running, free_port, wait_ready

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 2.5  # unlike the read timeout, so a test tells which one closed the connection
BODY = orjson.dumps({"texts": ["国家经济发展"]})


def start(root: Path, variant: Path, serve: dict) -> Running:
    write_params(root / "params.yaml", {f"serve.{key}": value for key, value in serve.items()})
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantflow.cli", "serve", "--params", str(root / "params.yaml")]
            + ["--model-dir", str(variant), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    running = Running(f"http://127.0.0.1:{port}", proc, log)
    wait_ready(running)
    return running


def stop(running: Running) -> None:
    running.proc.send_signal(signal.SIGTERM)
    try:
        running.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def slow(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(
        tmp_path_factory.mktemp("slow"),
        variant,
        {"read_timeout_s": READ_TIMEOUT_S, "keep_alive_s": KEEP_ALIVE_S},
    )
    yield running
    stop(running)


@pytest.fixture(scope="module")
def capped(variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(
        tmp_path_factory.mktemp("capped"),
        variant,
        {"read_timeout_s": 30, "max_connections": 4, "max_in_flight": 2},
    )
    yield running
    stop(running)


def port_of(running: Running) -> int:
    return int(running.url.rsplit(":", 1)[1])


def connect(running: Running, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(running)), timeout=10)
    if send:
        sock.sendall(send)
    return sock


def request(body: bytes = BODY, declared: int | None = None) -> bytes:
    length = len(body) if declared is None else declared
    head = f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    return head.encode() + body


def watch(socks: list[socket.socket], timeout: float) -> list[tuple[bytes, float | None]]:
    """Per socket: everything the server sent, and the monotonic time it closed the connection (None: still
    open after ``timeout``). All sockets are watched at once, so each close is timed when it happens."""
    selector = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
    data, closed = [b""] * len(socks), [None] * len(socks)
    deadline = time.monotonic() + timeout
    while any(c is None for c in closed) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            i = key.data
            try:
                chunk = socks[i].recv(65536)
            except ConnectionResetError:
                chunk = b""
            data[i] += chunk
            if not chunk:
                closed[i] = time.monotonic()
                selector.unregister(socks[i])
    selector.close()
    return list(zip(data, closed, strict=True))


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float | None]:
    """Everything the server sends, and the seconds until it closed the connection (None: still open)."""
    started = time.monotonic()
    [(data, closed)] = watch([sock], timeout)
    return data, None if closed is None else closed - started


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict]]:
    """``count`` whole responses on a kept-alive connection, in order: status and JSON body of each."""
    sock.setblocking(True)
    sock.settimeout(10)
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next(
            int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            rest += sock.recv(65536)
        out.append((int(head.split()[1]), orjson.loads(rest[:length])))
        data = rest[length:]
    return out


def read_response(sock: socket.socket) -> tuple[int, dict]:
    return read_responses(sock, 1)[0]


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_idle_and_half_open_connections_are_closed_after_the_read_timeout(slow: Running) -> None:
    """20 slow clients: 7 send nothing, 7 half a header, 6 the headers and half the body. All are closed within
    read_timeout_s + 1 s; those that began a request get 408 naming serve.read_timeout_s."""
    opened = time.monotonic()
    idle = [connect(slow) for _ in range(7)]
    half_header = [connect(slow, b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Le") for _ in range(7)]
    half_body = [connect(slow, request(declared=len(BODY))[: -len(BODY) // 2]) for _ in range(6)]
    results = watch(idle + half_header + half_body, READ_TIMEOUT_S + 3)
    for sock in idle + half_header + half_body:
        sock.close()
    closed = [at for _, at in results]
    assert all(at is not None for at in closed), (
        f"{closed.count(None)} still open after {READ_TIMEOUT_S + 3} s"
    )
    waited = [at - opened for at in closed]
    assert max(waited) <= READ_TIMEOUT_S + 1, waited
    assert min(waited) >= READ_TIMEOUT_S * 0.9, waited  # not dropped before the timeout either
    assert [data for data, _ in results[:7]] == [b""] * 7
    for data, _ in results[7:]:
        assert status_of(data) == 408 and b"serve.read_timeout_s" in data, data


def test_keep_alive_timeout_closes_an_idle_connection_between_requests(slow: Running) -> None:
    sock = connect(slow, request())
    assert read_response(sock)[0] == 200
    sock.sendall(request())  # a second request on the same connection is served
    assert read_response(sock)[0] == 200
    data, waited = read_until_closed(sock, KEEP_ALIVE_S + 3)
    sock.close()
    assert data == b"" and waited is not None, "an idle kept-alive connection was never closed"
    assert KEEP_ALIVE_S * 0.9 <= waited <= KEEP_ALIVE_S + 1, waited


def test_service_binds_loopback_by_default(slow: Running) -> None:
    """No --host and no serve.host: the listening socket is on 127.0.0.1 (/proc/net/tcp: 0100007F)."""
    port = f"{port_of(slow):04X}"
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"  # 0A: LISTEN
    ]
    assert listening == [f"0100007F:{port}"], listening


def test_connection_cap_answers_503_naming_the_limit(capped: Running) -> None:
    held = [connect(capped) for _ in range(4)]
    try:
        time.sleep(0.2)  # all four accepted
        extra = connect(capped, request())
        data, closed = read_until_closed(extra, 5)
        extra.close()
        assert status_of(data) == 503 and b"serve.max_connections is 4" in data, data
        assert closed is not None
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    again = connect(capped, request())  # the slots are free again
    assert read_response(again)[0] == 200
    again.close()


def test_in_flight_cap_answers_503_naming_the_limit(capped: Running) -> None:
    """Two requests whose body is still arriving hold both slots: a third gets 503; once they finish, all is
    served again."""
    half = len(BODY) // 2
    slow_bodies = [connect(capped, request(BODY[:half], declared=len(BODY))) for _ in range(2)]
    try:
        time.sleep(0.2)
        third = connect(capped, request())
        data, _ = read_until_closed(third, 5)
        third.close()
        assert status_of(data) == 503 and b"serve.max_in_flight is 2" in data, data
        for sock in slow_bodies:
            sock.sendall(BODY[half:])
            assert read_response(sock)[0] == 200
    finally:
        for sock in slow_bodies:
            sock.close()
    time.sleep(0.3)
    after = connect(capped, request())
    assert read_response(after)[0] == 200
    after.close()


def test_pipelined_requests_are_answered_in_order(slow: Running) -> None:
    """Three requests in one write (a POST answered inline, a GET answered by the control app, a POST with a
    bad body): three answers, in the order asked, on the one connection."""
    get = b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n"
    sock = connect(slow, request() + get + request(b'{"texts": []}'))
    answers = read_responses(sock, 3)
    sock.close()
    assert [status for status, _ in answers] == [200, 200, 422]
    assert (
        "predictions" in answers[0][1]
        and answers[1][1]["ready"] is True
        and "empty" in answers[2][1]["error"]
    )
