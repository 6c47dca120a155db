"""The catalog: rendered from the product records actually in the store, written last.

No run edits the catalog in place: each rebuild lists every record, so two runs that publish
different versions both end up in it once the later rebuild finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .images import IMAGES_KEY, INDEX_KEY, RECORDS_PREFIX
from .records import ProductRecord
from .simplestreams import render_catalog
from .store import Store


def load_records(store: Store) -> tuple[list[ProductRecord], list[str]]:
    """Every product record in the store, and the problems that kept others out."""
    records, problems = [], []
    for key in store.list_keys(RECORDS_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            record = ProductRecord.from_json(store.read_bytes(key))
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{key}: unreadable product record ({exc})")
            continue
        missing = [k for k in record.object_keys() if not store.exists(k)]
        if missing:
            problems.append(f"{key}: left out, objects missing: {', '.join(missing)}")
            continue
        records.append(record)
    return records, problems


@dataclass(frozen=True)
class CatalogResult:
    records: list[ProductRecord]
    problems: list[str]
    index: bytes
    images: bytes


def rebuild_catalog(store: Store, variant_order: list[str]) -> CatalogResult:
    """Render the catalog from the records in the store and write it (images.json, then index.json)."""
    records, problems = load_records(store)
    index, images = render_catalog(records, variant_order)
    store.put_bytes(IMAGES_KEY, images)
    store.put_bytes(INDEX_KEY, index)
    return CatalogResult(records=records, problems=problems, index=index, images=images)
