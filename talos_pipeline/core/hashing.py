"""One pass over a disk image's bytes computes every digest the catalog needs.

For each chunk read from upstream: the disk's own sha256, the Incus fingerprint
`sha256(incus.tar.xz || disk)`, and the sha256 of the unified tarball served for direct URL
import (`prefix || disk || suffix`); docs/incus-simplestreams.md says how Incus checks each.
Three SHA-256 runs over the same bytes cost more CPU than receiving them, so each digest runs on
its own thread (hashlib releases the GIL on large updates) behind a small bounded queue: memory
stays constant whatever the image size.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

_QUEUE_DEPTH = 8
_STOP = None


class HashThread:
    """A sha256 fed from a bounded queue on a background thread, so hashing overlaps I/O."""

    def __init__(self, initial: bytes = b"", depth: int = _QUEUE_DEPTH) -> None:
        self._hash = hashlib.sha256(initial)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, daemon=True, name="sha256")
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not _STOP:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def finish(self, trailer: bytes = b"") -> str:
        self._queue.put(_STOP)
        self._thread.join()
        self._hash.update(trailer)
        return self._hash.hexdigest()

    def abandon(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()


@dataclass(frozen=True)
class DiskDigests:
    sha256: str
    size: int
    fingerprint: str
    unified_sha256: str
    unified_size: int


class ImageDigester:
    """Feeds one disk stream to the three digests; `finish()` returns them.

    `metadata_tarball` starts the combined fingerprint; `unified_prefix`/`unified_suffix` wrap the
    disk in the unified tarball (see `metadata.UnifiedLayout`).
    """

    def __init__(self, metadata_tarball: bytes, unified_prefix: bytes, unified_suffix: Callable[[int], bytes]):
        self._unified_prefix_size = len(unified_prefix)
        self._unified_suffix = unified_suffix
        self._disk = HashThread()
        self._combined = HashThread(metadata_tarball)
        self._unified = HashThread(unified_prefix)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._disk.update(chunk)
        self._combined.update(chunk)
        self._unified.update(chunk)

    def finish(self) -> DiskDigests:
        suffix = self._unified_suffix(self.size)
        return DiskDigests(
            sha256=self._disk.finish(),
            size=self.size,
            fingerprint=self._combined.finish(),
            unified_sha256=self._unified.finish(suffix),
            unified_size=self._unified_prefix_size + self.size + len(suffix),
        )

    def abandon(self) -> None:
        for hasher in (self._disk, self._combined, self._unified):
            hasher.abandon()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
