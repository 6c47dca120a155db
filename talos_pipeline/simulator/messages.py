"""The plain values route handlers take and return.

`server.py` turns each HTTP request into a `Request` and writes back the `Response` a handler
(`github.py`, `factory.py`) returns, so handlers never see sockets and faults are applied in one
place.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

__all__ = ["JSON_TYPE", "TEXT", "Request", "RequestLog", "Response", "json_answer", "only", "text"]

TEXT = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: list[tuple[str, str]]
    headers: Message  # case-insensitive lookups
    body: bytes
    client_host: str
    base_url: str  # scheme://host:port as the client addressed the server

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = TEXT
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # sent with sendfile instead of `body`
    size: int = 0  # length of `file`
    on_body_start: Callable[[], None] | None = None  # called once the first body byte is about to go out

    @property
    def length(self) -> int:
        return self.size if self.file is not None else len(self.body)


def text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A plain-text answer ending with a newline, as the factory writes its errors."""
    if not message.endswith("\n"):
        message += "\n"
    return Response(status, message.encode(), headers=dict(headers or {}))


def json_answer(
    status: int, value: Any, headers: dict[str, str] | None = None, content_type: str = JSON_TYPE
) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(status, body, content_type=content_type, headers=dict(headers or {}))


def only(request: Request, methods: tuple[str, ...]) -> Response | None:
    """A 405 answer unless the request uses one of ``methods``."""
    if request.method in methods:
        return None
    return text(405, "Method Not Allowed", headers={"Allow": ", ".join(methods)})


class RequestLog:
    """Every answered request: the recent ones in order, and a count per path for the whole run."""

    def __init__(self, keep: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._recent: deque[tuple[str, str, int]] = deque(maxlen=keep)
        self._per_path: Counter[str] = Counter()

    def record(self, method: str, target: str, status: int) -> None:
        with self._lock:
            self._recent.append((method, target, status))
            self._per_path[target.split("?", 1)[0]] += 1

    def recent(self) -> list[tuple[str, str, int]]:
        """``(method, path with query, status)``, oldest first."""
        with self._lock:
            return list(self._recent)

    def per_path(self) -> dict[str, int]:
        with self._lock:
            return dict(self._per_path)

    def reset(self) -> None:
        with self._lock:
            self._recent.clear()
            self._per_path.clear()
