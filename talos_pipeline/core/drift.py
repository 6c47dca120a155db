"""The upstream re-check: do the images published in proxy mode still match what the Image
Factory serves? Factory builds are not reproducible (see `docs/talos-upstream.md`), so an image
streamed from the factory can drift from the sha256 the catalog promises; the daily drift asset
finds those and the republication sensor publishes them again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import UpstreamError
from .records import ProductRecord
from .settings import DiskMode
from .stores import CHUNK
from .upstream import FactoryClient
from .versions import TalosVersion


@dataclass(frozen=True)
class DriftReport:
    """The factory's current bytes for one published image, compared with its product record."""

    record: ProductRecord
    upstream_sha256: str | None = None
    upstream_size: int | None = None
    problem: str | None = None  # the factory could not be read (no verdict on the bytes)

    @property
    def drifted(self) -> bool:
        return self.upstream_sha256 is not None and (
            self.upstream_sha256 != self.record.disk.sha256 or self.upstream_size != self.record.disk.size
        )

    @property
    def ok(self) -> bool:
        return self.problem is None and not self.drifted

    def describe(self) -> str:
        label = self.record.image.label
        if self.problem:
            return f"{label}: could not re-check: {self.problem}"
        if self.drifted:
            return (
                f"{label}: the factory now serves sha256 {self.upstream_sha256} ({self.upstream_size} bytes); "
                f"published {self.record.disk.sha256} ({self.record.disk.size} bytes)"
            )
        return f"{label}: unchanged"


def recheck_disk(factory: FactoryClient, record: ProductRecord) -> DriftReport:
    """Stream the image the record was built from (never held in memory) and hash it."""
    try:
        response = factory.open_image(record.image)
    except UpstreamError as exc:
        return DriftReport(record, problem=str(exc))
    digest, size = hashlib.sha256(), 0
    length = response.headers.get("Content-Length", "")
    try:
        with response:
            # the bytes as served, like the publishing pass hashed them (no content decoding)
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                digest.update(chunk)
                size += len(chunk)
    except Exception as exc:  # a broken download is no verdict on the bytes
        return DriftReport(record, problem=f"download broke off after {size} bytes ({type(exc).__name__}: {exc})")
    if length.isdigit() and size != int(length):
        return DriftReport(record, problem=f"download ended after {size} of {length} bytes (truncated)")
    return DriftReport(record, upstream_sha256=digest.hexdigest(), upstream_size=size)


def recheck_records(
    factory: FactoryClient,
    records: Iterable[ProductRecord],
    *,
    modes: Iterable[str] = (DiskMode.PROXY,),
    log: Callable[[str], None] | None = None,
) -> list[DriftReport]:
    """Re-hash, from the factory, every record published in one of `modes` (proxy by default:
    those are the images served straight from the factory, where drift breaks clients)."""
    wanted = set(modes)
    reports = []
    for record in sorted(records, key=lambda r: (TalosVersion.parse(r.version).sort_key(), r.arch, r.variant)):
        if record.disk_mode not in wanted:
            continue
        started = time.monotonic()
        report = recheck_disk(factory, record)
        if log:
            log(f"{report.describe()} ({time.monotonic() - started:.1f}s)")
        reports.append(report)
    return reports
