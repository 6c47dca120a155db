"""The directory store: a local tree whose layout is itself a static simplestreams tree.

Writes go to a temporary file beside the target and are renamed over it (atomic); the catalog's
compare-and-swap takes an `fcntl` lock on `.lock` in the store root. Every write makes a new
inode, so inode, size and mtime together serve as the ETag.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError, StoreError
from .base import CHUNK, ObjectInfo, ObjectMissing, Store, Temporary, Upload, check_key


class _DirectoryUpload(Upload):
    def __init__(self, store: DirectoryStore) -> None:
        self._store = store
        tmp_dir = store.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._path = tmp_dir / f"upload-{uuid.uuid4().hex}"
        self._file = open(self._path, "wb")  # noqa: SIM115 - the upload owns it until commit or abort closes it

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
            handle = open(self.path_for(key), "rb")  # noqa: SIM115 - `with` below; only a missing file is ObjectMissing
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
            with open(self.path_for(key), "rb") as handle:  # the open file pins the inode: bytes and ETag agree
                return handle.read(), _info(os.fstat(handle.fileno())).etag
        except FileNotFoundError:
            return None

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
        found: list[Temporary] = []
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
