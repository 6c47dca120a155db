"""`talos-pipeline releases`: upstream releases, factory availability, publication status."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.versions import TalosVersion

from .base import EXIT_OK, say

COLUMNS = ("version", "published_at", "prerelease", "factory", "published_here", "note")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("releases", help="upstream releases, factory availability, publication status")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    say(release_table(Settings.from_env()))
    return EXIT_OK


def release_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per GitHub release, newest first: is it a release tag, does the factory offer it,
    which arch/variant of it this store publishes."""
    releases = ReleasesClient.from_settings(settings).list_releases().releases
    offered = set(FactoryClient.from_settings(settings).versions())
    records, _ = load_records(open_store(settings.store, settings))
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


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart, a header line; trailing blanks trimmed."""
    cells = [list(columns)] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def release_table(settings: Settings) -> str:
    rows = release_rows(settings)
    return format_table(rows, COLUMNS) if rows else "no releases found"
