"""Prometheus metrics of `serve/`, correct across worker processes.

Every worker records into `prometheus_client` metrics. With `--workers N` the command runs every
worker in prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `server.py`
before the workers start): each process writes its values to memory-mapped files and `/metrics`,
whichever worker answers it, sums the counters of all of them. In one process (tests, the demo)
the values live in this process's own registry.

`Metrics` also reads like the old counter dict (`metrics["proxy_drift"]`): the problem counters of
this process, which tests and `/healthz` use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

PROBLEMS = (
    "proxy_drift",
    "proxy_upstream_errors",
    "store_corrupt",
    "store_missing",
    "store_outside_root",
    "os_errors",
    "unexpected",
)
REJECTIONS = (
    "parse_error",
    "head_too_large",
    "body_too_large",
    "head_timeout",
    "client_cap",
    "server_full",
    "shed",
    "send_timeout",
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Response times: the catalog from memory takes well under a millisecond, disks take seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics(Mapping[str, int]):
    """The metrics of one server (one app), registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "talos_serve_requests", "HTTP responses by route and status", ("route", "status"), registry=r
        )
        self.delivered = Counter(
            "talos_serve_delivered_bytes",
            "response body bytes handed to the kernel for clients (not merely queued)",
            ("route",),
            registry=r,
        )
        self.duration = Histogram(
            "talos_serve_response_seconds",
            "from the end of the request head to the last byte of the response (responses of the application: "
            "catalog documents answered from memory by the server take microseconds and are not timed)",
            ("route",),
            buckets=BUCKETS,
            registry=r,
        )
        self.connections = Gauge(
            "talos_serve_connections", "open client connections", registry=r, multiprocess_mode="livesum"
        )
        self.rejections = Counter(
            "talos_serve_rejections",
            "connections or requests refused or closed by the server's limits, by reason",
            ("reason",),
            registry=r,
        )
        self.problems = Counter(
            "talos_serve_problems",
            "integrity and availability problems: store objects missing or corrupt, proxy drift, upstream errors",
            ("kind",),
            registry=r,
        )
        self.catalog_products = Gauge(
            "talos_serve_catalog_products", "products in the served catalog", registry=r, multiprocess_mode="livemax"
        )
        self.catalog_age = Gauge(
            "talos_serve_catalog_age_seconds",
            "seconds since the served images.json was written to the store",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.catalog_ready = Gauge(
            "talos_serve_ready",
            "1 while a good catalog is served (readiness), 0 before the first one",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.catalog_degraded = Gauge(
            "talos_serve_catalog_degraded",
            "1 while the store's catalog cannot be read and the last good one is still served",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._local = dict.fromkeys(PROBLEMS, 0)
        self._problem_children = {name: self.problems.labels(name) for name in PROBLEMS}
        self._rejection_children = {name: self.rejections.labels(name) for name in REJECTIONS}
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._bytes: dict[str, int] = {}
        for name in REJECTIONS:
            self._rejection_children[name].inc(0)

    # ---- what the handlers and the server record
    def bump(self, problem: str) -> None:
        self._local[problem] = self._local.get(problem, 0) + 1
        child = self._problem_children.get(problem) or self.problems.labels(problem)
        child.inc()

    def reject(self, reason: str) -> None:
        self._rejection_children[reason].inc()

    def response(self, route: str, status: int, delivered: int, seconds: float | None) -> None:
        """One response: its duration now (None: answered from memory by the server, in
        microseconds, not timed); its count and bytes added up until `flush()`."""
        key = (route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        if delivered:
            self._bytes[route] = self._bytes.get(route, 0) + delivered
        if seconds is None:
            return
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = self.duration.labels(route)
        histogram.observe(seconds)

    def flush(self) -> None:
        """Add the counted responses and bytes to the metrics (the server calls this often;
        `render` too), so a response costs a dict update instead of two shared-memory writes."""
        counts, self._counts = self._counts, {}
        for (route, status), count in counts.items():
            counter = self._request_children.get((route, status))
            if counter is None:
                counter = self._request_children[(route, status)] = self.requests.labels(route, str(status))
            counter.inc(count)
        sizes, self._bytes = self._bytes, {}
        for route, size in sizes.items():
            self.delivered.labels(route).inc(size)

    def catalog(self, *, products: int, written_at: float | None, ready: bool, degraded: bool) -> None:
        self.catalog_products.set(products)
        self.catalog_age.set(max(0.0, time.time() - written_at) if written_at else 0)
        self.catalog_ready.set(1 if ready else 0)
        self.catalog_degraded.set(1 if degraded else 0)

    def render(self) -> bytes:
        """The text exposition: every worker's values in multiprocess mode, else this registry's."""
        self.flush()
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    # ---- the problem counters of this process, as a read-only mapping
    def __getitem__(self, name: str) -> int:
        self.flush()
        return self._local[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._local)

    def __len__(self) -> int:
        return len(self._local)
