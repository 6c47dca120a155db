"""Release discovery and the upstream re-check: which Talos releases to publish, and whether
the images published in proxy mode still match what the Image Factory serves.

Plain Python (no Dagster): the release sensor, the drift asset and the tests call these.

Eligible versions, in the order the checks run:

1. the tag is a strict Talos tag (`TalosVersion.is_valid`); anything else (`v1.12`, `release-x`,
   `v1.12.0|x`) is *reported* as invalid and never becomes a partition key;
2. the release is published (not a draft);
3. a prerelease (GitHub's flag or a `-alpha/-beta/-rc` suffix) only when
   `TALOS_INCLUDE_PRERELEASES` is true [false];
4. not older than `TALOS_MIN_VERSION` [v1.10.0];
5. offered by the Image Factory's `/versions`. GitHub lists prereleases of older minors that the
   factory answers with 404, and the factory refreshes `/versions` every 15 minutes, so a release
   published less than `PENDING_WINDOW` ago that the factory does not list yet is kept *pending*
   and looked up again on the next ticks (the factory call costs no GitHub budget).

Why these defaults: the factory keeps prereleases of the newest minor only, so a prerelease
partition becomes a permanent 404 once its minor ships, and one permanently failing partition
blocks the catalog's eager rebuild; stable releases only, from the three newest minors at the
time of writing (1.10, 1.11, 1.12), keep a fresh deployment's first download bounded
(~190 MiB per image). Lower `TALOS_MIN_VERSION` to publish older releases.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .errors import ConfigError, UpstreamError
from .records import ProductRecord
from .settings import DEFAULT_INCLUDE_PRERELEASES, DEFAULT_MIN_VERSION, parse_bool
from .store import CHUNK
from .upstream import FactoryClient, ReleasesClient
from .versions import TalosVersion, parse_timestamp

ENV_INCLUDE_PRERELEASES = "TALOS_INCLUDE_PRERELEASES"
ENV_MIN_VERSION = "TALOS_MIN_VERSION"
ENV_SENSOR_INTERVAL = "TALOS_SENSOR_INTERVAL_SECONDS"
PENDING_WINDOW = timedelta(hours=24)

# GitHub's REST budget: 60 requests/hour per IP without a token (a 304 costs one too), 5,000 with.
UNAUTHENTICATED_BUDGET_PER_HOUR = 60
AUTHENTICATED_BUDGET_PER_HOUR = 5000
# One releases listing per tick (a 304 when nothing changed, a few pages when something did).
# Without a token, 300 s is 12 requests/hour and leaves ~45/hour for the `talos_release` asset
# (one request per partition it materializes) and the `talos-pipeline` CLI on the same address.
UNAUTHENTICATED_INTERVAL_SECONDS = 300
AUTHENTICATED_INTERVAL_SECONDS = 60

TAG_HINT = "not a Talos release tag (expected vMAJOR.MINOR.PATCH, optionally -alpha.N, -beta.N or -rc.N)"


def sensor_interval_seconds(environ: Mapping[str, str]) -> int:
    """The release sensor's minimum interval: `TALOS_SENSOR_INTERVAL_SECONDS` when set, else
    60 s with `GITHUB_TOKEN` (1 of 5,000 requests/hour per minute) and 300 s without."""
    value = environ.get(ENV_SENSOR_INTERVAL, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{ENV_SENSOR_INTERVAL}={value!r} is not valid: use a whole number of seconds, e.g. 300")
        return int(value)
    return AUTHENTICATED_INTERVAL_SECONDS if environ.get("GITHUB_TOKEN") else UNAUTHENTICATED_INTERVAL_SECONDS


def budget_note(interval: int, authenticated: bool) -> str:
    """How much of GitHub's hourly budget polling at `interval` seconds spends (for the UI)."""
    per_hour = 3600 / interval
    if authenticated:
        return (
            f"~{per_hour:.0f} requests/hour, 304s free with GITHUB_TOKEN (budget {AUTHENTICATED_BUDGET_PER_HOUR}/hour)"
        )
    note = f"~{per_hour:.0f} of GitHub's {UNAUTHENTICATED_BUDGET_PER_HOUR} unauthenticated requests/hour"
    if per_hour > UNAUTHENTICATED_BUDGET_PER_HOUR / 2:
        note += " (more than half the budget: set GITHUB_TOKEN or a longer TALOS_SENSOR_INTERVAL_SECONDS)"
    return note


@dataclass(frozen=True)
class DiscoveryPolicy:
    include_prereleases: bool = False
    min_version: TalosVersion = TalosVersion.parse(DEFAULT_MIN_VERSION)

    @classmethod
    def from_settings(
        cls, include_prereleases: str | bool = DEFAULT_INCLUDE_PRERELEASES, min_version: str = DEFAULT_MIN_VERSION
    ) -> DiscoveryPolicy:
        include = parse_bool(ENV_INCLUDE_PRERELEASES, include_prereleases)
        text = (min_version or DEFAULT_MIN_VERSION).strip()
        if not TalosVersion.is_valid(text):
            raise ConfigError(
                f"{ENV_MIN_VERSION}={min_version!r} is not valid: use a Talos release tag such as {DEFAULT_MIN_VERSION}"
            )
        return cls(include_prereleases=include, min_version=TalosVersion.parse(text))

    @property
    def fingerprint(self) -> str:
        """Stored in the sensor cursor: a changed policy re-reads the full release list."""
        return f"prereleases={str(self.include_prereleases).lower()};min={self.min_version.tag}"

    def describe(self) -> str:
        kind = "stable releases and prereleases" if self.include_prereleases else "stable releases"
        return f"{kind} from {self.min_version.tag} on"


@dataclass(frozen=True)
class Rejected:
    tag: str
    reason: str

    def __str__(self) -> str:
        return f"{self.tag!r}: {self.reason}"


@dataclass
class Discovery:
    """One look at upstream: what may be published, and why the rest may not (yet)."""

    eligible: list[str] = field(default_factory=list)  # oldest first
    invalid: list[Rejected] = field(default_factory=list)  # tags that are not Talos tags: reported
    excluded: list[Rejected] = field(default_factory=list)  # valid tags the policy leaves out
    pending: dict[str, str] = field(default_factory=dict)  # tag -> published_at, waiting for the factory
    etag: str | None = None
    not_modified: bool = False

    def invalid_note(self) -> str:
        if not self.invalid:
            return ""
        return f"ignored {len(self.invalid)} malformed tag(s): " + ", ".join(repr(r.tag) for r in self.invalid)

    def summary(self) -> str:
        parts = [f"{len(self.eligible)} eligible"]
        if self.pending:
            parts.append(f"{len(self.pending)} waiting for the Image Factory ({', '.join(sorted(self.pending))})")
        if self.excluded:
            parts.append(f"{len(self.excluded)} left out by policy")
        if self.invalid:
            parts.append(self.invalid_note())
        return "; ".join(parts)


def _sorted(tags: Iterable[str]) -> list[str]:
    return [v.tag for v in sorted({TalosVersion.parse(t) for t in tags})]


def _recent(published_at: str, now: datetime) -> bool:
    try:
        return now - parse_timestamp(published_at) < PENDING_WINDOW
    except ConfigError:
        return False


def classify(
    releases: Iterable[dict], offered: Iterable[str], policy: DiscoveryPolicy, *, now: datetime | None = None
) -> Discovery:
    """Sort GitHub's releases into eligible / invalid / excluded / pending (see the module doc)."""
    now = now or datetime.now(UTC)
    offered = set(offered)
    found = Discovery()
    eligible: set[str] = set()
    seen: set[str] = set()
    for release in releases:
        tag = release.get("tag_name") if isinstance(release, dict) else None
        if not isinstance(tag, str) or not TalosVersion.is_valid(tag):
            shown = tag if isinstance(tag, str) else repr(tag)
            if shown not in seen:
                seen.add(shown)
                found.invalid.append(Rejected(shown, TAG_HINT))
            continue
        if tag in seen:
            continue
        seen.add(tag)
        version = TalosVersion.parse(tag)
        published_at = release.get("published_at")
        if release.get("draft") or not published_at:
            found.excluded.append(Rejected(tag, "draft: not published yet"))
        elif (bool(release.get("prerelease")) or version.is_prerelease) and not policy.include_prereleases:
            found.excluded.append(Rejected(tag, f"prerelease ({ENV_INCLUDE_PRERELEASES} is false)"))
        elif version < policy.min_version:
            found.excluded.append(Rejected(tag, f"older than {ENV_MIN_VERSION}={policy.min_version.tag}"))
        elif tag in offered:
            eligible.add(tag)
        elif _recent(published_at, now):
            found.pending[tag] = published_at
        else:
            found.excluded.append(Rejected(tag, "not offered by the Image Factory (/versions)"))
    found.eligible = _sorted(eligible)
    return found


def discover(
    releases: ReleasesClient,
    factory: FactoryClient,
    policy: DiscoveryPolicy,
    *,
    etag: str | None = None,
    pending: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Discovery:
    """List GitHub's releases (conditionally on `etag`) and cross-check them with the factory.

    On a 304 only the still-pending tags are looked up again (in the factory, not on GitHub).
    Raises `RateLimited` (with `reset_at`) or `UpstreamError` like the clients do.
    """
    now = now or datetime.now(UTC)
    page = releases.list_releases(etag)
    if page.not_modified:
        found = Discovery(etag=page.etag, not_modified=True)
        if pending:
            offered = set(factory.versions())
            found.eligible = _sorted(t for t in pending if t in offered and TalosVersion.is_valid(t))
            found.pending = {t: p for t, p in pending.items() if t not in offered and _recent(p, now)}
        return found
    found = classify(page.releases, factory.versions(), policy, now=now)
    found.etag = page.etag
    return found


# --------------------------------------------------------------------------- upstream re-check
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
    modes: Iterable[str] = ("proxy",),
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
