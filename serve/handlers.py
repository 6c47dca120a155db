"""The handlers: catalog documents, catalog files, direct URL import, unified tarballs, health.

`Handlers` holds what they share: the catalog holder, the counters and (optionally) the factory
proxy. A request path reaches the store only when it is an exact key of the catalog's allow-list
(`snapshot.py`); nothing is looked up on a filesystem, and the proxy's host is always the
configured factory URL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.media import content_type_for
from talos_pipeline.core.metadata import UnifiedLayout, layout_for, read_metadata_yaml
from talos_pipeline.core.settings import DiskMode
from talos_pipeline.core.simplestreams import CatalogImage
from talos_pipeline.core.stores import ObjectMissing, Store
from talos_pipeline.core.variants import ARCHES

from .bodies import BodyResponse, BytesPart, StorePart, StreamPart, concatenate, verified
from .guard import FastAnswer, text_response
from .http import CATALOG_CACHE, IMMUTABLE_CACHE, NO_STORE, SIGNATURE_CACHE, Unsatisfiable, etag_matches, parse_range
from .metrics import Metrics
from .snapshot import CatalogFile, CatalogHolder, Document, Snapshot, unified_url_path
from .upstream import FactoryProxy, UpstreamProblem, UpstreamSizeDrift

log = logging.getLogger("serve")

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")
_PUBLIC_URL = re.compile(r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNIFIED = re.compile(r"^/unified/(?P<version>[^/]+)/(?P<arch>[^/]+)/(?P<variant>[^/]+)/(?P<sha>[0-9a-f]{64})\.tar$")
_DOCUMENTS = {"/streams/v1/index.json": "index", "/streams/v1/images.json": "images"}


def check_public_url(public_url: str | None) -> str | None:
    if public_url is None or public_url == "":
        return None
    if not _PUBLIC_URL.match(public_url):
        raise ConfigError(
            f"TALOS_PUBLIC_URL={public_url!r} is not a base URL like https://images.example.com[:port][/prefix]"
        )
    return public_url.rstrip("/")


class BadRequest(Exception):
    pass


class Handlers:
    """The route handlers, sharing one catalog holder, metrics and (optionally) a factory proxy."""

    def __init__(
        self,
        store: Store,
        *,
        public_url: str | None,
        disk_mode: DiskMode | str,
        factory_url: str | None,
        refresh_seconds: float,
        retain_seconds: float,
        verify_reads: bool,
    ) -> None:
        self.store = store
        self.public_url = check_public_url(public_url)
        self.disk_mode = DiskMode(disk_mode)
        self.verify_reads = verify_reads
        self.catalog = CatalogHolder(store, refresh_seconds=refresh_seconds, retain_seconds=retain_seconds)
        self.metrics = Metrics()
        self.proxy = FactoryProxy(factory_url) if factory_url else None
        self._layouts: dict[tuple[str, int], UnifiedLayout] = {}

    # ---- catalog access
    async def snapshot(self) -> Snapshot | None:
        if not self.catalog.due:
            return self.catalog.snapshot
        return await anyio.to_thread.run_sync(self.catalog.current)

    def unavailable(self) -> Response:
        return text_response(503, f"the catalog is unavailable: {self.catalog.public_error or 'not loaded yet'}",
                     {"Retry-After": "5"})  # fmt: skip

    # ---- responses with conditional requests and ranges
    def _ranged(
        self,
        request: Request,
        size: int,
        headers: dict[str, str],
        body: Callable[[int, int], Iterator[bytes]],
        *,
        ranges: bool = True,
        verify: tuple[str, Callable[[int, str], None]] | None = None,
    ) -> Response:
        etag = headers["ETag"]
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": headers["Cache-Control"]})
        span = None
        if ranges:
            if_range = request.headers.get("if-range")
            if if_range is None or if_range.strip() == etag:
                try:
                    span = parse_range(request.headers.get("range"), size)
                except Unsatisfiable:
                    return text_response(416, f"range not satisfiable: the object has {size} bytes",
                                 {"Content-Range": f"bytes */{size}", "ETag": etag})  # fmt: skip
        start, end = span if span is not None else (0, size)
        headers = dict(headers)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        iterator = body(start, end)
        if span is None and verify is not None:
            iterator = verified(iterator, verify[0], size, verify[1])
        return BodyResponse(iterator, status, headers)

    def fast_document(self, scope: Scope) -> FastAnswer | None:
        """The catalog documents, answered below the framework: they are most of the requests.

        Only when the catalog in memory is fresh; otherwise the routes below revalidate it.
        """
        name = _DOCUMENTS.get(scope["path"])
        snapshot = self.catalog.snapshot
        if name is None or snapshot is None or self.catalog.due:
            return None
        doc: Document = getattr(snapshot, name)
        etag = doc.etag.encode()
        cache = (b"cache-control", CATALOG_CACHE.encode())
        wanted = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if wanted is not None and etag_matches(wanted.decode("latin-1"), doc.etag):
            return 304, [(b"etag", etag), cache], b""
        headers = [
            (b"etag", etag),
            cache,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(doc.body)).encode()),
        ]
        return 200, headers, b"" if scope["method"] == "HEAD" else doc.body

    @staticmethod
    def _document(request: Request, doc: Document) -> Response:
        headers = {"ETag": doc.etag, "Cache-Control": CATALOG_CACHE, "Content-Type": "application/json"}
        if etag_matches(request.headers.get("if-none-match"), doc.etag):
            return Response(status_code=304, headers={"ETag": doc.etag, "Cache-Control": CATALOG_CACHE})
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(len(doc.body))})
        return Response(doc.body, status_code=200, headers=headers)

    # ---- integrity problems: log at ERROR, count, and say what to do
    def _drift(self, image: CatalogImage, url: str, what: str) -> None:
        self.metrics.bump("proxy_drift")
        log.error(
            "proxy drift: %s (version=%s arch=%s variant=%s): %s %s, but the catalog says %d bytes with sha256 %s; "
            "the response was cut off before its end. The factory rebuilt this image: republish it "
            "(talos-pipeline publish %s --arch %s --variant %s) or use TALOS_DISK_MODE=mirror",
            image.label, image.version, image.arch, image.variant, url, what, image.disk.size, image.disk.sha256,
            image.version, image.arch, image.variant,
        )  # fmt: skip

    def _drift_handler(self, image: CatalogImage, url: str, unified: bool) -> Callable[[int, str], None]:
        def handler(size: int, sha: str) -> None:
            if unified:
                what = f"served a disk that makes a unified tarball of {size} bytes with sha256 {sha} " \
                       f"(the catalog says {image.unified_sha256})"  # fmt: skip
            else:
                what = f"served {size} bytes with sha256 {sha}"
            self._drift(image, url, what)

        return handler

    def _corrupt(self, what: str, image: CatalogImage) -> Callable[[int, str], None]:
        def handler(size: int, sha: str) -> None:
            self.metrics.bump("store_corrupt")
            log.error(
                "store corrupt: %s of %s (version=%s arch=%s variant=%s) read back as %d bytes with sha256 %s, "
                "not what the catalog says; the response was cut off. Run `talos-pipeline verify` and republish",
                what, image.label, image.version, image.arch, image.variant, size, sha,
            )  # fmt: skip

        return handler

    def _missing(self, key: str, image: CatalogImage) -> Response:
        self.metrics.bump("store_missing")
        log.error("store missing: %s (named by the catalog for %s) is not in the store at %s",
                  key, image.label, self.store.describe())  # fmt: skip
        return text_response(404, f"/{key} is named by the catalog but missing from the store")

    def _mismatch(self, key: str, image: CatalogImage, size: int, expected: int) -> Response:
        self.metrics.bump("store_corrupt")
        log.error("store corrupt: %s (%s) has %d bytes, the catalog says %d", key, image.label, size, expected)
        return text_response(500, f"/{key}: the stored object does not match the catalog; the operator has been told")

    def _proxied(self, image: CatalogImage) -> bool:
        return image.upstream_path is not None or (self.disk_mode is DiskMode.PROXY and image.factory_path is not None)

    async def _open_upstream(self, image: CatalogImage) -> tuple[str, object] | Response:
        if self.proxy is None:
            log.error("%s is proxied from the Image Factory but no factory URL is configured", image.label)
            return text_response(
                503, "this image is served from the Image Factory, but TALOS_FACTORY_URL is not configured"
            )
        try:
            return await anyio.to_thread.run_sync(self.proxy.open, image.factory_path, image.disk.size)
        except UpstreamSizeDrift as exc:
            self._drift(image, exc.url, f"announces {exc.size} bytes")
            return text_response(502, f"the Image Factory no longer serves the published bytes of {image.label}")
        except UpstreamProblem as exc:
            self.metrics.bump("proxy_upstream_errors")
            log.error("proxy: %s: %s", image.label, exc)
            return text_response(502, f"the Image Factory did not deliver {image.label}; try again later")

    def _upstream_chunks(self, image: CatalogImage, url: str, response) -> Iterator[bytes]:
        def on_error(received: int, exc: BaseException) -> None:
            self.metrics.bump("proxy_upstream_errors")
            log.error("proxy: %s: %s failed after %d of %d bytes (%s: %s)",
                      image.label, url, received, image.disk.size, type(exc).__name__, exc)  # fmt: skip

        return FactoryProxy.chunks(url, response, on_error)

    # ---- routes
    async def index(self, request: Request) -> Response:
        snapshot = await self.snapshot()
        return self._document(request, snapshot.index) if snapshot else self.unavailable()

    async def images(self, request: Request) -> Response:
        snapshot = await self.snapshot()
        return self._document(request, snapshot.images) if snapshot else self.unavailable()

    async def healthz(self, request: Request) -> Response:
        snapshot = await self.snapshot()
        body = {
            "status": "ok" if snapshot is not None and self.catalog.error is None else "unavailable",
            "products": snapshot.products if snapshot else 0,
            "files": len(snapshot.files) if snapshot else 0,
            "catalog_etag": snapshot.images.etag if snapshot else None,
            "index_etag": snapshot.index.etag if snapshot else None,
            "disk_mode": self.disk_mode,
            "metrics": dict(self.metrics),
        }
        if self.catalog.error:
            body["error"] = self.catalog.public_error
        status = 200 if body["status"] == "ok" else 503
        return JSONResponse(body, status_code=status, headers={"Cache-Control": NO_STORE})

    async def landing(self, request: Request) -> Response:
        try:
            base = self.base_url(request)
        except BadRequest:
            base = "https://<this server>"
        return text_response(
            200,
            "Talos Linux images for Incus.\n\n"
            f"  incus remote add talos {base} --protocol simplestreams --public\n"
            "  incus launch talos:talos/<version> node1 --vm -c security.secureboot=false\n\n"
            f"Direct import: incus image import {base}/talos/<version>[/<variant>]/<arch> --alias talos\n"
            f"Catalog: {base}/streams/v1/images.json\n",
        )

    async def file(self, request: Request) -> Response:
        snapshot = await self.snapshot()
        if snapshot is None:
            return self.unavailable()
        key = request.scope["path"][1:]
        entry = self.catalog.file(key)
        if entry is None:
            return text_response(404, f"/{key} is not in the catalog (see /streams/v1/images.json)")
        if entry.kind == "disk" and self._proxied(entry.image):
            return await self._proxied_file(request, entry)
        info = await anyio.to_thread.run_sync(self.store.stat, key)
        if info is None:
            return self._missing(key, entry.image)
        if entry.size is not None and info.size != entry.size:
            return self._mismatch(key, entry.image, info.size, entry.size)
        headers = {
            "ETag": f'"{entry.sha256}"' if entry.sha256 else info.etag,
            "Cache-Control": IMMUTABLE_CACHE if entry.immutable else SIGNATURE_CACHE,
            "Content-Type": content_type_for(key),
            "Accept-Ranges": "bytes",
        }
        verify = None
        if self.verify_reads and entry.sha256:
            verify = (entry.sha256, self._corrupt(key, entry.image))

        def body(start: int, end: int) -> Iterator[bytes]:
            return concatenate([StorePart(self.store, key, info.size)], start, end)

        return self._ranged(request, info.size, headers, body, verify=verify)

    async def _proxied_file(self, request: Request, entry: CatalogFile) -> Response:
        image = entry.image
        headers = {
            "ETag": f'"{image.disk.sha256}"',
            "Cache-Control": IMMUTABLE_CACHE,
            "Content-Type": content_type_for(entry.path),
        }
        return await self._stream_proxied(request, image, headers, image.disk.size, image.disk.sha256)

    async def _stream_proxied(
        self,
        request: Request,
        image: CatalogImage,
        headers: dict[str, str],
        size: int,
        sha256: str,
        around: tuple[bytes, bytes] | None = None,
    ) -> Response:
        """A disk from the factory (bare, or wrapped `around` as the unified tarball): no ranges,
        hashed as it streams and cut off before its end if it is not what the catalog says."""
        headers["Accept-Ranges"] = "none"
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers={"ETag": headers["ETag"], "Cache-Control": IMMUTABLE_CACHE})
        headers["Content-Length"] = str(size)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        opened = await self._open_upstream(image)
        if isinstance(opened, Response):
            return opened
        url, response = opened
        prefix, suffix = around or (b"", b"")
        disk = StreamPart(self._upstream_chunks(image, url, response), image.disk.size)
        parts = [BytesPart(prefix), disk, BytesPart(suffix)]
        drift = self._drift_handler(image, url, unified=around is not None)
        return BodyResponse(verified(concatenate(parts), sha256, size, drift), 200, headers)

    # ---- direct URL import
    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        scheme = request.scope.get("scheme", "http")
        if scheme not in ("http", "https"):
            raise BadRequest(f"unsupported scheme {scheme!r}")
        hosts = request.headers.getlist("host")
        if len(hosts) > 1:
            raise BadRequest("more than one Host header")
        if not hosts:
            server = request.scope.get("server")
            if not server:
                raise BadRequest("no Host header")
            host, port = server
            hosts = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        if not _HOST.match(hosts[0]):
            raise BadRequest("the Host header is not a host name or address (with an optional port)")
        return f"{scheme}://{hosts[0]}"

    async def direct(self, request: Request) -> Response:
        snapshot = await self.snapshot()
        if snapshot is None:
            return self.unavailable()
        parts = request.path_params["rest"].split("/")
        if not 2 <= len(parts) <= 3 or not all(_NAME_PART.match(p) for p in parts):
            return text_response(
                404,
                "direct import URLs look like /talos/<version>/<arch> or /talos/<version>/<variant>/<arch>, "
                "e.g. /talos/v1.12.0/amd64",
            )
        name, arch = "/".join(parts[:-1]), parts[-1]
        image = snapshot.resolve(name, arch)
        if image is None:
            return text_response(404, self._explain_missing(snapshot, parts[:-1], arch))
        try:
            base = self.base_url(request)
        except BadRequest as exc:
            return text_response(400, f"bad request: {exc}; set TALOS_PUBLIC_URL on the server to fix the public URL")
        url = base + unified_url_path(image)
        headers = {
            "Incus-Image-Hash": image.unified_sha256,
            "Incus-Image-URL": url,
            "Cache-Control": "no-cache",
        }
        body = (
            f"{image.label}, serial {image.serial}: a unified Incus image (metadata.yaml + rootfs.img)\n"
            f"  url:    {url}\n  sha256: {image.unified_sha256}\n  size:   {image.unified_size}\n\n"
            f"Import it with: incus image import {base}{request.scope['path']} --alias talos-{image.version}\n"
            f"Then: incus launch talos-{image.version} node1 --vm -c security.secureboot=false\n"
        )
        return text_response(200, body, headers)  # for HEAD the server sends the headers only

    @staticmethod
    def _explain_missing(snapshot: Snapshot, name: list[str], arch: str) -> str:
        arches = snapshot.arches()
        if arch not in arches:
            known = ", ".join(arches) or "none yet"
            hint = f" ({arch!r} is not an architecture: use {' or '.join(ARCHES)})" if arch not in ARCHES else ""
            return f"nothing is published for architecture {arch!r}{hint}; published architectures: {known}"
        versions = snapshot.versions_for(arch)
        version = name[0]
        if (version, arch) not in {(v, a) for (v, _var, a) in snapshot.by_triple}:
            return (
                f"Talos {version} is not published for {arch}. Published versions for {arch} (newest first): "
                f"{', '.join(versions)}. Also: latest, vMAJOR.MINOR (e.g. /talos/latest/{arch})"
            )
        variants = snapshot.variants_for(version, arch)
        return (
            f"variant {name[-1]!r} of Talos {version} is not published for {arch}; "
            f"published variants: {', '.join(variants)} (e.g. /talos/{version}/{variants[0]}/{arch})"
        )

    # ---- unified tarball
    def _layout(self, image: CatalogImage) -> UnifiedLayout:
        """The tar header bytes around the disk, rebuilt from the published metadata tarball."""
        cache_key = (image.metadata.sha256, image.disk.size)
        layout = self._layouts.get(cache_key)
        if layout is None:
            tarball = self.store.read_bytes(image.metadata.path)
            if sha256_hex(tarball) != image.metadata.sha256:
                raise ValueError(f"{image.metadata.path} does not match its sha256 {image.metadata.sha256}")
            yaml, mtime = read_metadata_yaml(tarball)
            layout = layout_for(yaml, mtime, image.disk.size)
            if len(self._layouts) >= 256:
                self._layouts.clear()
            self._layouts[cache_key] = layout
        if layout.size != image.unified_size:
            raise ValueError(
                f"the unified tarball would have {layout.size} bytes, the catalog says {image.unified_size}"
            )
        return layout

    async def unified(self, request: Request) -> Response:
        match = _UNIFIED.match(request.scope["path"])
        snapshot = await self.snapshot()
        if snapshot is None:
            return self.unavailable()
        image = self.catalog.unified(match.group("version", "arch", "variant", "sha")) if match else None
        if image is None:
            return text_response(404, "no such unified image: it is not (or no longer) in the catalog; ask "
                              "/talos/<version>[/<variant>]/<arch> for the current one")  # fmt: skip
        try:
            layout = await anyio.to_thread.run_sync(self._layout, image)
        except ObjectMissing:
            return self._missing(image.metadata.path, image)
        except Exception as exc:
            self.metrics.bump("store_corrupt")
            log.error("store corrupt: unified tarball of %s: %s", image.label, exc)
            return text_response(500, f"the unified image of {image.label} cannot be built; the operator has been told")
        name = f"talos-{image.version}-{image.arch}-{image.variant}.tar"
        headers = {
            "ETag": f'"{image.unified_sha256}"',
            "Cache-Control": IMMUTABLE_CACHE,
            "Content-Type": "application/x-tar",
            "Content-Disposition": f'attachment; filename="{name}"',
        }
        if self._proxied(image):
            return await self._stream_proxied(request, image, headers, image.unified_size, image.unified_sha256,
                                              around=(layout.prefix, layout.suffix))  # fmt: skip
        prefix, suffix = BytesPart(layout.prefix), BytesPart(layout.suffix)
        info = await anyio.to_thread.run_sync(self.store.stat, image.disk.path)
        if info is None:
            return self._missing(image.disk.path, image)
        if info.size != image.disk.size:
            return self._mismatch(image.disk.path, image, info.size, image.disk.size)
        headers["Accept-Ranges"] = "bytes"
        parts = [prefix, StorePart(self.store, image.disk.path, image.disk.size), suffix]
        verify = (image.unified_sha256, self._corrupt("unified tarball", image)) if self.verify_reads else None
        return self._ranged(request, image.unified_size, headers, lambda s, e: concatenate(parts, s, e), verify=verify)
