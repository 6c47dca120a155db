"""The simplestreams catalog as `serve/` holds it: the two documents in memory, and the allow-list.

`CatalogHolder` keeps `streams/v1/index.json` and `streams/v1/images.json` as bytes with a strong
ETag (the quoted sha256 of the bytes), each also gzip-compressed once per catalog change for
clients that accept it (Incus does: Go's HTTP client asks for gzip), and revalidates them
against the store's own `stat().etag` at most every `refresh_seconds`, so a newly published
catalog is picked up without a restart and N replicas reading one store converge within that
interval. Nothing is kept anywhere but memory.

images.json is read by the one reader of the project (`core.simplestreams.read_images`, the same
one `verify`, `prune` and the asset checks use); from its images this module derives everything a
request may touch:

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

import gzip
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from talos_pipeline.core.errors import StoreError
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.simplestreams import CatalogFormatError, CatalogImage, read_images, read_index_products
from talos_pipeline.core.stores import Store
from talos_pipeline.core.versions import TalosVersion

from .http import CATALOG_CACHE, accepts_gzip, http_date, strong_etag

log = logging.getLogger("serve.catalog")


class CatalogError(Exception):
    """The catalog in the store cannot be read or is not a catalog."""


class CatalogMissing(CatalogError):
    """Nothing has been published into the store yet."""


def header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


def unified_url_path(image: CatalogImage) -> str:
    """Where this server streams the image's unified tarball (its name is the tarball's sha256)."""
    return f"/unified/{image.version}/{image.arch}/{image.variant}/{image.unified_sha256}.tar"


GZIP_LEVEL = 6
VARY = "Accept-Encoding"


@dataclass(frozen=True)
class Representation:
    """A document in one content coding: its bytes, their strong ETag, and the raw response
    headers the server's fast path sends (304: `fast_headers`; 200: `fast_body_headers`)."""

    body: bytes
    etag: str
    encoding: str | None
    headers: tuple[tuple[str, str], ...]
    """What every answer of this representation carries (ETag, Cache-Control, Vary, ...)."""
    fast_headers: bytes
    fast_body_headers: bytes

    @classmethod
    def of(
        cls, body: bytes, etag: str, encoding: str | None, headers: list[tuple[str, str]], content_type: str
    ) -> Representation:
        common = [("etag", etag), *headers, ("vary", VARY)]
        if encoding:
            common.append(("content-encoding", encoding))
        raw = [(name.encode(), value.encode()) for name, value in common]
        body_headers = [*raw, (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        return cls(body, etag, encoding, tuple(common), header_lines(raw), header_lines(body_headers))


@dataclass(frozen=True)
class Document:
    """A document served from memory (the catalog documents, the page): as given and gzipped,
    both made once; `pick` chooses by the request's Accept-Encoding. The gzip representation's
    ETag is the identity one with `-gzip` (a cache must not take one for the other)."""

    identity: Representation
    gzipped: Representation
    written_at: float | None = None

    @property
    def body(self) -> bytes:
        return self.identity.body

    @property
    def etag(self) -> str:
        return self.identity.etag

    @classmethod
    def of(
        cls,
        body: bytes,
        written_at: float | None,
        *,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (("cache-control", CATALOG_CACHE),),
    ) -> Document:
        etag = strong_etag(body)
        common = list(headers)
        if written_at:
            common.append(("last-modified", http_date(written_at)))
        compressed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        return cls(
            Representation.of(body, etag, None, common, content_type),
            Representation.of(compressed, etag[:-1] + '-gzip"', "gzip", common, content_type),
            written_at,
        )

    def pick(self, accept_encoding: str | None) -> Representation:
        return self.gzipped if accepts_gzip(accept_encoding) else self.identity


@dataclass(frozen=True)
class CatalogFile:
    """A store key the catalog names. Signature bundles carry no size or sha256 in the catalog."""

    path: str
    kind: str  # "metadata" | "disk" | "signature"
    image: CatalogImage
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
    by_triple: dict[tuple[str, str, str], CatalogImage] = field(default_factory=dict)
    aliases: dict[tuple[str, str], CatalogImage] = field(default_factory=dict)
    unified: dict[tuple[str, str, str, str], CatalogImage] = field(default_factory=dict)
    products: int = 0
    problems: list[str] = field(default_factory=list)
    written_at: float | None = None
    """When images.json was written to the store (its modification time, when the store says)."""

    # --- what exists, for helpful 404s
    def arches(self) -> list[str]:
        return sorted({arch for (_v, _var, arch) in self.by_triple})

    def versions_for(self, arch: str) -> list[str]:
        versions = {v for (v, _var, a) in self.by_triple if a == arch}
        return sorted(versions, key=TalosVersion.parse, reverse=True)

    def variants_for(self, version: str, arch: str) -> list[str]:
        return sorted(var for (v, var, a) in self.by_triple if v == version and a == arch)

    def resolve(self, name: str, arch: str) -> CatalogImage | None:
        """`<version>` or `<version>/<variant>` (or any other alias tail, e.g. `latest`, `v1.12`)."""
        parts = name.split("/")
        if len(parts) == 2 and (image := self.by_triple.get((parts[0], parts[1], arch))):
            return image
        return self.aliases.get((f"talos/{name}", arch))

    def add(self, image: CatalogImage) -> None:
        """Allow the image's files and unified tarball (every version key of a product is served)."""
        self.unified[(image.version, image.arch, image.variant, image.unified_sha256)] = image
        for kind, item in (("metadata", image.metadata), ("disk", image.disk)):
            # A proxied disk is not in the store, but its path is still the URL Incus asks for.
            self.files[item.path] = CatalogFile(item.path, kind, image, item.size, item.sha256)
            for bundle in (item.signature, item.attestation):  # Sigstore bundles, re-made on re-signing
                if bundle is not None:
                    self.files[bundle] = CatalogFile(bundle, "signature", image, None, None)


def parse_catalog(
    index: bytes,
    images: bytes,
    store_etags: tuple[str | None, str | None] = (None, None),
    written_at: float | None = None,
) -> Snapshot:
    """Validate both documents and derive the allow-list. Bad products are left out (and named)."""
    try:
        read_index_products(index)
        reading = read_images(images)
    except CatalogFormatError as exc:
        raise CatalogError(str(exc)) from None
    snapshot = Snapshot(
        index=Document.of(index, written_at),
        images=Document.of(images, written_at),
        store_etags=store_etags,
        written_at=written_at,
        products=len(reading.product_keys),
        problems=list(reading.problems),
    )
    newest: dict[str, CatalogImage] = {}
    for image in reading.images:  # oldest version key first within each product
        snapshot.add(image)
        newest[image.product] = image
    for image in newest.values():
        snapshot.by_triple[(image.version, image.variant, image.arch)] = image
        for alias in image.aliases:
            snapshot.aliases.setdefault((alias, image.arch), image)
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
        self._refreshing = False
        self._retired_files: dict[str, tuple[CatalogFile, float]] = {}
        self._retired_unified: dict[tuple[str, str, str, str], tuple[CatalogImage, float]] = {}

    @property
    def due(self) -> bool:
        """Time to revalidate (False while another request is already doing it)."""
        return not self._refreshing and self.clock() - self._checked >= self.refresh_seconds

    def claim(self) -> bool:
        """Whether the caller should revalidate now (`current()` on a thread); one caller at a
        time is told so, the others keep serving the catalog in memory meanwhile."""
        if not self.due:
            return False
        self._refreshing = True
        return True

    def current(self) -> Snapshot | None:
        """The catalog, revalidated if due (blocking: call it from a worker thread)."""
        with self._lock:
            try:
                if self.clock() - self._checked >= self.refresh_seconds:
                    self._refresh()
            finally:
                self._refreshing = False
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
            snapshot = parse_catalog(index, images, etags, infos[1].modified)
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

    def unified(self, key: tuple[str, str, str, str]) -> CatalogImage | None:
        if self.snapshot is not None and (image := self.snapshot.unified.get(key)):
            return image
        retired = self._retired_unified.get(key)
        return retired[0] if retired and retired[1] > self.clock() else None
