"""The simulator's two profiles: ``default`` (small and fast) and ``production`` (realistic).

``default`` serves the few releases of `releases.DEFAULT_RELEASES` with small images of one fixed
size, builds instantly and never redirects: the demo and most tests use it, and its bytes never
change. ``production`` reproduces what a first real publication meets (docs/talos-upstream.md): the
release history since v1.10 with prereleases, drafts and odd tags; images of the factory's sizes
per arch (scalable for tests), 8 KiB qcow2 clusters; cold builds of a few seconds, at most 6 at
once; 302s to the CDN for built images; release assets whose download counts keep the listing's
ETag moving.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .factory import Redirect
from .images import DEFAULT_RECIPE, PRODUCTION_RECIPE, ImageRecipe
from .releases import DEFAULT_RELEASES, SimulatedAsset, SimulatedRelease, parse_semver

__all__ = ["PRODUCTION_RELEASES", "PROFILES", "Profile", "ProfileName"]

MIB = 1024 * 1024


class ProfileName(StrEnum):
    DEFAULT = "default"
    PRODUCTION = "production"


@dataclass(frozen=True)
class Profile:
    name: ProfileName
    releases: tuple[SimulatedRelease, ...]
    recipe: ImageRecipe
    build_seconds: float
    build_slots: int | None  # None: no limit
    redirect: Redirect
    download_tick_seconds: float | None  # None: counts move only when a test ticks them


# tag, published_at, note ("draft"; "not-flagged": a prerelease tag GitHub does not mark as one)
_PRODUCTION_HISTORY = """
v1.10.0-beta.0   2025-03-25T16:32:31Z
v1.10.0-rc.0     2025-04-15T09:14:29Z
v1.10.0          2025-04-29T15:57:56Z
v1.10.1          2025-05-08T16:43:08Z
v1.10.2          2025-05-21T09:10:32Z
v1.10.3          2025-06-04T14:11:48Z
v1.10.4          2025-06-18T13:31:55Z
v1.11.0-alpha.0  2025-06-24T18:53:13Z
v1.10.5          2025-07-08T09:31:40Z
v1.11.0-beta.0   2025-07-22T14:20:51Z
v1.10.6          2025-08-05T09:51:24Z
v1.11.0-rc.0     2025-08-14T12:03:41Z
v1.11.0          2025-09-01T12:50:37Z
v1.10.7          2025-09-02T16:54:12Z
v1.11.1          2025-09-16T13:36:44Z
v1.11.2          2025-09-30T13:09:50Z
v1.10.8          2025-10-14T15:39:35Z
v1.11.3          2025-10-16T14:51:05Z
v1.12.0-alpha.0  2025-10-21T14:25:37Z
v1.11.4          2025-10-28T13:42:33Z
v1.11.5          2025-11-06T14:41:02Z
v1.12.0-beta.0   2025-11-18T17:54:38Z
v1.10.9          2025-11-25T15:54:38Z
v1.12.0-beta.1   2025-12-01T11:20:47Z
v1.11.6          2025-12-10T10:15:33Z
v1.12.0-rc.0     2025-12-15T15:31:40Z
v1.12.0          2025-12-22T18:05:12Z
v1.12.1          2025-12-30T15:22:09Z
v1.12.2          2026-01-20T13:37:23Z
v1.11.7          2026-01-28T11:28:32Z
v1.12.3          2026-02-10T14:43:24Z
v1.13.0-alpha.0  2026-02-24T16:08:05Z
v1.12.4          2026-03-05T11:31:36Z
v1.11.8          2026-03-10T18:35:05Z
v1.13.0-beta.0   2026-03-24T09:35:27Z
v1.12.5          2026-03-31T10:43:45Z
v1.13.0-rc.0     2026-04-07T10:03:01Z  not-flagged
release-1.13     2026-04-20T11:05:24Z
v1.13.0          2026-04-21T11:28:29Z
v1.12.6          2026-05-05T18:11:59Z
v1.13.1          2026-05-06T15:59:13Z
v1.13.2          2026-05-26T10:05:31Z
v1.12.7          2026-06-16T15:58:10Z
v1.13.3          2026-06-23T18:00:34Z
v1.13.4          2026-07-21T12:13:04Z
v1.14.0-alpha.0  2026-07-28T09:13:18Z
v1.14.0-alpha.1  2026-08-11T09:40:57Z
v1.12.8          2026-08-18T11:54:13Z  draft
v1.13.5          2026-08-18T18:03:18Z  draft
"""

# name, size on the v1.12 release, for every release; bundles from v1.11 on
_ASSETS = (
    ("metal-amd64.raw.zst", 101 * MIB),
    ("metal-arm64.raw.zst", 61 * MIB),
    ("talosctl-linux-amd64", 79 * MIB),
    ("talosctl-linux-arm64", 74 * MIB),
    ("talosctl-darwin-arm64", 76 * MIB),
    ("talosctl-windows-amd64.exe", 80 * MIB),
    ("sha256sum.txt", 2_104),
    ("sha512sum.txt", 3_368),
)
_BUNDLES = ("metal-amd64.raw.zst.bundle", "metal-arm64.raw.zst.bundle", "sha256sum.txt.bundle")


def _assets(tag: str) -> tuple[SimulatedAsset, ...]:
    minor = tag.split(".")[1] if tag.startswith("v1.") else "0"
    step = int(minor) - 12 if minor.isdigit() else 0
    assets = [SimulatedAsset(name, round(size * (1 + 0.02 * step)) if size > MIB else size) for name, size in _ASSETS]
    if minor.isdigit() and int(minor) >= 11:
        assets += [SimulatedAsset(name, 7_422, "application/json") for name in _BUNDLES]
    return tuple(assets)


def _production_releases() -> tuple[SimulatedRelease, ...]:
    releases = []
    for line in _PRODUCTION_HISTORY.strip().splitlines():
        tag, published_at, *note = line.split()
        semver = parse_semver(tag)
        releases.append(
            SimulatedRelease(
                tag,
                published_at,
                prerelease=bool(semver and semver[3]) and note != ["not-flagged"],
                draft=note == ["draft"],
                assets=_assets(tag),
            )
        )
    return tuple(releases)


PRODUCTION_RELEASES = _production_releases()

PROFILES = {
    ProfileName.DEFAULT: Profile(
        name=ProfileName.DEFAULT,
        releases=DEFAULT_RELEASES,
        recipe=DEFAULT_RECIPE,
        build_seconds=0.0,
        build_slots=None,
        redirect=Redirect.NEVER,
        download_tick_seconds=None,
    ),
    ProfileName.PRODUCTION: Profile(
        name=ProfileName.PRODUCTION,
        releases=PRODUCTION_RELEASES,
        recipe=PRODUCTION_RECIPE,
        build_seconds=3.0,
        build_slots=6,
        redirect=Redirect.CACHED,
        download_tick_seconds=60.0,
    ),
}
