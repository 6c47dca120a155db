"""The release history the simulator publishes, and the factory's view of it.

The factory's ``/versions`` rule and GitHub's tag conventions are in docs/talos-upstream.md.

`DEFAULT_RELEASES` reproduces the shapes that trip clients up on the real services:

* two minors whose patch releases interleave with prereleases of the newer one
  (v1.11.6 was published between v1.12.0-beta.1 and v1.12.0);
* a prerelease of the *older* minor (v1.11.0-rc.0) that GitHub lists but the factory's
  ``/versions`` leaves out (prereleases are kept only for the newest minor), so a client that
  does not cross-check gets a 404 for its images;
* a draft (v1.12.2) that GitHub hides until it is published.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "DEFAULT_RELEASES",
    "MIN_FACTORY_VERSION",
    "ReleaseHistory",
    "SimulatedAsset",
    "SimulatedRelease",
    "factory_versions",
    "format_timestamp",
    "load_releases",
    "newest_first",
    "parse_semver",
    "semver_key",
]

_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_TIMESTAMP_FMT = "%Y-%m-%dT%H:%M:%SZ"
# Semantic versioning 2.0.0 (with an optional leading "v"); numeric parts without leading zeros.
_NUM = r"(0|[1-9]\d*)"
_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER_RE = re.compile(
    rf"^v?{_NUM}\.{_NUM}\.{_NUM}(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_TAG_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
MIN_FACTORY_VERSION = (1, 2, 0)


def format_timestamp(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, as GitHub prints times."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(_TIMESTAMP_FMT)


def parse_timestamp(value: str) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP_RE.match(value):
        raise ValueError(f"timestamp {value!r} is not in the form YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(value, _TIMESTAMP_FMT).replace(tzinfo=UTC)


def parse_semver(tag: str) -> tuple[int, int, int, tuple[str, ...]] | None:
    """``(major, minor, patch, prerelease identifiers)`` or ``None`` if ``tag`` is not semver."""
    if not isinstance(tag, str):
        return None
    m = _SEMVER_RE.match(tag)
    if not m:
        return None
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre


SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


def semver_key(tag: str) -> SemverKey:
    """Sort key implementing semver precedence (prereleases before their release)."""
    parsed = parse_semver(tag)
    if parsed is None:
        raise ValueError(f"{tag!r} is not a semantic version")
    major, minor, patch, pre = parsed
    if not pre:
        return (major, minor, patch, 1, ())
    idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre)
    return (major, minor, patch, 0, idents)


@dataclass(frozen=True)
class SimulatedAsset:
    """A file attached to a release; GitHub adds a digest and a download count that keeps growing."""

    name: str
    size: int
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class SimulatedRelease:
    """One GitHub release of siderolabs/talos as the simulator publishes it."""

    tag: str
    published_at: str  # YYYY-MM-DDTHH:MM:SSZ (for a draft: when it would be published; GitHub shows null)
    prerelease: bool
    draft: bool = False
    assets: tuple[SimulatedAsset, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not _TAG_RE.match(self.tag):
            raise ValueError(
                f"release tag {self.tag!r} is not usable: it must be a non-empty string of letters, "
                "digits, '.', '_', '+' or '-' (it becomes part of URLs)"
            )
        parse_timestamp(self.published_at)
        if not isinstance(self.prerelease, bool):
            raise ValueError(f"release {self.tag}: prerelease must be true or false, got {self.prerelease!r}")
        if not isinstance(self.draft, bool):
            raise ValueError(f"release {self.tag}: draft must be true or false, got {self.draft!r}")

    @property
    def published(self) -> datetime:
        return parse_timestamp(self.published_at)


DEFAULT_RELEASES: tuple[SimulatedRelease, ...] = (
    SimulatedRelease("v1.11.0-rc.0", "2025-08-14T12:03:41Z", prerelease=True),
    SimulatedRelease("v1.11.5", "2025-11-06T14:41:02Z", prerelease=False),
    SimulatedRelease("v1.12.0-beta.1", "2025-12-01T11:20:47Z", prerelease=True),
    SimulatedRelease("v1.11.6", "2025-12-10T10:15:33Z", prerelease=False),
    SimulatedRelease("v1.12.0", "2025-12-22T18:05:12Z", prerelease=False),
    SimulatedRelease("v1.12.1", "2025-12-30T15:22:09Z", prerelease=False),
    SimulatedRelease("v1.12.2", "2025-12-31T09:30:00Z", prerelease=False, draft=True),
)


def factory_versions(releases: Iterable[SimulatedRelease]) -> list[str]:
    """What the Image Factory's ``GET /versions`` lists for these releases.

    Non-draft semver tags >= v1.2.0, ascending; prereleases only for the newest minor (the minor
    of the highest version, prereleases included). Tags are normalised to a leading ``v``.
    """
    tags = {}
    for release in releases:
        if release.draft:
            continue
        parsed = parse_semver(release.tag)
        if parsed is None or parsed[:3] < MIN_FACTORY_VERSION:
            continue
        tag = release.tag if release.tag.startswith("v") else f"v{release.tag}"
        tag = tag.split("+", 1)[0]
        tags[tag] = parsed
    if not tags:
        return []
    newest = max(tags, key=semver_key)
    newest_minor = tags[newest][:2]
    kept = [t for t, p in tags.items() if not p[3] or p[:2] == newest_minor]
    return sorted(kept, key=semver_key)


def newest_first(releases: Iterable[SimulatedRelease]) -> list[SimulatedRelease]:
    """GitHub's listing order: by publication time, newest first."""

    def order(release: SimulatedRelease) -> tuple[str, int, SemverKey | tuple[()], str]:
        parsed = parse_semver(release.tag)
        return (release.published_at, 1 if parsed else 0, semver_key(release.tag) if parsed else (), release.tag)

    return sorted(releases, key=order, reverse=True)


class ReleaseHistory:
    """The releases both services show: GitHub lists them, the factory derives ``/versions`` from them."""

    def __init__(self, releases: Iterable[SimulatedRelease]) -> None:
        self._lock = threading.Lock()
        self._releases: dict[str, SimulatedRelease] = {}
        for release in releases:
            if not isinstance(release, SimulatedRelease):
                raise TypeError(f"releases must be SimulatedRelease objects, got {release!r}")
            self._releases[release.tag] = release

    def put(self, release: SimulatedRelease) -> None:
        """Add a release, or replace the one with its tag (e.g. a draft getting published)."""
        with self._lock:
            self._releases[release.tag] = release

    def remove(self, tag: str) -> None:
        with self._lock:
            if self._releases.pop(tag, None) is None:
                raise KeyError(f"no release {tag!r}")

    def newest_first(self) -> list[SimulatedRelease]:
        """Every release, drafts included."""
        with self._lock:
            return newest_first(self._releases.values())

    def visible(self) -> list[SimulatedRelease]:
        """What GitHub lists to a caller without push access: no drafts."""
        return [release for release in self.newest_first() if not release.draft]

    def factory_versions(self) -> list[str]:
        with self._lock:
            return factory_versions(self._releases.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._releases)


_FIELDS = {"tag", "published_at", "prerelease", "draft"}


def load_releases(path: str | Path) -> list[SimulatedRelease]:
    """Read ``[{"tag": ..., "published_at": ..., "prerelease": ..., "draft": ...}, ...]``.

    ``prerelease`` defaults to "the tag has a ``-`` suffix", ``draft`` to false. Any problem raises
    ``ValueError`` naming the file and the entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the releases file: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected a list of release objects") from exc
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of release objects like "
            '{"tag": "v1.12.0", "published_at": "2025-12-22T18:05:12Z", "prerelease": false}, '
            f"got {type(data).__name__}"
        )
    releases: list[SimulatedRelease] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {json.dumps(entry)[:80]}")
        if isinstance(entry.get("tag"), str):
            where += f" ({entry['tag']})"
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}")
        for required in ("tag", "published_at"):
            if required not in entry:
                raise ValueError(f"{where}: missing required field {required!r}")
        tag = entry["tag"]
        prerelease = entry.get("prerelease")
        if prerelease is None:
            prerelease = isinstance(tag, str) and "-" in tag
        try:
            release = SimulatedRelease(
                tag=tag,
                published_at=entry["published_at"],
                prerelease=prerelease,
                draft=entry.get("draft", False),
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if release.tag in seen:
            raise ValueError(f"{where}: duplicate tag {release.tag}")
        seen.add(release.tag)
        releases.append(release)
    return releases
