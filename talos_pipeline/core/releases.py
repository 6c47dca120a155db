"""Which upstream releases exist, which the factory offers, and which are published here."""

from __future__ import annotations

import pandas as pd

from .catalog import load_records
from .settings import Settings
from .store import open_store
from .upstream import FactoryClient, ReleasesClient
from .versions import TalosVersion


def release_rows(settings: Settings) -> list[dict]:
    releases = ReleasesClient(settings.releases_url, settings.github_token).list_releases().releases
    offered = set(FactoryClient(settings.factory_url).versions())
    records, _ = load_records(open_store(settings.store))
    published: dict[str, list[str]] = {}
    for record in records:
        published.setdefault(record.version, []).append(f"{record.arch}/{record.variant}")
    rows = []
    for release in releases:
        tag = release.get("tag_name", "")
        valid = TalosVersion.is_valid(tag)
        rows.append(
            {
                "version": tag,
                "published_at": release.get("published_at") or "(draft)",
                "prerelease": bool(release.get("prerelease")) or (valid and TalosVersion.parse(tag).is_prerelease),
                "factory": "yes" if tag in offered else "no",
                "published_here": ", ".join(sorted(published.get(tag, []))) or "-",
                "note": "" if valid else "not a Talos release tag: ignored",
            }
        )
    rows.sort(
        key=lambda r: TalosVersion.parse(r["version"]).sort_key() if TalosVersion.is_valid(r["version"]) else (0,),
        reverse=True,
    )
    return rows


def release_table(settings: Settings | None = None) -> str:
    rows = release_rows(settings or Settings.from_env())
    if not rows:
        return "no releases found"
    return pd.DataFrame(rows).to_string(index=False)
