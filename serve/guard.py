"""The request guard: the outermost checks every request passes, and the access log.

It wraps the whole application (`app.py`), so nothing below it sees a method other than GET/HEAD
or a path that is not plain; the catalog documents (most of the requests) are answered right
here from memory by the `fast` hook, without routing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .bodies import StreamAborted
from .http import NO_STORE

access_log = logging.getLogger("serve.access")

# Request line + headers. The server bounds heads that arrive in pieces (`server.py`); a head that
# arrives whole is measured here.
MAX_REQUEST_HEAD = 16 * 1024
ALLOWED_METHODS = ("GET", "HEAD")

_SAFE_PATH = re.compile(r"^(?:/[A-Za-z0-9._~+:-]+)*/?$")
_ENCODED_SEPARATORS = re.compile(rb"%(?:2f|5c|00|25)", re.IGNORECASE)

# (status, raw headers, body) of a response answered without the framework
FastAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


def text_response(status: int, body: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """A short plain-text answer for people (errors say what happened and what to do); never cached."""
    headers = {"Cache-Control": NO_STORE, **(headers or {})}
    return PlainTextResponse(body if body.endswith("\n") else body + "\n", status_code=status, headers=headers)


class RequestGuard:
    """Outermost checks and the access log.

    * request heads over 16 KiB → 431;
    * methods other than GET/HEAD → 405 with `Allow`;
    * paths with encoded separators (`%2f`, `%5c`, `%00`, `%25`), backslashes, NUL, control or
      non-ASCII characters, empty segments (`//`) or dot segments (`.`, `..`) → 400;
    * one log line per request on `serve.access`: client, method, path, status, bytes, duration,
      and `ABORTED` when the body was cut off on purpose or by an error, `INCOMPLETE` when the
      client left before the end.
    """

    def __init__(self, app: ASGIApp, fast: Callable[[Scope], FastAnswer | None] | None = None) -> None:
        self.app = app
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 0, "bytes": 0, "length": None}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-length" and value.isdigit():
                        state["length"] = int(value)
            elif message["type"] == "http.response.body" and scope["method"] != "HEAD":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        outcome = ""
        try:
            rejection = self._reject(scope)
            answer = self.fast(scope) if rejection is None and self.fast else None
            if rejection is not None:
                await rejection(scope, receive, logged_send)
            elif answer is not None:
                status, headers, body = answer
                await logged_send({"type": "http.response.start", "status": status, "headers": headers})
                await logged_send({"type": "http.response.body", "body": body})
            else:
                await self.app(scope, receive, logged_send)
        except BaseException as exc:
            outcome = " ABORTED" if state["status"] else " FAILED"
            if not isinstance(exc, StreamAborted):
                outcome += f" ({type(exc).__name__})"
            if not state["status"]:
                state["status"] = 500
            raise
        finally:
            short = state["length"] is not None and state["bytes"] < state["length"]
            if not outcome and short and scope["method"] != "HEAD":
                outcome = " INCOMPLETE (client went away)"
            self._log(scope, state, started, outcome)

    @staticmethod
    def _reject(scope: Scope) -> Response | None:
        method = scope["method"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
        if head > MAX_REQUEST_HEAD:
            return text_response(431, f"request headers too large: at most {MAX_REQUEST_HEAD} bytes are accepted")
        if method not in ALLOWED_METHODS:
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
        return None

    @staticmethod
    def _log(scope: Scope, state: dict, started: float, outcome: str) -> None:
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
        path = raw.decode("ascii", "backslashreplace")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("ascii", "backslashreplace")
        agent = "-"
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                agent = value.decode("latin-1").replace('"', "'")[:200]
                break
        elapsed = (time.perf_counter() - started) * 1000
        access_log.info(
            '%s %s %s %d %dB %.1fms%s "%s"',
            who, scope["method"], path[:512], state["status"], state["bytes"], elapsed, outcome, agent,
        )  # fmt: skip
