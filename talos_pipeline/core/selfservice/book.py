"""Self-service requests and variants in the store: the state every replica and process shares.

    requests/<id>.json       one request: what was asked, by which token (a fingerprint, never the
                             token), and its status (queued → building → published | failed)
    requests/variants.json   the self-service variants the pipeline builds besides TALOS_VARIANTS

`serve/` creates a request (a create-only write), the pipeline's sensor moves it along and adds
its variant to the set; every change is a compare-and-swap on the object (`Store.put_if`), so
N server replicas and the Dagster daemon never overwrite each other's news. Retention
(`core/prune.py`) manages `images/` and `state/` only and never touches `requests/`; `serve/`
serves store objects only when the catalog names them, which it never does for these.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ..errors import StoreError
from ..stores import Store
from ..variants import Variant
from ..versions import TalosVersion
from .spec import RequestRejected, RequestSpec, spec_from_dict

REQUESTS_PREFIX = "requests/"
VARIANTS_KEY = "requests/variants.json"
_REQUEST_KEY = re.compile(r"^requests/(?P<id>[0-9a-f]{16})\.json$")
_REQUEST_ID = re.compile(r"^[0-9a-f]{16}$")
SCHEMA = 1
CAS_ATTEMPTS = 20


class Status(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    PUBLISHED = "published"
    FAILED = "failed"


PENDING = frozenset({Status.QUEUED, Status.BUILDING})


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_fingerprint(token: str) -> str:
    """How the store names a token's requests (for the pending limit) without holding the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def new_request_id() -> str:
    return secrets.token_hex(8)


def is_request_id(value: str) -> bool:
    return bool(_REQUEST_ID.match(value))


def request_key(request_id: str) -> str:
    return f"{REQUESTS_PREFIX}{request_id}.json"


@dataclass(frozen=True)
class SelfServiceRequest:
    id: str
    spec: RequestSpec
    requester: str
    created_at: str
    updated_at: str
    status: Status = Status.QUEUED
    schematic_id: str | None = None
    versions: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    reason: str | None = None

    @classmethod
    def new(cls, spec: RequestSpec, requester: str) -> SelfServiceRequest:
        now = utc_now()
        return cls(id=new_request_id(), spec=spec, requester=requester, created_at=now, updated_at=now)

    @property
    def key(self) -> str:
        return request_key(self.id)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pending(self) -> bool:
        return self.status in PENDING

    def moved(self, status: Status, **changes: Any) -> SelfServiceRequest:
        return replace(self, status=status, updated_at=utc_now(), **changes)

    def to_json(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "id": self.id,
            "request": self.spec.to_dict(),
            "requester": self.requester,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": str(self.status),
            "schematic_id": self.schematic_id,
            "versions": list(self.versions),
            "arches": list(self.arches),
            "aliases": list(self.aliases),
            "reason": self.reason,
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> SelfServiceRequest:
        """Raises ValueError, KeyError, TypeError or `RequestRejected` on anything unusable."""
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("schema") != SCHEMA or not is_request_id(str(body.get("id"))):
            raise ValueError("not a self-service request of this schema")
        return cls(
            id=str(body["id"]),
            spec=spec_from_dict(body["request"]),
            requester=str(body["requester"]),
            created_at=str(body["created_at"]),
            updated_at=str(body["updated_at"]),
            status=Status(body["status"]),
            schematic_id=body.get("schematic_id"),
            versions=tuple(str(v) for v in body.get("versions") or ()),
            arches=tuple(str(a) for a in body.get("arches") or ()),
            aliases=tuple(str(a) for a in body.get("aliases") or ()),
            reason=body.get("reason"),
        )

    def public(self) -> dict[str, Any]:
        """What `GET /requests/<id>` answers (the requester's fingerprint stays in the store)."""
        return {
            "id": self.id,
            "name": self.name,
            "platform": self.spec.platform,
            "status": str(self.status),
            "extensions": list(self.spec.extensions),
            "kernel_args": list(self.spec.kernel_args),
            "schematic_id": self.schematic_id,
            "versions": list(self.versions),
            "arches": list(self.arches),
            "aliases": list(self.aliases),
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status_url": f"/requests/{self.id}",
        }


def create_request(store: Store, request: SelfServiceRequest) -> None:
    if not store.put_if(request.key, request.to_json(), None):
        raise StoreError(f"{request.key} already exists in {store.describe()}; submit the request again")


def read_request(store: Store, request_id: str) -> SelfServiceRequest | None:
    if not is_request_id(request_id):
        return None
    found = store.read_with_etag(request_key(request_id))
    return _parsed(found[0]) if found else None


def _parsed(data: bytes) -> SelfServiceRequest | None:
    try:
        return SelfServiceRequest.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError, RequestRejected):
        return None  # not ours, or a spec that no longer passes the rules: left out, never served


def update_request(
    store: Store, request_id: str, change: Callable[[SelfServiceRequest], SelfServiceRequest | None]
) -> SelfServiceRequest | None:
    """Apply `change` to the stored request by compare-and-swap (None from `change`: leave it)."""
    for _ in range(CAS_ATTEMPTS):
        found = store.read_with_etag(request_key(request_id))
        current = _parsed(found[0]) if found else None
        if found is None or current is None:
            return None
        updated = change(current)
        if updated is None or updated == current:
            return current
        if store.put_if(current.key, updated.to_json(), found[1]):
            return updated
        time.sleep(0.02)
    raise StoreError(f"{request_key(request_id)} in {store.describe()} keeps changing; try again")


@dataclass
class RequestBook:
    """Every request in the store, re-read only where the listing's ETag changed (a cache per process)."""

    store: Store
    _cache: dict[str, tuple[str, SelfServiceRequest | None]] = field(default_factory=dict)

    def all(self) -> list[SelfServiceRequest]:
        """Oldest first; unreadable objects are left out."""
        listing = {k: info.etag for k, info in self.store.list_info(REQUESTS_PREFIX).items() if _REQUEST_KEY.match(k)}
        fresh: dict[str, tuple[str, SelfServiceRequest | None]] = {}
        for key, etag in listing.items():
            cached = self._cache.get(key)
            if cached is not None and cached[0] == etag:
                fresh[key] = cached
                continue
            found = self.store.read_with_etag(key)
            if found is not None:
                fresh[key] = (found[1], _parsed(found[0]))
        self._cache = fresh
        requests = [request for _etag, request in fresh.values() if request is not None]
        return sorted(requests, key=lambda r: (r.created_at, r.id))


# -- the self-service variants -------------------------------------------------------------
@dataclass(frozen=True)
class SelfServiceVariant:
    """A variant the pipeline builds because a request asked for it."""

    name: str
    platform: str
    schematic_id: str
    extensions: tuple[str, ...]
    kernel_args: tuple[str, ...]
    request_id: str

    def variant(self) -> Variant:
        return Variant(name=self.name, platform=self.platform, schematic=self.schematic_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "schematic_id": self.schematic_id,
            "extensions": list(self.extensions),
            "kernel_args": list(self.kernel_args),
            "request_id": self.request_id,
        }

    @classmethod
    def from_dict(cls, name: str, body: dict[str, Any]) -> SelfServiceVariant:
        return cls(
            name=name,
            platform=str(body["platform"]),
            schematic_id=str(body["schematic_id"]),
            extensions=tuple(str(e) for e in body.get("extensions") or ()),
            kernel_args=tuple(str(a) for a in body.get("kernel_args") or ()),
            request_id=str(body.get("request_id", "")),
        )


def _read_variant_set(store: Store) -> tuple[dict[str, SelfServiceVariant], str | None]:
    found = store.read_with_etag(VARIANTS_KEY)
    if found is None:
        return {}, None
    try:
        body = json.loads(found[0])
        variants = {
            str(name): SelfServiceVariant.from_dict(str(name), entry) for name, entry in body["variants"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(
            f"{VARIANTS_KEY} in {store.describe()} is unreadable ({exc}); restore it from a backup or delete it "
            "(the self-service variants are then no longer followed)"
        ) from None
    return variants, found[1]


def read_variant_set(store: Store) -> dict[str, SelfServiceVariant]:
    return _read_variant_set(store)[0]


def add_variant(store: Store, variant: SelfServiceVariant) -> SelfServiceVariant:
    """Add `variant` to the set; the variant already holding its name when there is one."""
    for _ in range(CAS_ATTEMPTS):
        variants, etag = _read_variant_set(store)
        if variant.name in variants:
            return variants[variant.name]
        variants[variant.name] = variant
        body = {"schema": SCHEMA, "variants": {name: v.to_dict() for name, v in sorted(variants.items())}}
        if store.put_if(VARIANTS_KEY, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), etag):
            return variant
        time.sleep(0.02)
    raise StoreError(f"{VARIANTS_KEY} in {store.describe()} keeps changing; the request stays queued")


def target_versions(versions: Iterable[str], count: int) -> list[str]:
    """The newest `count` stable versions among `versions` (those in the catalog), newest first:
    what a new request is built for."""
    stable = {v for v in versions if TalosVersion.is_valid(v) and not TalosVersion.parse(v).is_prerelease}
    return sorted(stable, key=TalosVersion.parse, reverse=True)[:count]
