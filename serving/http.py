"""The service's HTTP/1.1 server: httptools' parser on asyncio, the lean endpoints answered from the parser.

Why not uvicorn: it has no header or body read timeout (a client that opens a connection and sends half a
request holds it for ever: 20 of them were still open after 65 s), no cap on open connections, and each
request costs a task and a dozen ASGI messages (~50 µs of CPU per request here, about half the model's
time). This server reads a whole request, then calls :meth:`Service.answer` directly (on the event loop for
small bodies, in a thread otherwise); everything else (/health, /ready, /model, /metrics, /docs) goes to the
FastAPI control app through a minimal ASGI call.

The limits, all in ``params.yaml`` ``serve:`` and all named in the answer that enforces them:
- ``read_timeout_s``: a request's headers and body must arrive within it (counted from its first byte, or from
  the connection's opening for its first request); else 408 (or a plain close if nothing came) and the
  connection is closed.
- ``keep_alive_s``: an idle connection between two requests is closed after it.
- ``max_connections``: the connection past it gets 503 and is closed.
- ``max_in_flight``: a request read while that many are being answered gets 503.
- ``max_body_bytes``: a larger body gets 413 (read on and dropped up to 16 times the limit, then cut off).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

from quantflow.core.params import ServeParams
from serving.app import DRAIN_FACTOR, Service, too_large

logger = logging.getLogger(__name__)

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
JSON = b"application/json"
SKIP_HEADERS = {b"content-length", b"transfer-encoding", b"connection"}  # the server writes its own
SWEEP_S = 0.25  # how often deadlines are checked: a timeout fires up to this late


@dataclass(frozen=True)
class Limits:
    """The slow-client and overload limits of one worker (see the module docstring)."""

    read_timeout_s: float
    keep_alive_s: float
    max_connections: int
    max_in_flight: int
    max_body_bytes: int

    @classmethod
    def of(cls, params: ServeParams) -> Limits:
        return cls(
            params.read_timeout_s,
            params.keep_alive_s,
            params.max_connections,
            params.max_in_flight,
            params.max_body_bytes,
        )


def head(status: int, length: int, close: bool, headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Status line and headers of a response with a ``length``-byte body (JSON unless ``headers`` say)."""
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown").encode())]
    lines += [b"%s: %s" % pair for pair in headers or [(b"content-type", JSON)]]
    lines.append(b"content-length: %d" % length)
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


@dataclass
class Request:
    """One request as it is read: the parser fills it, the connection answers it."""

    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    method: str = ""
    path: str = ""
    query: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    counted: bool = False  # holds one of max_in_flight
    keep_alive: bool = True
    refused: tuple[int, str] | None = None  # answered without being served (413)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Server:
    """What one worker's connections share: the service, the limits, who is connected, what is in flight."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self.service = service
        self.limits = limits
        self.connections: set[Connection] = set()
        self.in_flight = 0

    async def sweep(self, every_s: float = SWEEP_S) -> None:
        """Forever: close the connections whose deadline passed. One sweep for all connections instead of a
        timer per request (two ``call_later`` per request cost ~5 % of a /predict); a deadline is met within
        ``every_s``."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s)
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline is not None and c.deadline <= now]:
                connection.timed_out()

    def protocol(self) -> Connection:
        return Connection(self)

    def close_idle(self) -> None:
        """On shutdown: close every connection that is not answering a request (the others close after)."""
        for connection in list(self.connections):
            connection.closing = True
            if connection.task is None:
                connection.transport.close()


class Connection(asyncio.Protocol):
    """One client connection: parse, enforce the limits, answer requests in order (pipelining included)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.service = server.service
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.request: Request | None = None  # being read
        self.queue: collections.deque[Request] = collections.deque()  # read, waiting for their turn
        self.task: asyncio.Task | None = None  # a request answered off the parser (thread, control app)
        self.deadline: float | None = None  # loop time when the connection is closed (Server.sweep)
        self.reading = False  # the deadline is the read deadline (else the keep-alive wait, or none)
        self.closing = False
        self.lost = self.loop.create_future()

    # connection events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it on accepted sockets; set it again, cheaply, to be sure
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        if len(self.server.connections) > self.limits.max_connections:
            self.refuse(
                503,
                f"too many open connections: serve.max_connections is {self.limits.max_connections}; "
                "retry later, or raise serve.max_connections / add workers",
            )
            return
        self.arm(self.limits.read_timeout_s, reading=True)  # the first request counts from the opening

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.disarm()
        for request in [self.request, *self.queue]:
            if request is not None:
                self.release(request)
        self.queue.clear()
        self.request = None
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(400, "protocol upgrades (websocket, h2c) are not supported: send plain HTTP/1.1")
        except httptools.HttpParserError as exc:
            self.refuse(400, f"malformed HTTP request ({exc}): send HTTP/1.1 with a JSON body")

    # deadlines: one at a time, the read deadline or the keep-alive wait; Server.sweep enforces them
    def arm(self, seconds: float, reading: bool) -> None:
        self.deadline = self.loop.time() + seconds
        self.reading = reading

    def disarm(self) -> None:
        self.deadline, self.reading = None, False

    def timed_out(self) -> None:
        self.disarm()
        if self.request is not None:  # a request began and did not finish in time: say so, then close
            self.refuse(
                408,
                f"request not received within serve.read_timeout_s ({self.limits.read_timeout_s:g} s): "
                "send the headers and the body at once",
            )
        else:  # nothing came (a new connection, or between two requests): close quietly
            self.closing = True
            self.transport.close()

    # parser callbacks
    def on_message_begin(self) -> None:
        if self.closing:  # refused or timed out: what follows in the same read is dropped
            return
        self.request = Request()
        if not self.reading:  # a new connection's first request keeps the deadline armed at the opening
            self.arm(self.limits.read_timeout_s, reading=True)

    def on_url(self, url: bytes) -> None:
        if self.request is not None:
            self.request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.request is not None:
            self.request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self.request
        if request is None or self.closing:
            return
        request.method = self.parser.get_method().decode("ascii")
        url = httptools.parse_url(request.url)
        path = url.path.decode("ascii")
        request.path = unquote(path) if "%" in path else path
        request.query = url.query or b""
        if self.server.in_flight >= self.limits.max_in_flight:
            self.refuse(
                503,
                f"too many requests in flight: serve.max_in_flight is {self.limits.max_in_flight}; "
                "retry later, or raise serve.max_in_flight / add workers",
            )
            return
        self.server.in_flight += 1
        request.counted = True
        headers = dict(request.headers)
        declared = headers.get(b"content-length", b"")
        limit = self.limits.max_body_bytes
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
            self.refuse(413, str(too_large(int(declared), limit)))
        elif headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is None or self.closing:
            return
        request.size += len(body)
        limit = self.limits.max_body_bytes
        if request.size <= limit:
            request.chunks.append(body)
        elif request.size > DRAIN_FACTOR * limit:  # read on and dropped so far; now cut it off
            self.refuse(413, str(too_large(request.size, limit)))
        else:
            request.chunks.clear()

    def on_message_complete(self) -> None:
        request = self.request
        if request is None or self.closing:
            return
        self.request = None
        self.disarm()
        request.keep_alive = self.parser.should_keep_alive()
        if request.size > self.limits.max_body_bytes:
            declared = dict(request.headers).get(b"content-length", b"")
            size = int(declared) if declared.isdigit() else request.size
            request.refused = (413, str(too_large(size, self.limits.max_body_bytes)))
        self.queue.append(request)
        self.next()

    # answering
    def next(self) -> None:
        """Answer the queued requests in order: lean ones inline, the rest in a task that holds the line."""
        while self.queue and self.task is None and not self.transport.is_closing():
            request = self.queue.popleft()
            lean = request.path in self.service.lean
            if request.refused is not None:
                self.respond(request, request.refused[0], error_body(request.refused[1]))
            elif lean and self.service.inline(request.path, request.body):
                self.respond(request, *self.service.answer(request.method, request.path, request.body))
            else:
                self.transport.pause_reading()
                self.task = self.loop.create_task(self.answer_later(request, lean))

    async def answer_later(self, request: Request, lean: bool) -> None:
        try:
            if lean:
                answer = self.service.answer, request.method, request.path, request.body
                self.respond(request, *await asyncio.to_thread(*answer))
            else:
                await self.control(request)
        except Exception as exc:  # noqa: BLE001 (a bug in a handler: answer 500, keep the server up)
            logger.exception("%s %s failed", request.method, request.path)
            self.respond(request, 500, error_body(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self.task = None
            if not self.transport.is_closing():
                self.transport.resume_reading()
                self.next()

    def respond(
        self, request: Request, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.release(request)
        if self.transport.is_closing():
            return
        close = self.closing or not request.keep_alive
        self.transport.write(head(status, len(body), close, headers) + body)
        if close:
            self.transport.close()
        elif not self.queue and self.request is None:
            self.arm(self.limits.keep_alive_s, reading=False)

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` now, whatever was read, and close the connection."""
        self.closing = True
        self.disarm()
        if self.request is not None:
            self.release(self.request)
        if not self.transport.is_closing():
            body = error_body(message)
            self.transport.write(head(status, len(body), close=True) + body)
            self.transport.close()

    def release(self, request: Request) -> None:
        if request.counted:
            request.counted = False
            self.server.in_flight -= 1

    async def control(self, request: Request) -> None:
        """One request to the FastAPI control app (a whole body in, a whole response out)."""
        scope = self.scope(request)
        reply: dict[str, Any] = {"status": 500, "headers": [], "body": []}
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.shield(self.lost)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                reply["status"], reply["headers"] = message["status"], message.get("headers", [])
            elif message["type"] == "http.response.body":
                reply["body"].append(message.get("body", b""))

        await self.service.control(scope, receive, send)
        headers = [(k.lower(), v) for k, v in reply["headers"] if k.lower() not in SKIP_HEADERS]
        self.respond(request, reply["status"], b"".join(reply["body"]), headers)

    def scope(self, request: Request) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(),
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.url.split(b"?", 1)[0],
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": self.transport.get_extra_info("peername"),
            "server": self.transport.get_extra_info("sockname"),
        }


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; ``reuse_port`` lets several workers bind the same port (the kernel spreads the
    connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}): pick another --port"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve_socket(service: Service, sock: socket.socket, grace_s: float = 5.0) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT; the alias poller runs meanwhile. On a signal: stop accepting,
    close idle connections, give requests being answered ``grace_s`` to finish, then write the prediction log's
    queued lines (:meth:`Service.running` closes after the last answer)."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = Server(service, Limits.of(service.params))
    listener = await loop.create_server(server.protocol, sock=sock)
    sweeper = asyncio.create_task(server.sweep())
    host, port = sock.getsockname()[:2]
    async with service.running():
        logger.info("serving on http://%s:%d", host, port)
        await stop.wait()
        sweeper.cancel()
        listener.close()
        server.close_idle()
        deadline = loop.time() + grace_s
        while server.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
            server.close_idle()
