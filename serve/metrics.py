"""Counters of what went wrong while serving (integrity problems, upstream failures)."""

from __future__ import annotations

import threading


class Metrics(dict):
    """Counters on `app.state.metrics` (a dict), safe to bump from worker threads."""

    NAMES = ("proxy_drift", "proxy_upstream_errors", "store_corrupt", "store_missing")

    def __init__(self) -> None:
        super().__init__({name: 0 for name in self.NAMES})
        self._lock = threading.Lock()

    def bump(self, name: str) -> None:
        with self._lock:
            self[name] = self.get(name, 0) + 1
