"""Retention: which products leave the catalog, and when files out of the catalog are deleted.

`prune_store` does two things, in this order:

1. **Products.** With a policy, each product line (arch × variant) keeps the newest `keep`
   versions and/or, per minor line (`v1.12`), the newest `keep_per_minor` versions; a version
   either rule keeps stays. The newest stable version of every line is always kept, so
   `talos/latest` never disappears. The records of the other versions are deleted and the
   catalog is rebuilt (with the concurrency-safe `rebuild_catalog`). Without a policy no product
   is dropped and only the collection below runs.
2. **Files.** Every key under `images/` and `state/` that no record and no catalog names is an
   orphan: the files of dropped products, and leftovers of killed runs or of rebuilt images whose
   bytes changed. An orphan is deleted only once it has been out of the catalog for at least
   `grace_seconds` (an hour by default: Incus caches the index and keeps asking for what it
   named, see docs/incus-simplestreams.md). When a file was first seen orphaned is kept in the
   ledger `state/orphans.json` (`{"orphans": {key: unix time}}`), so the first prune after a drop
   records and a later one deletes; a file's own modification time counts too when it is later (a file re-uploaded after
   an earlier sighting starts over). `rebuild_catalog` takes files off the ledger when a catalog
   names them again, and any file a record or the catalog names is never touched. Right before
   deleting, prune re-reads the records and the catalog.
   Temporaries (unfinished multipart uploads, staging objects, `.tmp` files of killed runs) are
   removed once older than the same grace (an upload's age counts from its latest part, so the
   grace must exceed the longest single disk download).

Nothing but `images/<version>/…`, `state/<version>/…` and dropped `records/` is ever deleted. A catalog
that cannot be read, or an unreadable record, stops deletions (of everything, respectively of
that record's image directory) rather than guessing. `dry_run` changes nothing and reports what
would go.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .catalog import rebuild_catalog
from .errors import ConfigError
from .images import IMAGES_KEY, RECORDS_PREFIX, release_state_key
from .ledger import ORPHANS_KEY, ledger_bytes, read_ledger
from .records import ProductRecord
from .settings import SETTING_BY_NAME, Settings
from .simplestreams import read_images
from .stores import ObjectMissing, Store
from .versions import TalosVersion

MANAGED_PREFIXES = ("images/", "state/")
DEFAULT_GRACE_SECONDS = float(SETTING_BY_NAME["prune_grace_seconds"].default)
Log = Callable[[str], None]


@dataclass(frozen=True)
class RetentionPolicy:
    keep: int | None = None
    keep_per_minor: int | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        """`TALOS_PRUNE_KEEP`, `TALOS_PRUNE_KEEP_PER_MINOR`, `TALOS_PRUNE_GRACE_SECONDS`."""
        return cls(settings.prune_keep, settings.prune_keep_per_minor, settings.prune_grace_seconds).validated()

    def validated(self) -> RetentionPolicy:
        for name, value in (("--keep", self.keep), ("--keep-per-minor", self.keep_per_minor)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} {value!r}: keep at least 1 version (omit it to keep every version)")
        if self.grace_seconds < 0:
            raise ConfigError(f"--grace-seconds {self.grace_seconds!r} is negative")
        return self

    @property
    def drops_products(self) -> bool:
        return self.keep is not None or self.keep_per_minor is not None


def plan_retention(
    records: Iterable[ProductRecord], policy: RetentionPolicy
) -> tuple[list[ProductRecord], list[ProductRecord]]:
    """(kept, dropped) records under the policy; see the module docstring."""
    records = list(records)
    if not policy.drops_products:
        return records, []
    lines: dict[tuple[str, str], list[ProductRecord]] = defaultdict(list)
    for record in records:
        lines[(record.arch, record.variant)].append(record)
    kept: list[ProductRecord] = []
    dropped: list[ProductRecord] = []
    for line in lines.values():
        newest_first = sorted(line, key=lambda r: TalosVersion.parse(r.version), reverse=True)
        keep: set[str] = set()
        if policy.keep is not None:
            keep |= {r.version for r in newest_first[: policy.keep]}
        if policy.keep_per_minor is not None:
            minors: dict[str, list[ProductRecord]] = defaultdict(list)
            for record in newest_first:
                minors[TalosVersion.parse(record.version).minor_line].append(record)
            for group in minors.values():
                keep |= {r.version for r in group[: policy.keep_per_minor]}
        stable = [r for r in newest_first if not TalosVersion.parse(r.version).is_prerelease]
        if stable:
            keep.add(stable[0].version)
        for record in line:
            (kept if record.version in keep else dropped).append(record)
    return sorted(kept, key=_product_key), sorted(dropped, key=_product_key)


def _product_key(record: ProductRecord) -> str:
    return record.product_key


# -- what is named -------------------------------------------------------------------------
def _named(records: Iterable[ProductRecord]) -> set[str]:
    keys = set()
    for record in records:
        keys |= set(record.object_keys())
        keys.add(record.image.state_key)
        keys.add(release_state_key(record.version, record.arch))
    return keys


def _catalog_files(store: Store) -> set[str]:
    """Every path, signature and attestation images.json names (raises ValueError when it cannot be read)."""
    found = store.read_with_etag(IMAGES_KEY)
    if found is None:
        return set()
    reading = read_images(found[0])
    if reading.problems:
        raise ValueError("; ".join(reading.problems))
    keys = set()
    for image in reading.images:
        keys |= {image.metadata.path, image.disk.path}
        keys |= {item.signature for item in (image.metadata, image.disk) if item.signature}
        keys |= {item.attestation for item in (image.metadata, image.disk) if item.attestation}
    return keys


def _load_all(store: Store) -> tuple[dict[str, ProductRecord], list[str]]:
    records, unreadable = {}, []
    for key in store.list_keys(RECORDS_PREFIX):
        if not key.endswith(".json"):
            continue
        try:
            records[key] = ProductRecord.from_json(store.read_bytes(key))
        except (ValueError, TypeError, KeyError):
            unreadable.append(key)
        except ObjectMissing:
            continue  # removed between listing and reading
    return records, unreadable


def _managed(key: str) -> bool:
    """`images/<version>/…` and `state/<version>/…` only: other state (ledgers, cursors) is not ours."""
    parts = key.split("/")
    return len(parts) >= 3 and parts[0] in ("images", "state") and TalosVersion.is_valid(parts[1])


def _protected_prefixes(unreadable: list[str]) -> tuple[str, ...]:
    """An unreadable record (corrupt, or a newer schema) may name anything in its image directory."""
    prefixes = []
    for key in unreadable:
        parts = key[len(RECORDS_PREFIX) :].removesuffix(".json").split("/")
        if len(parts) == 3:
            version, arch, _variant = parts
            prefixes += [f"images/{version}/{arch}/", f"state/{version}/{arch}/"]
        else:
            prefixes += list(MANAGED_PREFIXES)
    return tuple(prefixes)


# -- the report ----------------------------------------------------------------------------
def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PruneReport:
    store: str
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    waiting: dict[str, float] = field(default_factory=dict)
    """Orphans not yet deletable → when they will be."""
    temporaries_removed: list[str] = field(default_factory=list)
    temporaries_waiting: dict[str, float] = field(default_factory=dict)
    catalog_products: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        would = "would be " if self.dry_run else ""
        lines = [f"prune of {self.store}" + (" (dry run: nothing was changed)" if self.dry_run else "")]
        lines.append(f"products: {len(self.kept)} kept, {len(self.dropped)} {would}dropped from the catalog")
        lines += [f"  drop    {p}" for p in self.dropped]
        if self.catalog_products is not None:
            lines.append(f"catalog rebuilt: {self.catalog_products} products")
        lines.append(
            f"files out of the catalog: {len(self.deleted)} {would}deleted, {len(self.waiting)} within the grace period"
        )
        lines += [f"  delete  {k}" for k in self.deleted]
        lines += [f"  keep    {k} (deletable after {_when(t)})" for k, t in sorted(self.waiting.items())]
        lines.append(
            f"interrupted uploads: {len(self.temporaries_removed)} {would}removed, "
            f"{len(self.temporaries_waiting)} within the grace period"
        )
        lines += [f"  remove  {k}" for k in self.temporaries_removed]
        lines += [f"  keep    {k} (removable after {_when(t)})" for k, t in sorted(self.temporaries_waiting.items())]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------
def prune_store(
    store: Store,
    policy: RetentionPolicy,
    variant_order: list[str],
    *,
    dry_run: bool = False,
    now: float | None = None,
    log: Log | None = None,
) -> PruneReport:
    policy.validated()
    now = time.time() if now is None else now
    say = log or (lambda message: None)
    report = PruneReport(store=store.describe(), dry_run=dry_run)

    records, unreadable = _load_all(store)
    report.problems += [f"{key}: unreadable product record; its image directory is left alone" for key in unreadable]
    try:
        in_catalog = _catalog_files(store)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        report.problems.append(f"{IMAGES_KEY} cannot be read ({exc}); no file is deleted until it can")
        in_catalog = None
    named_before = _named(records.values()) | (in_catalog or set())

    kept, dropped = plan_retention(records.values(), policy)
    report.kept = [r.product_key for r in kept]
    report.dropped = [r.product_key for r in dropped]
    if dropped:
        say(f"{'would drop' if dry_run else 'dropping'} {len(dropped)} products: {', '.join(report.dropped)}")
    if dropped and not dry_run:
        store.delete_many([r.image.record_key for r in dropped])
        result = rebuild_catalog(store, variant_order, log=say)
        report.catalog_products = len(result.records)
        report.problems += result.problems

    if dry_run:  # what the catalog would name after the rebuild (no rebuild: what it names now)
        live = _named(kept) | (set() if dropped else in_catalog or set())
    else:
        records, unreadable = _load_all(store)  # fresh: runs may have published meanwhile
        try:
            live = _named(records.values()) | _catalog_files(store)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            report.problems.append(f"{IMAGES_KEY} cannot be read ({exc}); no file is deleted until it can")
            in_catalog = None
            live = set()
    protected = _protected_prefixes(unreadable)

    candidates = {}
    for prefix in MANAGED_PREFIXES:
        for key, info in store.list_info(prefix).items():
            if _managed(key) and key not in live and not key.startswith(protected):
                candidates[key] = info
    ledger, ledger_etag = read_ledger(store)
    since = {}
    for key, info in candidates.items():
        first_seen = now if key in named_before else ledger.get(key, now)
        modified = min(info.modified if info.modified is not None else now, now)
        since[key] = max(first_seen, modified)
    deletable = sorted(k for k, t in since.items() if now - t >= policy.grace_seconds)
    if in_catalog is None:  # liveness unknown: delete nothing, record nothing
        deletable, since = [], {}

    if deletable and not dry_run:
        fresh, _ = _load_all(store)
        try:
            still_named = _named(fresh.values()) | _catalog_files(store)
        except (ValueError, KeyError, TypeError, AttributeError):
            still_named = set(deletable)
        deletable = [k for k in deletable if k not in still_named]
        since = {k: t for k, t in since.items() if k not in still_named}
        say(f"deleting {len(deletable)} files out of the catalog for {policy.grace_seconds:.0f}s or more")
        store.delete_many(deletable)
    report.deleted = deletable
    gone = set(deletable)
    report.waiting = {k: t + policy.grace_seconds for k, t in since.items() if k not in gone}

    if not dry_run and in_catalog is not None:
        orphans = {k: since[k] for k in report.waiting}
        if orphans != ledger and not store.put_if(ORPHANS_KEY, ledger_bytes(orphans), ledger_etag):
            say(f"{ORPHANS_KEY} changed under us (another prune?); new sightings are recorded next time")

    for temporary in store.temporaries():
        if now - temporary.modified >= policy.grace_seconds:
            if not dry_run:
                store.remove_temporary(temporary)
            report.temporaries_removed.append(temporary.name)
        else:
            report.temporaries_waiting[temporary.name] = temporary.modified + policy.grace_seconds
    return report
