"""Where published objects live: the `Store` contract every store implements.

Keys are relative POSIX paths checked by `check_key`; nothing outside the store root can be
named. Writes are atomic (a reader sees the old object or the new one, never part of one) and
idempotent (writing the same bytes again changes nothing).

Besides plain reads and writes, a store offers what concurrent runs and retention need:

* `read_with_etag` + `put_if`: a compare-and-swap on one object (the catalog is published with
  it, see `core/catalog.py`). The directory store serialises it with an `fcntl` lock on `.lock` in
  the store root; the S3 store uses conditional PutObject (`If-Match` / `If-None-Match: *`).
* `list_info`: keys with size, ETag and modification time, in one listing.
* `temporaries` / `remove_temporary`: leftovers of interrupted writes (upload staging areas,
  unfinished multipart uploads), invisible to readers, collected by `talos-pipeline prune`.

Implementations: `stores.directory.DirectoryStore` and `stores.s3.S3Store`; `stores.open_store`
chooses one from `TALOS_STORE`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from ..errors import StoreError

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:+-]*(/[A-Za-z0-9_][A-Za-z0-9._:+-]*)*$")


class ObjectMissing(StoreError):
    """The key names no object."""


def check_key(key: object) -> str:
    """Refuse anything that is not a plain relative path (no `..`, no leading `/`, no oddities)."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key.split("/"):
        raise StoreError(f"invalid store key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    modified: float | None = None
    """Last modification, seconds since the epoch (when the store reports it)."""


@dataclass(frozen=True)
class Temporary:
    """A leftover of an interrupted write (an upload staging object, an unfinished multipart upload).

    Readers never see one; `talos-pipeline prune` removes those older than its grace period.
    """

    name: str
    modified: float
    size: int | None = None


class Upload(ABC):
    """A large object being written; invisible until `commit` names it."""

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self, key: str, *, sha256: str | None = None) -> None:
        """Name the written bytes `key`. `sha256` (hex), when given, lets a store that can
        checksum server-side confirm it stored exactly the hashed bytes."""

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()


class Store(ABC):
    """Objects by key. Implementations: `DirectoryStore`, `S3Store`."""

    @abstractmethod
    def describe(self) -> str:
        """A human-readable location for logs (a path or `s3://bucket/prefix`)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def iter_range(self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream bytes [start, end) of an object in chunks."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a small object atomically; a no-op when it already holds these bytes."""

    @abstractmethod
    def upload(self) -> Upload:
        """Start a streamed write of a large object whose key is known only at the end."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def check_ready(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Fail early, with a clear message, when the store cannot be used."""

    # -- what concurrent publication and retention need -------------------------------------
    @abstractmethod
    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The bytes of an object and the ETag of exactly those bytes (None when absent)."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, etag: str | None) -> bool:
        """Compare-and-swap: write `data` only if the object still has `etag` (None: only if
        there is no object). False, and nothing written, when another writer got there first."""

    def list_info(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every key under `prefix` with its size, ETag and modification time."""
        infos = {}
        for key in self.list_keys(prefix):
            info = self.stat(key)
            if info is not None:
                infos[key] = info
        return infos

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    @abstractmethod
    def temporaries(self) -> list[Temporary]:
        """Leftovers of interrupted writes (see `Temporary`)."""

    @abstractmethod
    def remove_temporary(self, temporary: Temporary) -> None: ...
