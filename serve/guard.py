"""The request guard: the outermost checks every request passes, and the access log.

`RequestGuard` wraps the whole application (`app.py`), so nothing below it sees a method other
than GET/HEAD (or POST to the paths the app allows it on: `/requests` with self-service on), a
path that is not plain, or an HTTP/1.1 request without exactly one valid `Host`.
The server (`connection.py`) answers the catalog documents below the framework; it runs the same
`host_problem` check first, and writes the access log with `AccessLog` for every response it sends,
including its own 400s (unparseable requests), 408s, 431s and 503s (limits), with the bytes that
actually left for the client.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import BinaryIO

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .http import NO_STORE

access_log = logging.getLogger("serve.access")

# Request line + headers; the server answers 431 beyond this, however the head arrives.
MAX_REQUEST_HEAD = 16 * 1024
ALLOWED_METHODS = ("GET", "HEAD")

_SAFE_PATH = re.compile(r"^(?:/[A-Za-z0-9._~+:-]+)*/?$")
_ENCODED_SEPARATORS = re.compile(rb"%(?:2f|5c|00|25)", re.IGNORECASE)
HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")


def text_response(status: int, body: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """A short plain-text answer for people (errors say what happened and what to do); never cached."""
    headers = {"Cache-Control": NO_STORE, **(headers or {})}
    return PlainTextResponse(body if body.endswith("\n") else body + "\n", status_code=status, headers=headers)


def host_problem(http_version: str, hosts: list[bytes]) -> str | None:
    """RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; any Host must be a host[:port]."""
    if len(hosts) > 1:
        return "more than one Host header"
    if not hosts:
        return "no Host header (HTTP/1.1 requires one)" if http_version == "1.1" else None
    if not HOST.match(hosts[0].decode("latin-1")):
        return "the Host header is not a host name or address (with an optional port)"
    return None


def request_problem(scope: Scope, post_paths: frozenset[str] = frozenset()) -> Response | None:
    """What is wrong with this request before any route sees it (None: nothing)."""
    method = scope["method"]
    if method == "POST" and scope["path"] in post_paths:
        pass
    elif method not in ALLOWED_METHODS:
        return text_response(
            405,
            f"method {method} is not allowed here: this server only answers GET and HEAD",
            {"Allow": ", ".join(ALLOWED_METHODS)},
        )
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    path = scope["path"]
    dots = any(segment in (".", "..") for segment in path.split("/"))
    if _ENCODED_SEPARATORS.search(raw) or not _SAFE_PATH.match(path) or dots:
        return text_response(400, "bad request path: only plain paths of the catalog are served here")
    problem = host_problem(scope.get("http_version", "1.1"), [v for k, v in scope.get("headers", ()) if k == b"host"])
    if problem is not None:
        return text_response(400, f"bad request: {problem}")
    return None


class RequestGuard:
    """Outermost checks (ASGI middleware).

    * methods other than GET/HEAD → 405 with `Allow` (POST only to `post_paths`);
    * paths with encoded separators (`%2f`, `%5c`, `%00`, `%25`), backslashes, NUL, control or
      non-ASCII characters, empty segments (`//`) or dot segments (`.`, `..`) → 400;
    * HTTP/1.1 without `Host`, any request with two, or a `Host` that is not host[:port] → 400.
    """

    def __init__(self, app: ASGIApp, post_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.post_paths = post_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rejection = request_problem(scope, self.post_paths) if scope["type"] == "http" else None
        if rejection is not None:
            await rejection(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class AccessLog:
    """One line per response, plain or JSON (`TALOS_SERVE_ACCESS_LOG`).

    Plain: `client method target status bytesB msms[ outcome] "user agent"`. `bytes` counts body
    bytes handed to the kernel for the client, not bytes merely queued in the server; `outcome`
    is `ABORTED (...)` when the server cut the body off, `INCOMPLETE (...)` when the client left
    before the end, `REJECTED (...)` for the server's own refusals.

    Lines go to the `serve.access` logger, or, when `stream` is given (the command), straight to
    that stream in the same format, buffered and written by `flush()` (the server calls it every
    quarter second): a logging record per request would cost as much as answering the request.
    """

    def __init__(self, form: str = "plain", stream: BinaryIO | None = None) -> None:
        self.json = form == "json"
        self.enabled = form != "off"
        self.stream = stream
        self.pending: list[bytes] = []
        self._second = -1
        self._stamp = b""

    def _prefix(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)).encode()
        return b"%s,%03d INFO serve.access: " % (self._stamp, int(now * 1000) % 1000)

    def write(
        self,
        client: str,
        method: str,
        target: bytes,
        status: int,
        delivered: int,
        seconds: float,
        outcome: str = "",
        agent: bytes = b"-",
    ) -> None:
        """`target` and `agent` as the client sent them (bytes: they are written without decoding)."""
        if not self.enabled:
            return
        if self.stream is not None and not self.json:
            now = time.time()
            self.pending.append(
                b'%s%s %s %s %d %dB %.1fms%s "%s"\n' % (
                    self._prefix(now), client.encode(), method.encode(), target[:512], status, delivered,
                    seconds * 1000, b" " + outcome.encode() if outcome else b"", agent.replace(b'"', b"'")[:200],
                )
            )  # fmt: skip
            if len(self.pending) >= 512:
                self.flush()
            return
        if self.stream is None and not access_log.isEnabledFor(logging.INFO):
            return
        text_target = target.decode("ascii", "backslashreplace")
        text_agent = agent.decode("latin-1")
        if self.json:
            entry = {
                "time": round(time.time(), 3),
                "client": client,
                "method": method,
                "target": text_target[:512],
                "status": status,
                "bytes": delivered,
                "ms": round(seconds * 1000, 1),
                "outcome": outcome,
                "agent": text_agent,
            }
            line = json.dumps(entry, separators=(",", ":"))
        else:
            line = '%s %s %s %d %dB %.1fms%s "%s"' % (  # noqa: UP031
                client, method, text_target[:512], status, delivered, seconds * 1000,
                " " + outcome if outcome else "", text_agent.replace('"', "'")[:200],
            )  # fmt: skip
        if self.stream is None:
            access_log.info(line)
        else:
            self.pending.append(line.encode() + b"\n")

    def flush(self) -> None:
        if self.pending and self.stream is not None:
            lines, self.pending = self.pending, []
            self.stream.write(b"".join(lines))
            self.stream.flush()
