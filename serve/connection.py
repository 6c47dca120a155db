"""One HTTP/1.1 client connection: parsing, timeouts, limits, flow control and the ASGI bridge.

A `Connection` is an asyncio protocol. llhttp (through `httptools`, the parser uvicorn uses too)
parses request heads; the connection enforces what a server on the open internet needs:

* a request-head timeout from the moment the connection is accepted (TLS handshake included)
  and for every later request head from its first byte; a keep-alive idle timeout in between;
* a cap on the request head (`MAX_REQUEST_HEAD`, 431 however the head arrives) and on a request
  body (`Limits.max_body`, 413 before it is read when its length says so), which must arrive
  within the head timeout too; a body is read whole before the request is answered;
* backpressure: a response body is read from its source only while the client keeps up (the
  transport's write buffer is bounded by `Limits.write_buffer`), and a client that stops reading
  for `Limits.send_timeout` is disconnected;
* admission by the `Tracker`: a per-client-address cap and a global cap that shed the oldest idle
  or incomplete connection (one without a request being answered) instead of refusing a newcomer.

Requests are answered one at a time per connection (pipelined requests wait their turn). The
catalog documents are answered right here through the site's `fast_answer` hook; everything else
goes to the ASGI application. Every response, the server's own refusals included, is counted in
the metrics and written to the access log with the body bytes the kernel accepted for the client.
"""

from __future__ import annotations

import asyncio
import email.utils
import fcntl
import http
import logging
import math
import os
import socket
import struct
import termios
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

from .guard import MAX_REQUEST_HEAD, AccessLog
from .metrics import Metrics

log = logging.getLogger("serve.connections")

IDLE, HEAD, BODY, BUSY = "idle", "head", "body", "busy"
NO_BODY_STATUS = frozenset({204, 304})
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
_CONDITIONS = frozenset({b"if-match", b"if-unmodified-since", b"if-modified-since"})
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


@dataclass(frozen=True)
class Limits:
    """Connection hygiene; every value is a setting (`TALOS_SERVE_*`, see `core/settings.py`)."""

    head_timeout: float = 10.0
    """Seconds for a complete request head (from accept for the first request: TLS handshake included)."""
    idle_timeout: float = 5.0
    """Seconds a keep-alive connection may wait for its next request."""
    send_timeout: float = 60.0
    """Seconds a client may leave a response unread (write buffer full) before it is disconnected."""
    max_connections: int = 1024
    """Connections per worker; beyond it the oldest idle or incomplete one is closed to admit the new one."""
    max_connections_per_client: int = 256
    """Connections per client address (0: no cap); beyond it that client's oldest idle one is closed."""
    write_buffer: int = 32 * 1024
    """Bytes queued per connection before the body source is paused."""
    graceful_seconds: float = 20.0
    """On shutdown, responses in flight get this long."""
    pipeline_depth: int = 8
    """Pipelined requests queued per connection before reading pauses."""
    max_body: int = 64 * 1024
    """Bytes of a request body (the only bodies are self-service requests); beyond it: 413."""


@dataclass(slots=True)
class Request:
    method: str
    target: bytes
    path: str
    raw_path: bytes
    query: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    received: float
    hosts: list[bytes]
    agent: bytes
    if_none_match: bytes | None
    conditional: bool
    """If-Match, If-Unmodified-Since or If-Modified-Since is present."""
    accept_encoding: bytes | None = None
    body: bytes = b""


FastAnswer = tuple[int, bytes, bytes]
"""(status, header lines `name: value\r\n` incl. content-length, body: empty for HEAD and 304)"""


class Site(Protocol):
    """What the server asks of the application besides ASGI (see `handlers.Handlers`)."""

    metrics: Metrics

    def fast_answer(
        self,
        method: bytes,
        target: bytes,
        version: str,
        hosts: list[bytes],
        if_none_match: bytes | None,
        accept_encoding: bytes | None,
    ) -> tuple[str, FastAnswer] | None:
        """(route, answer) for requests answered from memory without the framework, else None
        (only asked for requests without If-Match / If-(Un)Modified-Since and without a body)."""

    def route(self, path: str) -> str:
        """The metrics label of a path (a small fixed set, never the path itself)."""


LINGER_SECONDS = 2.0
SENDFILE_STEP = 4 * 1024 * 1024
SENDFILE_NUDGE = 32 * 1024


class StreamAbortedBySource(OSError):
    """The file being sent ended before the count the response announced."""


class ClientGone(OSError):
    """The client closed the connection while its response was being sent."""


class Tracker:
    """Every open connection of this worker, and which of them may be shed."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open: dict[Connection, None] = {}
        self.sheddable: dict[Connection, None] = {}  # idle or partial head, oldest first
        self.by_client: dict[str, dict[Connection, None]] = {}

    def admit(self, conn: Connection) -> bool:
        """Make room for `conn` by shedding, or refuse it (False) when everything is busy."""
        mine = self.by_client.get(conn.client_ip, {})
        cap = self.limits.max_connections_per_client
        if cap and len(mine) >= cap:
            victim = next((c for c in mine if c in self.sheddable), None)
            if victim is None:
                conn.refuse("client_cap", f"{cap} connections from {conn.client_ip} are all busy")
                return False
            victim.shed("client_cap", conn)
        if len(self.open) >= self.limits.max_connections:
            victim = next(iter(self.sheddable), None)
            if victim is None:
                conn.refuse("server_full", f"all {self.limits.max_connections} connections are busy")
                return False
            victim.shed("server_full", conn)
        self.open[conn] = None
        self.by_client.setdefault(conn.client_ip, {})[conn] = None
        self.sheddable[conn] = None
        return True

    def sweep(self) -> None:
        """Fire the deadlines that have passed (the server calls this a few times a second)."""
        now = time.monotonic()
        for conn in list(self.open):
            conn.check_deadlines(now)

    def busy(self, conn: Connection) -> None:
        self.sheddable.pop(conn, None)

    def idle(self, conn: Connection) -> None:
        if conn in self.open:
            self.sheddable.pop(conn, None)
            self.sheddable[conn] = None  # to the end: the most recently idle is shed last

    def remove(self, conn: Connection) -> None:
        if self.open.pop(conn, 0) is None:
            self.sheddable.pop(conn, None)
            mine = self.by_client.get(conn.client_ip)
            if mine is not None:
                mine.pop(conn, None)
                if not mine:
                    del self.by_client[conn.client_ip]


class Shared:
    """What every connection of one listening server shares."""

    def __init__(
        self,
        app: Any,
        site: Site,
        limits: Limits,
        access: AccessLog,
        *,
        tls: bool,
    ) -> None:
        self.app = app
        self.site = site
        self.metrics = site.metrics
        self.limits = limits
        self.access = access
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.tracker = Tracker(limits, site.metrics)
        # ASGI's zero-copy send extension: plain HTTP only (TLS encrypts in user space anyway)
        self.zerocopy: dict[str, dict[str, Any]] = {} if tls else {"http.response.zerocopysend": {}}
        self.stopping = False
        self.lifespan_state: dict[str, Any] = {}
        self._date = b""
        self._date_second = -1

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date


_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in _REASONS.items()}


def _head(status: int, headers: list[tuple[bytes, bytes]] | bytes, date: bytes, close: bool) -> bytes:
    """The response head; `headers` as pairs or as pre-joined lines (the fast path's)."""
    if not isinstance(headers, bytes):
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    return status_line + date + headers + (b"connection: close\r\n\r\n" if close else b"\r\n")


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.limits = shared.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self.client_ip = "-"
        self.state = IDLE
        self.fresh = True
        self.closed = False
        self.admitted = False
        self.deadline = math.inf  # when `on_deadline` runs (checked by `Tracker.sweep`)
        self.on_deadline: Callable[[], None] | None = None
        self.send_deadline = math.inf
        self.head_bytes = 0
        self.head_size = 0
        self.has_body = False
        self.lingering = False
        self.incoming: Request | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.queue: deque[Request] = deque()
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.keep_alive = True
        self.unsent_at_loss = 0
        self.sock: socket.socket | None = None

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection (over TLS: after the handshake, which the loop bounds by `head_timeout`)."""
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client_ip = str(peer[0])
            self.client = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        if self.shared.stopping:
            transport.close()
            return
        if not self.shared.tracker.admit(self):
            return
        self.admitted = True
        self.shared.metrics.connections.inc()
        transport.set_write_buffer_limits(high=self.limits.write_buffer)  # type: ignore[attr-defined]
        self.arm(self.limits.head_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        try:
            self.unsent_at_loss = self.buffered()
        except (AttributeError, RuntimeError):
            self.unsent_at_loss = 0
        self.closed = True
        self.disarm()
        self.send_deadline = math.inf
        if self.admitted:
            self.shared.tracker.remove(self)
            self.shared.metrics.connections.dec()
        if not self.lost.done():
            self.lost.set_result(None)
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(ClientGone("the client closed the connection"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.connection_lost(None)

    # ------------------------------------------------------------------ timers
    def arm(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run `callback` in `seconds` (to the sweep's second) unless disarmed or re-armed first;
        a deadline instead of a loop timer per request keeps keep-alive requests cheap."""
        self.deadline = time.monotonic() + seconds
        self.on_deadline = callback

    def disarm(self) -> None:
        self.deadline = math.inf
        self.on_deadline = None

    def check_deadlines(self, now: float) -> None:
        if now >= self.deadline and self.on_deadline is not None:
            callback, self.on_deadline, self.deadline = self.on_deadline, None, math.inf
            callback()
        elif now >= self.send_deadline and not self.closed:
            self.send_deadline = math.inf
            self.send_timed_out()

    def head_timed_out(self) -> None:
        self.shared.metrics.reject("head_timeout")
        if self.state == HEAD:
            self.reply_and_close(408, "head_timeout", "the request head did not arrive in time")
            return
        if self.state == BODY:
            self.reply_and_close(408, "head_timeout", "the request body did not arrive in time")
            return
        log.info("closed %s: no request within %g s", self.client, self.limits.head_timeout)
        self.abort()

    def idle_timed_out(self) -> None:
        self.close()

    # ------------------------------------------------------------------ limits
    def refuse(self, reason: str, why: str) -> None:
        """Not admitted: 503 and closed."""
        self.shared.metrics.reject(reason)
        log.warning("refused %s: %s", self.client, why)
        self.reply_and_close(503, reason, "the server is at its connection limit; try again shortly")

    def shed(self, reason: str, newcomer: Connection) -> None:
        """Closed to make room for `newcomer` (this one was idle or had no complete request)."""
        self.shared.metrics.reject("shed")
        log.info("shed %s (%s, %s) to admit %s", self.client, self.state, reason, newcomer.client)
        if self.state == IDLE and not self.fresh:
            self.close()  # a keep-alive connection between requests: a clean close the client notices
            self.connection_lost(None)
        else:
            self.abort()

    def reply_and_close(self, status: int, reason: str, text: str, linger: bool = False) -> None:
        """Answer and close. `linger`: the client may still be sending (a body refused early), so
        what it sends is read and dropped for a moment first; closing with unread bytes would reset
        the connection and could destroy the answer before the client reads it."""
        body = text.encode() + b"\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 503:
            headers.append((b"retry-after", b"5"))
        self.disarm()
        if self.transport is not None and not self.closed:
            self.transport.write(_head(status, headers, self.shared.date(), close=True) + body)
        self.shared.access.write(self.client, "-", b"-", status, len(body), 0.0, f"REJECTED ({reason})")
        self.shared.metrics.response("rejected", status, len(body), 0.0)
        if linger and self.transport is not None and not self.closed:
            self.lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.arm(LINGER_SECONDS, self.close)
            return
        self.close()

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        if self.closed or self.lingering:
            return
        if self.state in (IDLE, HEAD):
            if self.state == IDLE:
                self.state = HEAD
                if not self.fresh:
                    self.arm(self.limits.head_timeout, self.head_timed_out)
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.keep_alive = False
        except httptools.HttpParserError as exc:
            self.shared.metrics.reject("parse_error")
            message = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
            self.reply_and_close(400, "parse_error", f"bad request: {message}")
            return
        if self.state == HEAD and self.head_bytes > MAX_REQUEST_HEAD and not self.closed:
            self.shared.metrics.reject("head_too_large")
            self.reply_and_close(431, "head_too_large", f"request head over {MAX_REQUEST_HEAD} bytes")

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.has_body = False
        self.hosts: list[bytes] = []
        self.agent = b"-"
        self.if_none_match: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.conditional = False
        self.content_length: int | None = None
        self.expects_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if name == b"host":
            self.hosts.append(value)
        elif name == b"user-agent":
            self.agent = value
        elif name == b"if-none-match":
            self.if_none_match = value
        elif name == b"accept-encoding":
            self.accept_encoding = value
        elif name == b"expect":
            self.expects_continue = value.strip().lower() == b"100-continue"
        elif name in _CONDITIONS:
            self.conditional = True
        elif name in _BODY_HEADERS and (name == b"transfer-encoding" or value.strip() not in (b"", b"0")):
            self.has_body = True
            if name == b"content-length" and value.strip().isdigit():
                self.content_length = int(value.strip())

    def on_headers_complete(self) -> None:
        self.head_bytes = 0
        if self.head_size > MAX_REQUEST_HEAD:
            self.shared.metrics.reject("head_too_large")
            self.reply_and_close(431, "head_too_large", f"request head over {MAX_REQUEST_HEAD} bytes")
            return
        if self.state != BUSY and not self.queue and not self.conditional and not self.has_body:
            method = self.parser.get_method()
            fast = self.shared.site.fast_answer(
                method, self.url, self.parser.get_http_version(), self.hosts, self.if_none_match, self.accept_encoding
            )
            if fast is not None:
                self.answer_fast(method, fast)
                return
        request = self.request_from_head()
        if self.has_body:
            self.receive_body(request)
            return
        self.dispatch(request)

    # ------------------------------------------------------------------ request bodies
    def receive_body(self, request: Request) -> None:
        """Read the body of `request` before it is answered (bounded in size and in time)."""
        if self.content_length is not None and self.content_length > self.limits.max_body:
            self.body_too_large()
            return
        self.incoming = request
        if self.state != BUSY and not self.queue:
            self.state = BODY
            self.arm(self.limits.head_timeout, self.head_timed_out)
            if self.expects_continue and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_too_large(self) -> None:
        self.incoming = None
        self.shared.metrics.reject("body_too_large")
        self.reply_and_close(413, "body_too_large", f"request body over {self.limits.max_body} bytes", linger=True)

    def on_body(self, body: bytes) -> None:
        request = self.incoming
        if request is None or self.closed:
            return
        if len(request.body) + len(body) > self.limits.max_body:
            self.body_too_large()
            return
        request.body += body

    def on_message_complete(self) -> None:
        request, self.incoming = self.incoming, None
        if request is not None and not self.closed:
            if self.state == BODY:
                self.state = HEAD
            self.dispatch(request)

    def dispatch(self, request: Request) -> None:
        """Answer `request` now, or after the requests before it on this connection."""
        if self.state == BUSY or self.queue:
            self.queue.append(request)
            if len(self.queue) >= self.limits.pipeline_depth:
                self.pause_reading()
        else:
            self.start(request)

    def request_from_head(self) -> Request:
        """The request whose head the parser has just completed."""
        target = self.url
        if target[:1] == b"/" and b"?" not in target and b"#" not in target:
            raw_path, query = target, b""  # the usual origin-form target, without parsing it again
        else:
            try:
                parsed = httptools.parse_url(target)
                raw_path, query = parsed.path or b"/", parsed.query or b""
            except httptools.HttpParserInvalidURLError:
                raw_path, query = b"", b""
        path = raw_path.decode("latin-1")
        return Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            target=target,
            path=urllib.parse.unquote(path) if "%" in path else path,
            raw_path=raw_path,
            query=query,
            version=self.parser.get_http_version(),
            headers=self.headers,
            keep_alive=self.parser.should_keep_alive(),
            hosts=self.hosts,
            agent=self.agent,
            if_none_match=self.if_none_match,
            conditional=self.conditional,
            accept_encoding=self.accept_encoding,
            received=time.perf_counter(),
        )

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ answering
    def start(self, request: Request) -> None:
        if self.closed:
            return
        self.state = BUSY
        self.fresh = False
        self.disarm()
        self.shared.tracker.busy(self)
        if not request.raw_path:
            self.reply_and_close(400, "parse_error", "bad request: the request target is not a path")
            return
        fast = None
        if not request.conditional and not request.query:
            fast = self.shared.site.fast_answer(
                request.method.encode(),
                request.raw_path,
                request.version,
                request.hosts,
                request.if_none_match,
                request.accept_encoding,
            )
        if fast is not None:
            route, (status, headers, body) = fast
            keep = request.keep_alive and self.keep_alive and not self.shared.stopping
            self.write(_head(status, headers, self.shared.date(), close=not keep) + body)
            self.finished(request, route, status, len(body), "", keep, timed=False)
        else:
            self.task = self.loop.create_task(Exchange(self, request).run())

    def answer_fast(self, method: bytes, fast: tuple[str, FastAnswer]) -> None:
        """A catalog document from memory, written and logged within this callback (the common case)."""
        route, (status, headers, body) = fast
        keep = self.parser.should_keep_alive() and self.keep_alive and not self.shared.stopping
        self.fresh = False
        self.write(_head(status, headers, self.shared.date(), close=not keep) + body)
        if self.transport is not None and self.transport.get_write_buffer_size():
            request = self.request_from_head()  # a slow client: log once the bytes have left
            self.state = BUSY
            self.disarm()
            self.shared.tracker.busy(self)
            self.finished(request, route, status, len(body), "", keep, timed=False)
            return
        self.shared.metrics.response(route, status, len(body), None)
        self.shared.access.write(self.client, method.decode("ascii", "replace"), self.url, status, len(body), 0.0,
                                 "", self.agent)  # fmt: skip
        if not keep:
            self.close()
            return
        self.state = IDLE
        self.shared.tracker.idle(self)
        self.arm(self.limits.idle_timeout, self.idle_timed_out)

    def finished(
        self, request: Request, route: str, status: int, body: int, outcome: str, keep: bool, timed: bool = True
    ) -> None:
        """The response is written: log it once its bytes have left, then the next request.
        `timed=False`: answered from memory within this call (not observed in the duration histogram)."""
        if self.closed:
            delivered = body - self.lost_bytes(body)
        else:
            queued = self.transport.get_write_buffer_size() if self.transport is not None else 0
            if queued and body:
                self.loop.call_later(0.05, self.finished, request, route, status, body, outcome, keep, timed)
                return
            delivered = body
        if not outcome and delivered < body:
            outcome = "INCOMPLETE (client went away)"
        seconds = time.perf_counter() - request.received
        self.shared.metrics.response(route, status, delivered, seconds if timed else None)
        self.shared.access.write(
            self.client, request.method, request.target, status, delivered, seconds, outcome, request.agent
        )
        if not keep or self.closed:
            self.close()
            return
        self.state = IDLE
        if self.queue:
            self.start(self.queue.popleft())
            self.resume_reading()
            return
        self.shared.tracker.idle(self)
        self.arm(self.limits.idle_timeout, self.idle_timed_out)

    def lost_bytes(self, body: int) -> int:
        """Bytes of a response that were still queued when the connection ended (best known)."""
        return min(body, self.unsent_at_loss)

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel (TLS: those not yet encrypted and sent)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def write_room(self) -> int:
        """Bytes the kernel would take on this socket right now (Linux: half of SO_SNDBUF is data,
        minus what its send queue holds), minus what this connection still queues itself."""
        if self.transport is None or self.closed:
            return 0
        if self.sock is None:
            self.sock = self.transport.get_extra_info("socket")
            if self.sock is None:
                return 0
        try:
            capacity = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
            pending = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return 0
        return capacity - pending - self.buffered()

    # ------------------------------------------------------------------ writing, with backpressure
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.send_deadline = time.monotonic() + self.limits.send_timeout

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.send_deadline = math.inf
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        self.drain_waiter = None

    def send_timed_out(self) -> None:
        self.shared.metrics.reject("send_timeout")
        log.info("closed %s: it read nothing for %g s", self.client, self.limits.send_timeout)
        self.abort()

    async def drained(self) -> None:
        """Until the transport has handed everything it holds to the kernel."""
        if self.transport is None or not self.transport.get_write_buffer_size():
            return
        self.transport.set_write_buffer_limits(high=0, low=0)  # type: ignore[attr-defined]
        try:
            await self.drain()
        finally:
            if not self.closed:
                self.transport.set_write_buffer_limits(high=self.limits.write_buffer)  # type: ignore[attr-defined]

    async def drain(self) -> None:
        if self.closed:
            raise ClientGone("the client closed the connection")
        if self.writing_paused:
            if self.drain_waiter is None:
                self.drain_waiter = self.loop.create_future()
            await self.drain_waiter


class Exchange:
    """One request answered by the ASGI application."""

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False
        self.complete = False
        self.chunked = False
        self.keep = request.keep_alive and conn.keep_alive
        self.body = 0
        self.asked = False
        self.head_only = request.method == "HEAD"

    def scope(self) -> dict[str, Any]:
        conn, request = self.conn, self.request
        sock = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
        peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.version,
            "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "scheme": conn.shared.scheme,
            "method": request.method,
            "root_path": "",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query,
            "headers": request.headers,
            "state": dict(conn.shared.lifespan_state),
            "extensions": {"serve.write_room": conn.write_room, **conn.shared.zerocopy},
        }

    async def receive(self) -> dict[str, Any]:
        if not self.asked:
            self.asked = True
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        await asyncio.shield(self.conn.lost)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.closed:
            raise ClientGone("the client closed the connection")
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
            if self.head_only or any(name.lower() == b"content-length" for name, _ in self.headers):
                self.start_response(more=False)  # the head goes out now, before the first body byte
            return
        if kind == "http.response.zerocopysend" and not self.complete:
            await self.send_file(message)
            return
        if kind != "http.response.body" or self.complete:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not self.started:
            self.start_response(more)
        if body and not self.head_only and self.status not in NO_BODY_STATUS:
            if self.chunked:
                conn.write(b"%x\r\n" % len(body) + body + b"\r\n")
            else:
                conn.write(body)
            self.body += len(body)
        if not more:
            if self.chunked:
                conn.write(b"0\r\n\r\n")
            self.complete = True
        elif conn.writing_paused:
            await conn.drain()

    async def send_file(self, message: dict[str, Any]) -> None:
        """`http.response.zerocopysend`: `count` bytes of the open file `file` (a descriptor) from
        `offset`, by `sendfile(2)` straight to the socket whenever the connection holds nothing
        queued; when the socket is full, one small chunk goes through the transport so the loop
        waits for the client, and sending resumes once that has left."""
        conn = self.conn
        if not self.started:
            self.start_response(more=bool(message.get("count")))
        fd, offset, count = message["file"], message.get("offset", 0), message.get("count")
        more = message.get("more_body", False)
        if count is None:
            count = os.fstat(fd).st_size - offset
        if self.head_only or self.status in NO_BODY_STATUS:
            count = 0
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        while count > 0:
            if conn.closed or sock is None:
                raise ClientGone("the client closed the connection")
            sent = 0
            if not conn.buffered():
                try:
                    sent = os.sendfile(sock.fileno(), fd, offset, min(count, SENDFILE_STEP))
                except BlockingIOError:
                    sent = 0
            if sent:
                offset, count, self.body = offset + sent, count - sent, self.body + sent
                await asyncio.sleep(0)  # let the other connections run between steps
                continue
            chunk = os.pread(fd, min(count, SENDFILE_NUDGE), offset)
            if not chunk:
                raise StreamAbortedBySource(f"the file ended {count} bytes early")
            conn.write(chunk)
            offset, count, self.body = offset + len(chunk), count - len(chunk), self.body + len(chunk)
            await conn.drained()
        if not more:
            self.complete = True

    def start_response(self, more: bool) -> None:
        self.started = True
        has_length = any(name.lower() == b"content-length" for name, _ in self.headers)
        if not has_length and more and not self.head_only and self.status not in NO_BODY_STATUS:
            if self.request.version == "1.1":
                self.chunked = True
                self.headers.append((b"transfer-encoding", b"chunked"))
            else:
                self.keep = False
        close = not self.keep or self.conn.shared.stopping
        self.keep = not close
        self.conn.write(_head(self.status, self.headers, self.conn.shared.date(), close))

    async def run(self) -> None:
        conn = self.conn
        outcome = ""
        try:
            await conn.shared.app(self.scope(), self.receive, self.send)
            if not self.complete:
                outcome = "ABORTED (the application did not finish the response)"
        except ClientGone:
            outcome = "INCOMPLETE (client went away)"
        except Exception as exc:
            if not self.started:
                self.failed(exc)
                return
            outcome = f"ABORTED ({type(exc).__name__})"
            if type(exc).__name__ != "StreamAborted":
                log.error("%s %s: the response failed after it started: %s: %s",
                          self.request.method, self.request.path, type(exc).__name__, exc)  # fmt: skip
        route = conn.shared.site.route(self.request.path)
        keep = self.keep and self.complete and not outcome
        conn.finished(self.request, route, self.status or 500, self.body, outcome, keep)
        if outcome:
            conn.close()

    def failed(self, exc: Exception) -> None:
        """The application raised before answering: 500, one log line, counted."""
        conn = self.conn
        conn.shared.metrics.bump("unexpected")
        log.error("%s %s from %s failed: %s: %s", self.request.method, self.request.path, conn.client,
                  type(exc).__name__, exc)  # fmt: skip
        body = b"the server could not answer this request; the operator has been told\n"
        self.status = 500
        self.headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        self.start_response(False)
        if not self.head_only:
            conn.write(body)
            self.body = len(body)
        self.complete = True
        conn.finished(self.request, conn.shared.site.route(self.request.path), 500, self.body, "", self.keep)
