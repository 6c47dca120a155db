"""What is known about one Talos release: GitHub's facts, cross-checked with the factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UpstreamError
from .versions import TalosVersion, serial_for


@dataclass(frozen=True)
class ReleaseFacts:
    """What GitHub and the factory say about one Talos release."""

    version: str
    published_at: str
    prerelease: bool
    html_url: str = ""
    factory_versions_url: str = ""
    """The factory's `/versions` the release was checked against, and its answer (for the provenance)."""
    factory_versions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "factory_versions", tuple(self.factory_versions))

    @property
    def serial(self) -> str:
        return serial_for(self.published_at)

    @classmethod
    def from_github(cls, body: dict[str, Any]) -> ReleaseFacts:
        """From one object of GitHub's releases API; a draft (no `published_at`) is an error."""
        tag = body.get("tag_name", "")
        version = TalosVersion.parse(tag)
        published_at = body.get("published_at")
        if not published_at or body.get("draft"):
            raise UpstreamError(
                f"Talos {tag} is still a draft release (no published_at); try again once it is published"
            )
        return cls(
            version=version.tag,
            published_at=published_at,
            prerelease=bool(body.get("prerelease")) or version.is_prerelease,
            html_url=body.get("html_url", ""),
        )
