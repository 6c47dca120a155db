"""Release discovery: which Talos releases to publish.

Plain Python (no Dagster): the release sensor, `publish --new` and the tests call it.

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

GitHub's budget (60 requests/hour without a token) is spent on one releases listing per CLI run or
sensor tick: the facts of every release come from it (`Discovery.facts`, `ReleaseListing.facts`)
and are handed to the runs, so no partition asks GitHub again. The listing's ETag moves whenever an
asset's download count does, so a changed ETag alone says nothing: `release_set` fingerprints what
matters (tags, publication times, draft and prerelease flags), and an unchanged release set is
treated like a 304 (docs/talos-upstream.md, "Conditional requests").

Why these defaults: the factory keeps prereleases of the newest minor only, so a prerelease
partition becomes a permanent 404 once its minor ships, and one permanently failing partition
blocks the catalog's eager rebuild; stable releases only, from the three newest minors at the
time of writing (1.10, 1.11, 1.12), keep a fresh deployment's first download bounded
(~190 MiB per image). Lower `TALOS_MIN_VERSION` to publish older releases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ConfigError, UpstreamError
from .releases import ReleaseFacts
from .settings import SETTING_BY_NAME, Settings
from .upstream import FactoryClient, ReleasesClient
from .versions import TalosVersion, parse_timestamp

ENV_INCLUDE_PRERELEASES = SETTING_BY_NAME["include_prereleases"].env
ENV_MIN_VERSION = SETTING_BY_NAME["min_version"].env
PENDING_WINDOW = timedelta(hours=24)
_DEFAULT_MIN_VERSION = TalosVersion.parse(SETTING_BY_NAME["min_version"].default)

# GitHub's REST budget: 60 requests/hour per IP without a token (a 304 costs one too), 5,000 with.
UNAUTHENTICATED_BUDGET_PER_HOUR = 60
AUTHENTICATED_BUDGET_PER_HOUR = 5000
# One releases listing per tick (a 304 when nothing changed, a few pages when something did).
# Without a token, 300 s is 12 requests/hour and leaves ~45/hour for the `talos-pipeline` CLI (one
# listing per run) and hand-launched `talos_release` runs (one request each) on the same address.
UNAUTHENTICATED_INTERVAL_SECONDS = 300
AUTHENTICATED_INTERVAL_SECONDS = 60

TAG_HINT = "not a Talos release tag (expected vMAJOR.MINOR.PATCH, optionally -alpha.N, -beta.N or -rc.N)"


def sensor_interval_seconds(settings: Settings) -> int:
    """The release sensor's minimum interval: `TALOS_SENSOR_INTERVAL_SECONDS` when set, else
    60 s with `GITHUB_TOKEN` and 300 s without (12 of the 60 requests/hour)."""
    if settings.sensor_interval_seconds is not None:
        return settings.sensor_interval_seconds
    return AUTHENTICATED_INTERVAL_SECONDS if settings.github_token else UNAUTHENTICATED_INTERVAL_SECONDS


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
    min_version: TalosVersion = _DEFAULT_MIN_VERSION

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscoveryPolicy:
        text = settings.min_version.strip()
        if not TalosVersion.is_valid(text):
            raise ConfigError(
                f"{ENV_MIN_VERSION}={settings.min_version!r} is not valid: use a Talos release tag such as "
                f"{SETTING_BY_NAME['min_version'].default}"
            )
        return cls(include_prereleases=settings.include_prereleases, min_version=TalosVersion.parse(text))

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
    facts: dict[str, ReleaseFacts] = field(default_factory=dict)  # of the eligible releases, for their runs
    etag: str | None = None
    not_modified: bool = False  # a 304, or the same release set as `release_set` said
    release_set: str | None = None

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
    releases: Iterable[dict[str, Any]], offered: Iterable[str], policy: DiscoveryPolicy, *, now: datetime | None = None
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
            found.facts[tag] = ReleaseFacts.from_github(release)
        elif _recent(published_at, now):
            found.pending[tag] = published_at
        else:
            found.excluded.append(Rejected(tag, "not offered by the Image Factory (/versions)"))
    found.eligible = _sorted(eligible)
    return found


def release_set(releases: Iterable[dict[str, Any]]) -> str:
    """A short fingerprint of what GitHub says about its releases, download counts left out."""
    facts = sorted(
        [str(r.get("tag_name")), str(r.get("published_at")), bool(r.get("draft")), bool(r.get("prerelease"))]
        for r in releases
        if isinstance(r, dict)
    )
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def discover(
    releases: ReleasesClient,
    factory: FactoryClient,
    policy: DiscoveryPolicy,
    *,
    etag: str | None = None,
    known_set: str | None = None,
    pending: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Discovery:
    """List GitHub's releases (conditionally on `etag`) and cross-check them with the factory.

    On a 304, or when the listing holds the release set `known_set` fingerprints (only download
    counts moved), only the still-pending tags are looked up again (in the factory, not on GitHub).
    Raises `RateLimited` (with `reset_at`) or `UpstreamError` like the clients do.
    """
    now = now or datetime.now(UTC)
    page = releases.list_releases(etag)
    current = None if page.not_modified else release_set(page.releases)
    if page.not_modified or current == known_set:
        found = Discovery(etag=page.etag, not_modified=True, release_set=known_set)
        if pending:
            offered = set(factory.versions())
            found.eligible = _sorted(t for t in pending if t in offered and TalosVersion.is_valid(t))
            found.pending = {t: p for t, p in pending.items() if t not in offered and _recent(p, now)}
        return found
    found = classify(page.releases, factory.versions(), policy, now=now)
    found.etag, found.release_set = page.etag, current
    return found


@dataclass(frozen=True)
class ReleaseListing:
    """GitHub's releases as one CLI run saw them: listed once, then shared by discovery, the checks
    and every partition of the run (their facts go to the runs as config)."""

    releases: list[dict[str, Any]]
    url: str

    @classmethod
    def fetch(cls, client: ReleasesClient) -> ReleaseListing:
        return cls(client.list_releases().releases, client.url)

    def facts(self, tag: str) -> ReleaseFacts:
        """The facts of a published release; an unknown or draft tag is an error naming it."""
        for release in self.releases:
            if isinstance(release, dict) and release.get("tag_name") == tag:
                return ReleaseFacts.from_github(release)
        raise UpstreamError(
            f"Talos {tag} has no published GitHub release (not in {self.url}); check the tag, or wait: "
            "releases stay drafts for a while after tagging"
        )
