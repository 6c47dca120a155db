"""Where published objects live: the `Store` interface and its local-directory implementation.

Keys are relative POSIX paths checked by `check_key`; nothing outside the store root can be
named. Writes are atomic (a reader sees the old object or the new one, never part of one) and
idempotent (writing the same bytes again changes nothing).

Besides plain reads and writes, a store offers what concurrent runs and retention need:

* `read_with_etag` + `put_if`: a compare-and-swap on one object (the catalog is published with
  it, see `catalog.py`). The directory store serialises it with an `fcntl` lock on `.lock` in
  the store root; the S3 store uses conditional PutObject (`If-Match` / `If-None-Match: *`).
* `list_info`: keys with size, ETag and modification time, in one listing.
* `temporaries` / `remove_temporary`: leftovers of interrupted writes (upload staging areas,
  unfinished multipart uploads), invisible to readers, collected by `talos-pipeline prune`.

The S3 implementation is `s3store.S3Store`.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, StoreError

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:+-]*(/[A-Za-z0-9_][A-Za-z0-9._:+-]*)*$")
_CONTENT_TYPES = (
    (".sigstore.json", "application/vnd.dev.sigstore.bundle.v0.3+json"),
    (".json", "application/json"),
    (".tar.xz", "application/x-xz"),
    (".qcow2", "application/x-qemu-disk"),
    (".tar", "application/x-tar"),
)


class ObjectMissing(StoreError):
    """The key names no object."""


def check_key(key: str) -> str:
    """Refuse anything that is not a plain relative path (no `..`, no leading `/`, no oddities)."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key.split("/"):
        raise StoreError(f"invalid store key {key!r}")
    return key


def content_type_for(key: str) -> str:
    for suffix, content_type in _CONTENT_TYPES:
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


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

    def __exit__(self, exc_type, exc, tb) -> None:
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

    def check_ready(self) -> None:
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


class _DirectoryUpload(Upload):
    def __init__(self, store: DirectoryStore) -> None:
        self._store = store
        tmp_dir = store.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._path = tmp_dir / f"upload-{uuid.uuid4().hex}"
        self._file = open(self._path, "wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self, key: str, *, sha256: str | None = None) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.path_for(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._path.unlink(missing_ok=True)


class DirectoryStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def describe(self) -> str:
        return str(self.root)

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def check_ready(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"TALOS_STORE={self.root}: cannot create the directory ({exc.strerror})") from exc
        if not os.access(self.root, os.W_OK):
            raise ConfigError(f"TALOS_STORE={self.root}: the directory is not writable by this user")

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_for(key).stat()
        except FileNotFoundError:
            return None
        return _info(st)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is not in the store at {self.root}") from None

    def iter_range(self, key: str, start: int = 0, end: int | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            handle = open(self.path_for(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{key} is not in the store at {self.root}") from None
        with handle:
            handle.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = handle.read(chunk_size if remaining is None else min(chunk_size, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path_for(key)
        try:
            if target.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        self._replace(target, data)

    def _replace(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            handle = open(self.path_for(key), "rb")
        except FileNotFoundError:
            return None
        with handle:  # the open file pins the inode: its bytes and its ETag belong together
            return handle.read(), _info(os.fstat(handle.fileno())).etag

    def put_if(self, key: str, data: bytes, etag: str | None) -> bool:
        target = self.path_for(key)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            current = self.stat(key)
            if (current.etag if current else None) != etag:
                return False
            self._replace(target, data)
            return True

    def list_info(self, prefix: str) -> dict[str, ObjectInfo]:
        infos = {}
        for key in self.list_keys(prefix):
            try:
                infos[key] = _info(self.path_for(key).stat())
            except FileNotFoundError:
                continue
        return infos

    def temporaries(self) -> list[Temporary]:
        """`.tmp/upload-*` (disk uploads) and `.tmp-*` files beside their targets (small writes)."""
        found = []
        if not self.root.is_dir():
            return found
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            dirnames[:] = [d for d in dirnames if d == ".tmp" or not d.startswith(".")]
            for name in filenames:
                if name.startswith(".tmp-") or (rel.parts[:1] == (".tmp",) and name.startswith("upload-")):
                    try:
                        st = Path(dirpath, name).stat()
                    except FileNotFoundError:
                        continue
                    found.append(Temporary((rel / name).as_posix(), st.st_mtime, st.st_size))
        return sorted(found, key=lambda t: t.name)

    def remove_temporary(self, temporary: Temporary) -> None:
        path = (self.root / temporary.name).resolve()
        if self.root not in path.parents or not (path.name.startswith((".tmp-", "upload-"))):
            raise StoreError(f"{temporary.name} is not a temporary file of the store at {self.root}")
        path.unlink(missing_ok=True)

    def upload(self) -> Upload:
        return _DirectoryUpload(self)

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        top = base if base.is_dir() else base.parent
        if not top.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)


def _info(st: os.stat_result) -> ObjectInfo:
    """Every write replaces the file (a new inode), so inode, size and mtime identify the content."""
    return ObjectInfo(size=st.st_size, etag=f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"', modified=st.st_mtime)


def open_store(location: str) -> Store:
    """`s3://bucket[/prefix]` or a directory path, as in `TALOS_STORE`."""
    if not location or not location.strip():
        raise ConfigError("TALOS_STORE is empty: give a directory path or s3://bucket[/prefix]")
    if location.startswith("s3://"):
        from .s3store import S3Store

        return S3Store.from_url(location)
    if "://" in location:
        raise ConfigError(f"TALOS_STORE={location!r}: unsupported scheme; use a directory path or s3://bucket[/prefix]")
    return DirectoryStore(location)
