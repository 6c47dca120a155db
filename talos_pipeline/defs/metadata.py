"""Metadata the Dagster UI renders well: typed tables, short hashes, bullet lists.

Table cells are plain values (Dagster 1.13's `TableRecord` holds str, int, float, bool; the UI
prints each cell as text), so numbers stay numbers (sortable in exports, typed in the schema
dialog), a hash is shortened in the table and given in full in a JSON entry next to it, and a
URL becomes its own `MetadataValue.url` entry, which the UI renders as a link.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

import dagster as dg

SHORT_HASH = 12


def short(digest: str | None) -> str:
    """A hash as the tables show it; the full value goes in a JSON entry."""
    return digest[:SHORT_HASH] if digest else "-"


def column(name: str, kind: str = "string", description: str | None = None) -> dg.TableColumn:
    return dg.TableColumn(name, kind, description=description)


def _cell(value: Any) -> Any:
    """Settings' modes are `StrEnum`s; the event log stores plain values only."""
    return value.value if isinstance(value, Enum) else value


def table(columns: Sequence[dg.TableColumn], rows: Iterable[Mapping[str, Any]]) -> dg.TableMetadataValue:
    """A table of `rows` with `columns` (each row has a value for each column name)."""
    records = [dg.TableRecord({c.name: _cell(row[c.name]) for c in columns}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=list(columns)))


def bullets(lines: Iterable[str], empty: str = "none") -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) or empty)


def links(urls: Mapping[str, str]) -> dict[str, dg.UrlMetadataValue]:
    """One URL entry per name (e.g. `upstream/nocloud`): the UI links these, not table cells."""
    return {name: dg.MetadataValue.url(url) for name, url in urls.items() if url}
