"""Talos version tags: strict parsing and ordering.

Tags become Dagster dynamic partition keys, object paths and alias names, so anything that is
not exactly `vMAJOR.MINOR.PATCH[-(alpha|beta|rc).N]` is rejected before it can reach any of
them (a `|` in a partition key is silently dropped by Dagster, a `/` would escape a path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import ConfigError

_TAG = re.compile(
    r"^v(?P<major>0|[1-9]\d{0,3})\.(?P<minor>0|[1-9]\d{0,3})\.(?P<patch>0|[1-9]\d{0,3})"
    r"(?:-(?P<pre>alpha|beta|rc)\.(?P<pre_n>0|[1-9]\d{0,3}))?$"
)
_PRE_ORDER = {"alpha": 0, "beta": 1, "rc": 2}


class InvalidVersionError(ConfigError):
    """A string that is not a Talos release tag."""


@dataclass(frozen=True, order=False)
class TalosVersion:
    major: int
    minor: int
    patch: int
    pre: str | None = None
    pre_n: int = 0

    @classmethod
    def parse(cls, tag: str) -> TalosVersion:
        match = _TAG.match(tag) if isinstance(tag, str) else None
        if not match:
            raise InvalidVersionError(
                f"{tag!r} is not a Talos release tag: expected vMAJOR.MINOR.PATCH, optionally "
                "with -alpha.N, -beta.N or -rc.N (for example v1.12.0 or v1.13.0-beta.1)"
            )
        return cls(
            int(match["major"]),
            int(match["minor"]),
            int(match["patch"]),
            match["pre"],
            int(match["pre_n"] or 0),
        )

    @classmethod
    def is_valid(cls, tag: str) -> bool:
        return isinstance(tag, str) and bool(_TAG.match(tag))

    @property
    def tag(self) -> str:
        base = f"v{self.major}.{self.minor}.{self.patch}"
        return f"{base}-{self.pre}.{self.pre_n}" if self.pre else base

    @property
    def minor_line(self) -> str:
        """The `vMAJOR.MINOR` name used by the per-minor alias (`talos/v1.12`)."""
        return f"v{self.major}.{self.minor}"

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None

    def sort_key(self) -> tuple[int, int, int, int, int]:
        pre_rank = (_PRE_ORDER[self.pre], self.pre_n) if self.pre else (3, 0)
        return (self.major, self.minor, self.patch, *pre_rank)

    def __lt__(self, other: TalosVersion) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: TalosVersion) -> bool:
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: TalosVersion) -> bool:
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: TalosVersion) -> bool:
        return self.sort_key() >= other.sort_key()

    def __str__(self) -> str:
        return self.tag


def sorted_tags(tags: list[str]) -> list[str]:
    """Tags in release order, oldest first."""
    return [v.tag for v in sorted(TalosVersion.parse(t) for t in tags)]


def parse_timestamp(value: str) -> datetime:
    """Parse GitHub's `2025-12-22T18:05:12Z` into an aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"{value!r} is not an ISO 8601 timestamp like 2025-12-22T18:05:12Z") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def serial_for(published_at: str) -> str:
    """The simplestreams version key (`YYYYMMDD_HH:MM`, UTC) Incus shows as the image serial."""
    return parse_timestamp(published_at).strftime("%Y%m%d_%H:%M")
