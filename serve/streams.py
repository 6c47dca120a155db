"""Response bodies: byte ranges over store objects, composite bodies, verified and proxied streams.

Everything here is a plain (blocking) iterator of `bytes`; Starlette runs each `next()` in a
worker thread, so hashing and store reads never block the event loop, and only one chunk per
response is in memory at a time.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import requests

from talos_pipeline.core.hashing import HashThread
from talos_pipeline.core.stores import CHUNK, Store
from talos_pipeline.core.upstream import CONNECT_TIMEOUT, READ_TIMEOUT, USER_AGENT

from .catalog import UPSTREAM_PATH

log = logging.getLogger("serve")


class StreamAborted(Exception):
    """Raised inside a response body on purpose, after logging why.

    The headers are already sent, so the only honest thing left is to drop the connection before
    the last bytes: uvicorn closes it when the body iterator raises, and the client sees a body
    shorter than its Content-Length (an error, never a silently wrong file).
    """


class Metrics(dict):
    """Counters on `app.state.metrics` (a dict), safe to bump from worker threads."""

    NAMES = ("proxy_drift", "proxy_upstream_errors", "store_corrupt", "store_missing")

    def __init__(self) -> None:
        super().__init__({name: 0 for name in self.NAMES})
        self._lock = threading.Lock()

    def bump(self, name: str) -> None:
        with self._lock:
            self[name] = self.get(name, 0) + 1


# --------------------------------------------------------------------------- ranges
class Unsatisfiable(Exception):
    pass


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end exclusive), or None for the whole body.

    Multi-range and malformed headers are ignored (RFC 9110 allows answering 200 with the full
    body); a syntactically valid range that selects nothing raises `Unsatisfiable` (→ 416).
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - length), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # invalid (last < first): ignore the header
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size)


# --------------------------------------------------------------------------- composite bodies
class Part(Protocol):
    size: int

    def read(self, start: int, end: int) -> Iterator[bytes]: ...


@dataclass
class BytesPart:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        if end > start:
            yield self.data[start:end]


@dataclass
class StorePart:
    store: Store
    key: str
    size: int

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end); a failing or short read cuts the response off (`StreamAborted`)."""
        if end <= start:
            return
        received = 0
        try:
            for chunk in self.store.iter_range(self.key, start, end, CHUNK):
                received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            log.error("store: reading %s failed after %d of %d bytes (%s: %s)",
                      self.key, received, end - start, type(exc).__name__, exc)  # fmt: skip
            raise StreamAborted(f"{self.key}: store read failed") from exc
        if received != end - start:
            log.error("store: %s ended after %d of %d bytes (changed since it was published?)",
                      self.key, received, end - start)  # fmt: skip
            raise StreamAborted(f"{self.key}: short read")


@dataclass
class StreamPart:
    """Bytes that can only be read once, front to back (an upstream download)."""

    chunks: Iterator[bytes]
    size: int

    def read(self, start: int, end: int) -> Iterator[bytes]:
        if (start, end) != (0, self.size):
            raise ValueError("a proxied stream can only be read whole")
        yield from self.chunks


def concatenate(parts: list[Part], start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes [start, end) of the concatenation of `parts`."""
    total = sum(p.size for p in parts)
    end = total if end is None else end
    offset = 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(end - offset, part.size)
        if lo < hi:
            yield from part.read(lo, hi)
        offset += part.size
        if offset >= end:
            return


def close_quietly(iterator: object) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.debug("closing a body iterator failed", exc_info=True)


def verified(
    chunks: Iterable[bytes], sha256: str, size: int, on_mismatch: Callable[[int, str], None]
) -> Iterator[bytes]:
    """Pass `chunks` through, holding back the last one until sha256 and size are checked.

    On a mismatch `on_mismatch(actual_size, actual_sha256)` logs and counts it, then
    `StreamAborted` is raised *before* the held-back chunk is sent: the client never receives the
    full Content-Length, so it cannot mistake the body for a complete, valid file.
    """
    digest = HashThread(depth=2)
    seen = 0
    pending = b""
    iterator = iter(chunks)
    finished = False
    try:
        for chunk in iterator:
            if not chunk:
                continue
            seen += len(chunk)
            digest.update(chunk)
            if seen > size:
                on_mismatch(seen, "(more bytes than the catalog says)")
                raise StreamAborted(f"body longer than {size} bytes")
            if pending:
                yield pending
            pending = chunk
        actual = digest.finish()
        finished = True
        if seen != size or actual != sha256:
            on_mismatch(seen, actual)
            raise StreamAborted(f"body has {seen} bytes, sha256 {actual}; expected {size} bytes, sha256 {sha256}")
        if pending:
            yield pending
    finally:
        if not finished:
            digest.abandon()
        close_quietly(iterator)


# --------------------------------------------------------------------------- the factory, proxied
class UpstreamProblem(Exception):
    """The factory did not answer with the expected disk (before any byte was sent)."""


class FactoryProxy:
    """Streams disks from the configured Image Factory.

    The URL is always `factory_url + "/" + path`, where `path` comes from the catalog and must be
    an Image Factory qcow2 path: nothing from a request chooses the host or the path, so this is
    not an open proxy. Redirects the factory itself answers (to its CDN) are followed.
    """

    def __init__(self, factory_url: str, session: requests.Session | None = None) -> None:
        if not factory_url.startswith(("http://", "https://")):
            raise ValueError(f"factory URL {factory_url!r} is not an http(s) URL")
        self.base = factory_url.rstrip("/")
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
        self.session = session

    def url_for(self, path: str) -> str:
        if not isinstance(path, str) or not UPSTREAM_PATH.match(path):
            raise UpstreamProblem(f"refusing to proxy {path!r}: not an Image Factory qcow2 path")
        return f"{self.base}/{path}"

    def open(self, path: str, expected_size: int) -> tuple[str, requests.Response]:
        """GET the disk; raise `UpstreamProblem` unless it is a 200 (of the expected length, if given)."""
        url = self.url_for(path)
        try:
            response = self.session.get(
                url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), headers={"Accept-Encoding": "identity"}
            )
        except requests.RequestException as exc:
            raise UpstreamProblem(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            response.close()
            raise UpstreamProblem(f"{url} answered HTTP {response.status_code}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != expected_size:
            response.close()
            raise UpstreamSizeDrift(url, int(length))
        return url, response

    @staticmethod
    def chunks(
        url: str, response: requests.Response, on_error: Callable[[int, BaseException], None]
    ) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            on_error(received, exc)
            raise StreamAborted(f"{url}: failed after {received} bytes") from exc
        finally:
            response.close()


class UpstreamSizeDrift(UpstreamProblem):
    def __init__(self, url: str, size: int) -> None:
        super().__init__(f"{url} announces {size} bytes")
        self.url = url
        self.size = size
