"""The orphan ledger: when each file that no catalog names was first seen orphaned.

Retention (`prune.py`) deletes a file only after it has been out of the catalog for a grace
period; the catalog rebuild (`catalog.py`) takes a file off the ledger when a catalog names it
again, so a file that comes back gets a full grace period when it leaves next time. Stored as
`state/orphans.json` (`{"orphans": {key: unix time}}`) and updated by compare-and-swap.
"""

from __future__ import annotations

import json
import time

from .errors import StoreError
from .stores import Store

ORPHANS_KEY = "state/orphans.json"


def read_ledger(store: Store) -> tuple[dict[str, float], str | None]:
    """First-seen-orphaned times by key, and the ETag to write the ledger back with."""
    found = store.read_with_etag(ORPHANS_KEY)
    if found is None:
        return {}, None
    try:
        orphans = json.loads(found[0]).get("orphans", {})
        return {str(k): float(v) for k, v in orphans.items()}, found[1]
    except (ValueError, AttributeError, TypeError):
        return {}, found[1]  # unreadable: start over (later sightings only delay deletion)


def ledger_bytes(orphans: dict[str, float]) -> bytes:
    body = {"orphans": dict(sorted(orphans.items()))}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def forget_orphans(store: Store, keys: set[str], attempts: int = 20) -> None:
    """Take `keys` off the ledger (they are named again); a compare-and-swap loop."""
    for _ in range(attempts):
        ledger, etag = read_ledger(store)
        back = keys & ledger.keys()
        if not back:
            return
        for key in back:
            del ledger[key]
        if store.put_if(ORPHANS_KEY, ledger_bytes(ledger), etag):
            return
        time.sleep(0.02)
    raise StoreError(f"{ORPHANS_KEY} in {store.describe()} keeps changing; is a prune running in a loop?")
