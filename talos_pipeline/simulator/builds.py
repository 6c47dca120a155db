"""Cold builds: the first request for an image waits while the factory builds it.

As the real factory does (docs/talos-upstream.md, "Disk images"): requests for an image that is
not built yet, ``HEAD`` included, block until it is; concurrent requests for the same image share
one build; at most ``slots`` builds run at once and the others queue, the queueing adding to the
wait. Built images stay built for the life of the simulator (a drifted image is a new key, so it
is cold again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["BuildQueue", "BuildStats"]


@dataclass(frozen=True)
class BuildStats:
    started: int  # builds begun (each image generation at most once)
    max_concurrent: int  # most builds running at the same moment
    queue_waits: int  # builds that had to wait for a free slot
    running: int
    queued: int


class BuildQueue:
    def __init__(self, *, seconds: float, slots: int | None, stopping: threading.Event) -> None:
        self.seconds = seconds  # how long one build takes
        self.slots = slots  # builds at once; None: no limit
        self._stopping = stopping
        self._cond = threading.Condition()
        self._built: set[Hashable] = set()
        self._building: set[Hashable] = set()
        self._running = 0
        self._queued = 0
        self._started = 0
        self._max_concurrent = 0
        self._queue_waits = 0

    def await_build(self, key: Hashable, build: Callable[[], object]) -> bool:
        """Block until ``key`` is built (running ``build`` in the build's slot); True if it already was."""
        with self._cond:
            if key in self._built:
                return True
            while key in self._building and not self._stopping.is_set():  # someone else builds it
                self._cond.wait(0.5)
            if key in self._built or self._stopping.is_set():
                return False
            self._building.add(key)
        try:
            self._take_slot()
            try:
                self._stopping.wait(self.seconds)
                build()
            finally:
                self._release_slot()
        except BaseException:
            with self._cond:
                self._building.discard(key)  # the next request builds it again
                self._cond.notify_all()
            raise
        with self._cond:
            self._building.discard(key)
            self._built.add(key)
            self._cond.notify_all()
        return False

    def stats(self) -> BuildStats:
        with self._cond:
            return BuildStats(self._started, self._max_concurrent, self._queue_waits, self._running, self._queued)

    def reset_stats(self) -> None:
        """Zero the counters; what is built stays built."""
        with self._cond:
            self._started = self._max_concurrent = self._queue_waits = 0

    def _take_slot(self) -> None:
        with self._cond:
            if self._full():
                self._queue_waits += 1
                self._queued += 1
                try:
                    while self._full() and not self._stopping.is_set():
                        self._cond.wait(0.5)
                finally:
                    self._queued -= 1
            self._running += 1
            self._started += 1
            self._max_concurrent = max(self._max_concurrent, self._running)

    def _release_slot(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _full(self) -> bool:
        return self.slots is not None and self._running >= self.slots
