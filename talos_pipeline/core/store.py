"""Where published objects live: the `Store` interface and its local-directory implementation.

Keys are relative POSIX paths checked by `check_key`; nothing outside the store root can be
named. Writes are atomic (a reader sees the old object or the new one, never part of one) and
idempotent (writing the same bytes again changes nothing).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


class Upload(ABC):
    """A large object being written; invisible until `commit` names it."""

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self, key: str) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> "Upload":
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


class _DirectoryUpload(Upload):
    def __init__(self, store: "DirectoryStore") -> None:
        self._store = store
        tmp_dir = store.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._path = tmp_dir / f"upload-{uuid.uuid4().hex}"
        self._file = open(self._path, "wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def commit(self, key: str) -> None:
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
        return ObjectInfo(size=st.st_size, etag=f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"')

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


def open_store(location: str) -> Store:
    """`s3://bucket[/prefix]` or a directory path, as in `TALOS_STORE`."""
    if not location or not location.strip():
        raise ConfigError("TALOS_STORE is empty: give a directory path or s3://bucket[/prefix]")
    if location.startswith("s3://"):
        from .s3store import S3Store

        return S3Store.from_url(location)
    if "://" in location:
        raise ConfigError(
            f"TALOS_STORE={location!r}: unsupported scheme; use a directory path or s3://bucket[/prefix]"
        )
    return DirectoryStore(location)
