"""The simplestreams catalog as `serve/` holds it: the two documents in memory, and the allow-list.

`CatalogHolder` keeps `streams/v1/index.json` and `streams/v1/images.json` as bytes with a strong
ETag (the quoted sha256 of the bytes) and revalidates them against the store's own `stat().etag`
at most every `refresh_seconds`, so a newly published catalog is picked up without a restart and
N replicas reading one store converge within that interval. Nothing is kept anywhere but memory.

From images.json it derives everything a request may touch:

* `files`: every `path` and `signature` of every item → what the catalog says about it. A request
  path reaches the store only when it is an exact key of this map.
* `by_triple` / `aliases`: `(version, variant, arch)` and `(alias, arch)` → image, for direct URL
  import (`/talos/<version>[/<variant>]/<arch>`); the default variant of a version is the product
  that owns the alias `talos/<version>` for that arch.
* `unified`: `(version, arch, variant, unified_sha256)` → image, the only unified tarballs served.

Entries that leave the catalog stay reachable for `retain_seconds` (an hour by default), because
Incus caches the index for an hour and will still ask for the files it named (DESIGN.md: "files
that leave the catalog stay downloadable for at least an hour"). That memory is per process: a
replica started after the change only knows the current catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from talos_pipeline.core.errors import StoreError
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.stores import Store, check_key
from talos_pipeline.core.variants import ARCHES
from talos_pipeline.core.versions import TalosVersion

log = logging.getLogger("serve.catalog")

HEX64 = re.compile(r"^[0-9a-f]{64}$")
UPSTREAM_PATH = re.compile(r"^image/[0-9a-f]{64}/v[0-9][^/]*/[a-z0-9]+-(amd64|arm64)\.qcow2$")
VARIANT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
PLATFORM_NAME = re.compile(r"^[a-z0-9]+$")

METADATA_FTYPE = "incus.tar.xz"
DISK_FTYPE = "disk-kvm.img"


class CatalogError(Exception):
    """The catalog in the store cannot be read or is not a catalog."""


class CatalogMissing(CatalogError):
    """Nothing has been published into the store yet."""


def strong_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


@dataclass(frozen=True)
class Document:
    """One catalog document as served: its bytes and their strong ETag."""

    body: bytes
    etag: str


@dataclass(frozen=True)
class Image:
    """One published image (a product at one version key), as the catalog describes it."""

    product: str
    version: str
    arch: str
    variant: str
    serial: str
    metadata_path: str
    metadata_sha256: str
    metadata_size: int
    disk_path: str
    disk_sha256: str
    disk_size: int
    unified_sha256: str
    unified_size: int
    upstream_path: str | None  # `talos_upstream_path`: the disk is not in the store, proxy it
    factory_path: str | None  # where the factory serves this disk (for TALOS_DISK_MODE=proxy)

    @property
    def label(self) -> str:
        return f"Talos {self.version} {self.arch} ({self.variant})"

    @property
    def unified_url_path(self) -> str:
        return f"/unified/{self.version}/{self.arch}/{self.variant}/{self.unified_sha256}.tar"


@dataclass(frozen=True)
class CatalogFile:
    """A store key the catalog names. Signature bundles carry no size or sha256 in the catalog."""

    path: str
    kind: str  # "metadata" | "disk" | "signature"
    image: Image
    size: int | None
    sha256: str | None

    @property
    def immutable(self) -> bool:
        """Content-addressed objects (their sha256 is in the name) never change bytes."""
        return self.sha256 is not None


@dataclass
class Snapshot:
    index: Document
    images: Document
    store_etags: tuple[str | None, str | None]
    files: dict[str, CatalogFile] = field(default_factory=dict)
    by_triple: dict[tuple[str, str, str], Image] = field(default_factory=dict)
    aliases: dict[tuple[str, str], Image] = field(default_factory=dict)
    unified: dict[tuple[str, str, str, str], Image] = field(default_factory=dict)
    products: int = 0
    problems: list[str] = field(default_factory=list)

    # --- what exists, for helpful 404s
    def arches(self) -> list[str]:
        return sorted({arch for (_v, _var, arch) in self.by_triple})

    def versions_for(self, arch: str) -> list[str]:
        versions = {v for (v, _var, a) in self.by_triple if a == arch}
        return sorted(versions, key=TalosVersion.parse, reverse=True)

    def variants_for(self, version: str, arch: str) -> list[str]:
        return sorted(var for (v, var, a) in self.by_triple if v == version and a == arch)

    def resolve(self, name: str, arch: str) -> Image | None:
        """`<version>` or `<version>/<variant>` (or any other alias tail, e.g. `latest`, `v1.12`)."""
        parts = name.split("/")
        if len(parts) == 2 and (image := self.by_triple.get((parts[0], parts[1], arch))):
            return image
        return self.aliases.get((f"talos/{name}", arch))


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _hex(value, what: str) -> str:
    if not isinstance(value, str) or not HEX64.match(value):
        raise ValueError(f"{what} is not a sha256: {value!r}")
    return value


def _path(value, what: str) -> str:
    try:
        return check_key(value)
    except StoreError:
        raise ValueError(f"{what} is not a plain store path: {value!r}") from None


def _image_from(product_key: str, product: dict, serial: str, items: dict) -> tuple[Image, dict, dict]:
    version = product.get("release")
    arch = product.get("arch")
    variant = product.get("variant")
    if not TalosVersion.is_valid(version):
        raise ValueError(f"release {version!r} is not a Talos version tag")
    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHES)}")
    if not isinstance(variant, str) or not VARIANT_NAME.match(variant):
        raise ValueError(f"variant {variant!r} is not a variant name")
    if not isinstance(items, dict):
        raise ValueError("items is not an object")
    metadata = next((i for i in items.values() if isinstance(i, dict) and i.get("ftype") == METADATA_FTYPE), None)
    disk = next((i for i in items.values() if isinstance(i, dict) and i.get("ftype") == DISK_FTYPE), None)
    if metadata is None or disk is None:
        raise ValueError(f"needs one {METADATA_FTYPE} and one {DISK_FTYPE} item")
    upstream = disk.get("talos_upstream_path")
    if upstream is not None and (not isinstance(upstream, str) or not UPSTREAM_PATH.match(upstream)):
        raise ValueError(f"talos_upstream_path {upstream!r} is not an Image Factory qcow2 path")
    factory_path = None
    schematic, platform = product.get("talos_schematic"), product.get("talos_platform")
    if isinstance(schematic, str) and isinstance(platform, str) and PLATFORM_NAME.match(platform):
        candidate = f"image/{schematic}/{version}/{platform}-{arch}.qcow2"
        factory_path = candidate if UPSTREAM_PATH.match(candidate) else None
    image = Image(
        product=product_key,
        version=version,
        arch=arch,
        variant=variant,
        serial=serial,
        metadata_path=_path(metadata.get("path"), "metadata path"),
        metadata_sha256=_hex(metadata.get("sha256"), "metadata sha256"),
        metadata_size=_int(metadata.get("size"), "metadata size"),
        disk_path=_path(disk.get("path"), "disk path"),
        disk_sha256=_hex(disk.get("sha256"), "disk sha256"),
        disk_size=_int(disk.get("size"), "disk size"),
        unified_sha256=_hex(disk.get("unified_sha256"), "unified_sha256"),
        unified_size=_int(disk.get("unified_size"), "unified_size"),
        upstream_path=upstream,
        factory_path=upstream or factory_path,
    )
    return image, metadata, disk


def parse_catalog(index: bytes, images: bytes, store_etags: tuple[str | None, str | None] = (None, None)) -> Snapshot:
    """Validate both documents and derive the allow-list. Bad products are left out (and named)."""
    try:
        index_body = json.loads(index)
        images_body = json.loads(images)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"the catalog is not valid JSON ({exc})") from None
    if not isinstance(index_body, dict) or not isinstance(index_body.get("index"), dict):
        raise CatalogError(f"{INDEX_KEY} has no `index` object")
    products = images_body.get("products") if isinstance(images_body, dict) else None
    if not isinstance(products, dict):
        raise CatalogError(f"{IMAGES_KEY} has no `products` object")

    snapshot = Snapshot(
        index=Document(index, strong_etag(index)),
        images=Document(images, strong_etag(images)),
        store_etags=store_etags,
        products=len(products),
    )
    for product_key, product in products.items():
        if not isinstance(product, dict) or not isinstance(product.get("versions"), dict):
            snapshot.problems.append(f"product {product_key!r}: no versions")
            continue
        newest: Image | None = None
        for serial in sorted(product["versions"]):
            entry = product["versions"][serial]
            try:
                image, metadata, disk = _image_from(product_key, product, serial, (entry or {}).get("items"))
            except (ValueError, AttributeError, TypeError) as exc:
                snapshot.problems.append(f"product {product_key!r} version {serial!r}: {exc}; left out")
                continue
            newest = image
            snapshot.unified[(image.version, image.arch, image.variant, image.unified_sha256)] = image
            snapshot.files[image.metadata_path] = CatalogFile(
                image.metadata_path, "metadata", image, image.metadata_size, image.metadata_sha256
            )
            # A proxied disk is not in the store, but its path is still the URL Incus asks for.
            snapshot.files[image.disk_path] = CatalogFile(
                image.disk_path, "disk", image, image.disk_size, image.disk_sha256
            )
            for item in (metadata, disk):
                signature = item.get("signature")
                if signature is None:
                    continue
                try:
                    key = _path(signature, "signature")
                except ValueError as exc:
                    snapshot.problems.append(f"product {product_key!r}: {exc}; left out")
                    continue
                snapshot.files[key] = CatalogFile(key, "signature", image, None, None)
        if newest is None:
            continue
        snapshot.by_triple[(newest.version, newest.variant, newest.arch)] = newest
        aliases = product.get("aliases", "")
        if isinstance(aliases, str):
            for alias in filter(None, (a.strip() for a in aliases.split(","))):
                snapshot.aliases.setdefault((alias, newest.arch), newest)
    return snapshot


class CatalogHolder:
    """The current catalog of one process, revalidated against the store at most every N seconds.

    Failures never replace a good catalog: the last one keeps being served, `error` says what
    went wrong (for the log) and `public_error` says it without naming the store (for clients).
    """

    def __init__(
        self,
        store: Store,
        *,
        refresh_seconds: float = 2.0,
        retain_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.retain_seconds = retain_seconds
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self.public_error: str | None = None
        self.loads = 0
        self._checked = -math.inf
        self._lock = threading.Lock()
        self._retired_files: dict[str, tuple[CatalogFile, float]] = {}
        self._retired_unified: dict[tuple[str, str, str, str], tuple[Image, float]] = {}

    @property
    def due(self) -> bool:
        return self.clock() - self._checked >= self.refresh_seconds

    def current(self) -> Snapshot | None:
        """The catalog, revalidated if due (blocking: call it from a worker thread)."""
        if not self.due:
            return self.snapshot
        # One refresher at a time; the others keep serving the catalog they have (if any).
        if not self._lock.acquire(blocking=self.snapshot is None):
            return self.snapshot
        try:
            if self.due:
                self._refresh()
        finally:
            self._lock.release()
        return self.snapshot

    def _refresh(self) -> None:
        try:
            infos = (self.store.stat(INDEX_KEY), self.store.stat(IMAGES_KEY))
            if infos[0] is None or infos[1] is None:
                raise CatalogMissing(
                    f"no catalog in the store at {self.store.describe()} ({INDEX_KEY} or {IMAGES_KEY} is missing); "
                    "publish something first (talos-pipeline publish VERSION)"
                )
            etags = (infos[0].etag, infos[1].etag)
            if self.snapshot is not None and etags == self.snapshot.store_etags:
                self._ok()
                return
            # images.json first: the publisher writes it before index.json.
            images = self.store.read_bytes(IMAGES_KEY)
            index = self.store.read_bytes(INDEX_KEY)
            snapshot = parse_catalog(index, images, etags)
        except Exception as exc:
            self._checked = self.clock()
            message = str(exc) if isinstance(exc, (CatalogError, StoreError)) else f"{type(exc).__name__}: {exc}"
            if message != self.error:
                log.error(
                    "catalog: %s (%s)", message, "serving the previous catalog" if self.snapshot else "nothing to serve"
                )
            self.error = message
            self.public_error = (
                "no catalog has been published yet" if isinstance(exc, CatalogMissing)
                else "the catalog cannot be read from the store"
            )  # fmt: skip
            return
        for problem in snapshot.problems:
            log.warning("catalog: %s", problem)
        self._replace(snapshot)
        self._ok()
        self.loads += 1
        log.info(
            "catalog: loaded %d products, %d files (images.json %s)",
            snapshot.products,
            len(snapshot.files),
            snapshot.images.etag,
        )

    def _ok(self) -> None:
        self._checked = self.clock()
        if self.error is not None:
            log.info("catalog: readable again")
        self.error = self.public_error = None

    def _replace(self, new: Snapshot) -> None:
        now = self.clock()
        old, self.snapshot = self.snapshot, new
        if old is not None:
            expires = now + self.retain_seconds
            for key, entry in old.files.items():
                if key not in new.files:
                    self._retired_files[key] = (entry, expires)
            for key, image in old.unified.items():
                if key not in new.unified:
                    self._retired_unified[key] = (image, expires)
        for retired, current in ((self._retired_files, new.files), (self._retired_unified, new.unified)):
            for key in [k for k, (_e, until) in retired.items() if k in current or until <= now]:
                del retired[key]

    # --- lookups (after `current()` has run for this request)
    def file(self, key: str) -> CatalogFile | None:
        if self.snapshot is not None and (entry := self.snapshot.files.get(key)):
            return entry
        retired = self._retired_files.get(key)
        return retired[0] if retired and retired[1] > self.clock() else None

    def unified(self, key: tuple[str, str, str, str]) -> Image | None:
        if self.snapshot is not None and (image := self.snapshot.unified.get(key)):
            return image
        retired = self._retired_unified.get(key)
        return retired[0] if retired and retired[1] > self.clock() else None
