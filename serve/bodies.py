"""Response bodies: byte ranges over store objects, composite bodies, verified streams.

Every body is an async iterator of chunks of at most `CHUNK` bytes, pulled by `BodyResponse` only
as fast as the client reads (the server pauses `send` while the connection's write buffer is
full), so a slow reader holds one chunk and a bounded write buffer, never more.

Where the bytes come from decides where the blocking I/O runs:

* a directory store: the file is opened once under the store root without following symlinks out
  of it (`open_store_file`) and read with `pread` on the event loop, as nginx reads files without
  its thread pool (page-cache reads take microseconds);
* any other store (S3): its blocking iterator runs on the `store_io` thread pool;
* the Image Factory (proxy mode): on its own pool (`upstream.py`), so a stalled upstream can never
  take the threads that the store and the catalog need.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.to_thread
from starlette.types import Receive, Scope, Send

from talos_pipeline.core.stores import DirectoryStore, Store

log = logging.getLogger("serve")

CHUNK = 128 * 1024
"""Bytes read at a time from a store or upstream that is read by threads."""
SMALL_CHUNK = 32 * 1024
LARGE_CHUNK = 256 * 1024
"""A directory-store file is read in `LARGE_CHUNK`s while the kernel can take that much at once on
the client's socket (a fast download costs few reads), else in `SMALL_CHUNK`s: a slow reader's
socket is full, so it holds one small chunk and the write buffer, never a large chunk."""
WRITE_ROOM: contextvars.ContextVar[Callable[[], int]] = contextvars.ContextVar("serve_write_room")
"""Bytes the client's socket can take right now (set by `BodyResponse` from the server's ASGI
extension `serve.write_room`; absent under other servers, then chunks stay small)."""


class StreamAborted(Exception):
    """Raised inside a response body on purpose, after logging why.

    The headers are already sent, so the only honest thing left is to drop the connection before
    the last bytes: the server closes it when the body raises, and the client sees a body shorter
    than its Content-Length (an error, never a silently wrong file).
    """


class OutsideStore(OSError):
    """A store path that resolves (through a symlink) outside the store root."""


@dataclass
class StoreFile:
    """An open regular file of a directory store (its descriptor is closed with `close`)."""

    fd: int
    size: int
    modified: float
    etag: str

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_store_file(store: DirectoryStore, key: str) -> StoreFile:
    """Open `key` for reading, refusing anything that resolves outside the store root.

    `FileNotFoundError` when it is missing, `OutsideStore` when a symlink leads out of the root,
    any other `OSError` (ENOTDIR, ELOOP, EACCES, EIO) as it is: the caller answers 500.
    """
    path = store.path_for(key)
    real = os.path.realpath(path)
    root = str(store.root)
    if not real.startswith(root + os.sep):
        raise OutsideStore(errno.EXDEV, f"{key} resolves to {real}, outside the store root {root}")
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, f"{key} is not a regular file")
    # the directory store's own ETag form: every write makes a new inode
    return StoreFile(fd, st.st_size, st.st_mtime, f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"')


class Part(Protocol):
    size: int

    def read(self, start: int, end: int) -> AsyncIterator[bytes]: ...


@dataclass
class BytesPart:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        if end > start:
            yield self.data[start:end]


@dataclass
class FilePart:
    """Bytes of an open directory-store file, read on the event loop."""

    file: StoreFile
    key: str

    @property
    def size(self) -> int:
        return self.file.size

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        offset = start
        room = WRITE_ROOM.get(None)
        try:
            while offset < end:
                size = LARGE_CHUNK if room is not None and room() >= LARGE_CHUNK else SMALL_CHUNK
                chunk = os.pread(self.file.fd, min(size, end - offset), offset)
                if not chunk:
                    log.error("store: %s ended after %d of %d bytes (changed since it was published?)",
                              self.key, offset - start, end - start)  # fmt: skip
                    raise StreamAborted(f"{self.key}: short read")
                offset += len(chunk)
                yield chunk
        except OSError as exc:
            log.error("store: reading %s failed after %d of %d bytes (%s)", self.key, offset - start, end - start, exc)
            raise StreamAborted(f"{self.key}: store read failed") from exc


@dataclass
class StorePart:
    """Bytes of an object of any store, read by its blocking iterator on the `limiter`'s threads."""

    store: Store
    key: str
    size: int
    limiter: anyio.CapacityLimiter

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        iterator = self.store.iter_range(self.key, start, end, CHUNK)
        received = 0
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, iterator, None, limiter=self.limiter)
                if chunk is None:
                    break
                received += len(chunk)
                yield chunk
        except StreamAborted:
            raise
        except Exception as exc:
            log.error("store: reading %s failed after %d of %d bytes (%s: %s)",
                      self.key, received, end - start, type(exc).__name__, exc)  # fmt: skip
            raise StreamAborted(f"{self.key}: store read failed") from exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close, limiter=self.limiter)
        if received != end - start:
            log.error("store: %s ended after %d of %d bytes (changed since it was published?)",
                      self.key, received, end - start)  # fmt: skip
            raise StreamAborted(f"{self.key}: short read")


@dataclass
class StreamPart:
    """Bytes that can only be read once, front to back (an upstream download)."""

    chunks: AsyncIterator[bytes]
    size: int

    async def read(self, start: int, end: int) -> AsyncIterator[bytes]:
        if (start, end) != (0, self.size):
            raise ValueError("a proxied stream can only be read whole")
        async for chunk in self.chunks:
            yield chunk


async def concatenate(parts: list[Part], start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    """Bytes [start, end) of the concatenation of `parts`."""
    total = sum(p.size for p in parts)
    end = total if end is None else end
    offset = 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(end - offset, part.size)
        if lo < hi:
            async for chunk in part.read(lo, hi):
                yield chunk
        offset += part.size
        if offset >= end:
            return


async def verified(
    chunks: AsyncIterator[bytes], sha256: str, size: int, on_mismatch: Callable[[int, str], None]
) -> AsyncIterator[bytes]:
    """Pass `chunks` through, holding back the last one until sha256 and size are checked.

    On a mismatch `on_mismatch(actual_size, actual_sha256)` logs and counts it, then
    `StreamAborted` is raised *before* the held-back chunk is sent: the client never receives the
    full Content-Length, so it cannot mistake the body for a complete, valid file.
    """
    digest = hashlib.sha256()
    seen = 0
    pending = b""
    async for chunk in chunks:
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
    actual = digest.hexdigest()
    if seen != size or actual != sha256:
        on_mismatch(seen, actual)
        raise StreamAborted(f"body has {seen} bytes, sha256 {actual}; expected {size} bytes, sha256 {sha256}")
    if pending:
        yield pending


@dataclass
class BodyResponse:
    """An ASGI response whose body is an async iterator; `cleanup` runs however it ends."""

    chunks: AsyncIterator[bytes]
    status_code: int
    headers: dict[str, str]
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    file_range: tuple[int, int, int] | None = None
    """(descriptor, offset, count) when the body is exactly that range of an open file: sent with
    the ASGI zero-copy extension (`sendfile`) where the server offers it (plain HTTP)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        extensions = scope.get("extensions", {})
        room = extensions.get("serve.write_room")
        if room is not None:
            WRITE_ROOM.set(room)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
            if self.file_range is not None and "http.response.zerocopysend" in extensions:
                fd, offset, count = self.file_range
                await send({"type": "http.response.zerocopysend", "file": fd, "offset": offset, "count": count})
                return
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            for step in self.cleanup:
                step()
