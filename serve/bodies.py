"""Response bodies: byte ranges over store objects, composite bodies, verified streams.

Everything here is a plain (blocking) iterator of `bytes`; Starlette runs each `next()` in a
worker thread, so hashing and store reads never block the event loop, and only one chunk per
response is in memory at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from talos_pipeline.core.hashing import HashThread
from talos_pipeline.core.stores import CHUNK, Store

log = logging.getLogger("serve")


class StreamAborted(Exception):
    """Raised inside a response body on purpose, after logging why.

    The headers are already sent, so the only honest thing left is to drop the connection before
    the last bytes: uvicorn closes it when the body iterator raises, and the client sees a body
    shorter than its Content-Length (an error, never a silently wrong file).
    """


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


class BodyResponse(StreamingResponse):
    """A StreamingResponse over a blocking iterator that is always closed at the end.

    Closing runs the iterator's `finally` blocks (closing a store file or an upstream connection)
    when the client goes away mid-body, instead of whenever the garbage collector gets to it.
    """

    def __init__(self, iterator: Iterator[bytes], status_code: int, headers: dict[str, str]) -> None:
        self._source = iterator
        super().__init__(iterator, status_code=status_code, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close_quietly(self._source)
