"""The catalog: rendered from the product records actually in the store, written last.

No run edits the catalog in place: every rebuild lists all records and renders both documents
(`streams/v1/images.json`, then `streams/v1/index.json`) from them, deterministically.

Concurrent runs: no lost update
-------------------------------
Two runs that publish different versions at the same time both rebuild. A rebuild is an
optimistic transaction on the store, the same code for the directory and the S3 store:

1. read images.json and index.json together with the ETag of exactly those bytes
   (`Store.read_with_etag`);
2. list the records (keys and ETags), load them, render both documents;
3. write images.json, then index.json, each as a compare-and-swap against the ETag read in 1
   (`Store.put_if`: conditional PutObject with `If-Match`, or `If-None-Match: *` when the
   document does not exist yet; the directory store takes an `fcntl` lock around the check and
   the rename). A document that already holds the rendered bytes is not written at all, so an
   unchanged catalog stays byte-identical and keeps its ETag;
4. list the records again; if they changed while we rendered, start over.

A compare-and-swap fails only when another rebuild wrote in between; the loser starts over at 1
and renders again from a fresh listing, so an older rendering never overwrites a newer one.
Every run writes its record *before* it rebuilds, hence whichever rebuild writes last listed the
records after every other run's record existed: the final catalog names all of them. Step 4
makes each writer re-check its own result, which keeps that true even on a store whose
conditional writes are not atomic (moto checks and writes in two steps) or are ignored. Conflicts
back off with jitter; after `MAX_ATTEMPTS` the rebuild gives up with a `StoreError` (nothing
half-written: both documents are each some complete rendering).

Runs killed at any point
------------------------
Every object write is atomic (rename, or a single PutObject), and a record is written only after
every object it names is stored, so a killed run leaves either the previous catalog or a new one
that is complete; the next rebuild (a rerun, any other publish, `publish_catalog`, prune)
converges. One window remains because the catalog is two objects: killed between the
images.json and the index.json write, images.json (where Incus reads products from) is already
the complete new catalog while index.json still lists the previous product set, until the next
rebuild rewrites it. `verify` reports that state; serving is unaffected.

Retention
---------
Before a catalog naming a file goes out, the file is taken off prune's orphan ledger
(`ledger.forget_orphans`), so a file that comes back into the catalog gets a full grace period
again when it leaves.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import StoreError
from .images import IMAGES_KEY, INDEX_KEY, RECORDS_PREFIX
from .ledger import forget_orphans
from .records import ProductRecord
from .simplestreams import render_catalog
from .stores import ObjectMissing, Store

MAX_ATTEMPTS = 30
RECORD_CACHE_KEY = "state/catalog-records.json"
RECORD_CACHE_SCHEMA = 1


def record_listing(store: Store) -> dict[str, str]:
    """Record keys and their ETags: what a rendering was made from."""
    return {key: info.etag for key, info in store.list_info(RECORDS_PREFIX).items() if key.endswith(".json")}


def _read_cache(store: Store) -> dict[str, tuple[str, ProductRecord]]:
    """The parsed records of the last rebuild by key, with the ETag each was read at."""
    try:
        body = json.loads(store.read_bytes(RECORD_CACHE_KEY))
        if body.get("schema") != RECORD_CACHE_SCHEMA:
            return {}
        return {
            key: (entry["etag"], ProductRecord.from_dict(entry["record"])) for key, entry in body["records"].items()
        }
    except (ObjectMissing, ValueError, TypeError, KeyError, AttributeError):
        return {}  # no cache, or an unusable one: every record is read again


def _write_cache(store: Store, entries: dict[str, tuple[str, ProductRecord]]) -> None:
    records = {key: {"etag": etag, "record": record.to_dict()} for key, (etag, record) in sorted(entries.items())}
    body = {"schema": RECORD_CACHE_SCHEMA, "records": records}
    store.put_bytes(RECORD_CACHE_KEY, (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode())


def load_records(
    store: Store, listing: dict[str, str] | None = None, *, remember: bool = False
) -> tuple[list[ProductRecord], list[str]]:
    """Every product record in the store (or in `listing`: key → ETag), and the problems that kept
    others out. Records whose ETag matches the record cache are not read again; `remember` writes
    the cache back when it changed (the catalog rebuild does; read-only commands do not)."""
    listing = record_listing(store) if listing is None else listing
    cached = _read_cache(store)
    entries: dict[str, tuple[str, ProductRecord]] = {}
    problems = []
    for key, etag in sorted(listing.items()):
        hit = cached.get(key)
        if hit is not None and hit[0] == etag:
            entries[key] = hit
            continue
        found = store.read_with_etag(key)
        if found is None:
            continue  # removed since the listing (prune); the next listing shows it
        try:
            entries[key] = (found[1], ProductRecord.from_json(found[0]))
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{key}: unreadable product record ({exc})")
    if remember and entries != cached:
        _write_cache(store, entries)
    return [record for _etag, record in entries.values()], problems


@dataclass(frozen=True)
class CatalogResult:
    records: list[ProductRecord]
    problems: list[str]
    index: bytes
    images: bytes
    written: bool = False
    """Whether this rebuild changed the catalog (False: it already said exactly this)."""
    attempts: int = 1


def _pause(attempt: int) -> None:
    time.sleep(random.uniform(0.01, min(1.0, 0.02 * 2**attempt)))


def rebuild_catalog(
    store: Store,
    variant_order: list[str],
    *,
    log: Callable[[str], None] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> CatalogResult:
    """Render the catalog from the records in the store and publish it (images.json, then
    index.json), safely against concurrent rebuilds; see the module docstring."""
    for attempt in range(1, max_attempts + 1):
        images_now = store.read_with_etag(IMAGES_KEY)
        index_now = store.read_with_etag(INDEX_KEY)
        listing = record_listing(store)
        records, problems = load_records(store, listing, remember=True)
        index, images = render_catalog(records, variant_order)
        written, conflict = False, False
        if images_now is None or images_now[0] != images:
            forget_orphans(store, {key for record in records for key in record.object_keys()})
            if store.put_if(IMAGES_KEY, images, images_now[1] if images_now else None):
                written = True
            else:
                conflict = True
        if not conflict and (index_now is None or index_now[0] != index):
            if store.put_if(INDEX_KEY, index, index_now[1] if index_now else None):
                written = True
            else:
                conflict = True
        if not conflict and record_listing(store) == listing:
            return CatalogResult(records, problems, index, images, written=written, attempts=attempt)
        if log:
            reason = "another run wrote the catalog" if conflict else "records changed while rendering"
            log(f"catalog: {reason}; rebuilding again (attempt {attempt + 1})")
        _pause(attempt)
    raise StoreError(
        f"could not publish the catalog in {store.describe()} after {max_attempts} attempts: other runs kept "
        "changing it; the catalog in place is complete but may miss the newest records; rerun the "
        "publish_catalog job"
    )
