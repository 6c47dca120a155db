"""The handlers: catalog documents, catalog files, direct URL import, unified tarballs, health, metrics.

`Handlers` holds what they share: the catalog holder, the metrics and (optionally) the factory
proxy, and is the server's `Site` (the catalog documents answered below the framework, route
labels). A request path reaches the store only when it is an exact key of the catalog's allow-list
(`snapshot.py`); a directory store is read without following symlinks out of its root, and the
proxy's host is always the configured factory URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread
import requests
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.media import content_type_for
from talos_pipeline.core.metadata import UnifiedLayout, layout_for, read_metadata_yaml
from talos_pipeline.core.settings import DiskMode
from talos_pipeline.core.simplestreams import CatalogImage
from talos_pipeline.core.stores import DirectoryStore, ObjectMissing, Store

from .bodies import (
    BodyResponse,
    BytesPart,
    FilePart,
    OutsideStore,
    Part,
    StoreFile,
    StorePart,
    StreamAborted,
    StreamPart,
    concatenate,
    open_store_file,
    verified,
)
from .connection import FastAnswer
from .explain import explain_missing
from .guard import HOST, host_problem, text_response
from .http import (
    IMMUTABLE_CACHE,
    NO_STORE,
    SIGNATURE_CACHE,
    Unsatisfiable,
    accepts_gzip,
    etag_matches,
    http_date,
    parse_range,
    preconditions,
)
from .metrics import CONTENT_TYPE, Metrics
from .snapshot import CatalogFile, CatalogHolder, Document, Snapshot, unified_url_path
from .upstream import FactoryProxy, UpstreamBusy, UpstreamProblem, UpstreamSizeDrift

log = logging.getLogger("serve")

_PUBLIC_URL = re.compile(r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNIFIED = re.compile(r"^/unified/(?P<version>[^/]+)/(?P<arch>[^/]+)/(?P<variant>[^/]+)/(?P<sha>[0-9a-f]{64})\.tar$")
DOCUMENTS = {"/streams/v1/index.json": "index", "/streams/v1/images.json": "images"}
_FIXED_ROUTES = {"/": "landing", "/healthz": "healthz", "/readyz": "readyz", "/metrics": "metrics", **DOCUMENTS}
_RAW_DOCUMENTS = {path.encode(): name for path, name in DOCUMENTS.items()}
# How long a proxied download waits for the factory before the response headers go out anyway
# (from the catalog's size and sha256): Incus gives up after 30 s without response headers.
PROXY_HEADER_GRACE = 2.0
STORE_THREADS = 32


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
    """The route handlers, sharing one catalog holder, the metrics and (optionally) a factory proxy."""

    def __init__(
        self,
        store: Store,
        *,
        public_url: str | None,
        disk_mode: DiskMode | str,
        proxy: FactoryProxy | None,
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
        self.proxy = proxy
        self.store_io = anyio.CapacityLimiter(STORE_THREADS)
        self._layouts: dict[tuple[str, int], UnifiedLayout] = {}
        self._good_hosts: set[bytes] = set()
        self._encodings: dict[bytes, bool] = {}

    # ---- the server's Site hooks
    def route(self, path: str) -> str:
        if path.startswith("/talos/"):
            return "direct"
        if path.startswith("/unified/"):
            return "unified"
        if path == "/requests" or path.startswith("/requests/"):
            return "requests"
        return _FIXED_ROUTES.get(path, "file")

    def fast_answer(
        self,
        method: bytes,
        target: bytes,
        version: str,
        hosts: list[bytes],
        if_none_match: bytes | None,
        accept_encoding: bytes | None,
    ) -> tuple[str, FastAnswer] | None:
        """The catalog documents from memory, when nothing about the request needs the framework."""
        name = _RAW_DOCUMENTS.get(target)
        snapshot = self.catalog.snapshot
        if name is None or snapshot is None or method not in (b"GET", b"HEAD"):
            return None
        if self.catalog.due or not self._good_host(version, hosts):
            return None
        doc: Document = getattr(snapshot, name)
        chosen = doc.gzipped if self._gzip_ok(accept_encoding) else doc.identity
        if if_none_match is not None and etag_matches(if_none_match.decode("latin-1"), chosen.etag):
            return name, (304, chosen.fast_headers, b"")
        return name, (200, chosen.fast_body_headers, b"" if method == b"HEAD" else chosen.body)

    def _gzip_ok(self, accept_encoding: bytes | None) -> bool:
        """`accepts_gzip`, remembered for the few Accept-Encoding values a server sees."""
        if accept_encoding is None:
            return False
        known = self._encodings.get(accept_encoding)
        if known is None:
            known = accepts_gzip(accept_encoding.decode("latin-1"))
            if len(self._encodings) < 64:
                self._encodings[accept_encoding] = known
        return known

    def _good_host(self, version: str, hosts: list[bytes]) -> bool:
        """`host_problem` is None, remembered for the few Host values a server sees."""
        if len(hosts) != 1:
            return host_problem(version, hosts) is None
        host = hosts[0]
        if host in self._good_hosts:
            return True
        if host_problem(version, hosts) is not None:
            return False
        if len(self._good_hosts) < 64:
            self._good_hosts.add(host)
        return True

    # ---- catalog access
    async def snapshot(self) -> Snapshot | None:
        if not self.catalog.claim():
            return self.catalog.snapshot
        snapshot = await anyio.to_thread.run_sync(self.catalog.current)
        self.record_catalog()
        return snapshot

    def record_catalog(self) -> None:
        snapshot = self.catalog.snapshot
        self.metrics.catalog(
            products=snapshot.products if snapshot else 0,
            written_at=snapshot.written_at if snapshot else None,
            ready=snapshot is not None,
            degraded=snapshot is not None and self.catalog.error is not None,
        )

    def unavailable(self) -> Response:
        return text_response(503, f"the catalog is unavailable: {self.catalog.public_error or 'not loaded yet'}",
                             {"Retry-After": "5"})  # fmt: skip

    # ---- responses with conditional requests and ranges
    def _conditional(self, request: StarletteRequest, etag: str, modified: float | None, cache: str) -> Response | None:
        status = preconditions(request.method, request.headers.get, etag, modified)
        if status == 304:
            headers = {"ETag": etag, "Cache-Control": cache}
            if modified:
                headers["Last-Modified"] = http_date(modified)
            return Response(status_code=304, headers=headers)
        if status == 412:
            return text_response(412, "precondition failed: the object does not match If-Match / If-Unmodified-Since",
                                 {"ETag": etag})  # fmt: skip
        return None

    def _ranged(
        self,
        request: StarletteRequest,
        size: int,
        headers: dict[str, str],
        modified: float | None,
        body: Callable[[int, int], AsyncIterator[bytes]],
        *,
        verify: tuple[str, Callable[[int, str], None]] | None = None,
        cleanup: Callable[[], None] | None = None,
        file: StoreFile | None = None,
    ) -> Response:
        etag = headers["ETag"]
        if modified:
            headers["Last-Modified"] = http_date(modified)
        answered = self._conditional(request, etag, modified, headers["Cache-Control"])
        if answered is None:
            span = None
            if_range = request.headers.get("if-range")
            if if_range is None or if_range.strip() == etag:
                try:
                    span = parse_range(request.headers.get("range"), size)
                except Unsatisfiable:
                    answered = text_response(416, f"range not satisfiable: the object has {size} bytes",
                                             {"Content-Range": f"bytes */{size}", "ETag": etag})  # fmt: skip
        if (answered is not None or request.method == "HEAD") and cleanup is not None:
            cleanup()
        if answered is not None:
            return answered
        start, end = span if span is not None else (0, size)
        headers = dict(headers)
        headers["Content-Length"] = str(end - start)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        chunks = body(start, end)
        file_range = None
        if span is None and verify is not None:
            chunks = verified(chunks, verify[0], size, verify[1])
        elif file is not None:
            file_range = (file.fd, start, end - start)
        return BodyResponse(chunks, status, headers, [cleanup] if cleanup else [], file_range)

    def document(self, request: StarletteRequest, doc: Document, content_type: str = "application/json") -> Response:
        """A document from memory through the framework (conditional requests, HEAD), in the
        coding the client accepts."""
        chosen = doc.pick(request.headers.get("accept-encoding"))
        headers = dict(chosen.headers)
        status = preconditions(request.method, request.headers.get, chosen.etag, doc.written_at)
        if status == 304:
            return Response(status_code=304, headers=headers)
        if status == 412:
            return text_response(412, "precondition failed: the document does not match If-Match / "
                                      "If-Unmodified-Since", {"ETag": chosen.etag})  # fmt: skip
        headers["Content-Type"] = content_type
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(len(chosen.body))})
        return Response(chosen.body, status_code=200, headers=headers)

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

    def _store_failed(self, key: str, image: CatalogImage, exc: OSError) -> Response:
        """An object the store cannot open: out of the root (a symlink), or an OS error."""
        if isinstance(exc, OutsideStore):
            self.metrics.bump("store_outside_root")
            log.error("store: %s (%s) refused: %s; the server never follows symlinks out of the store",
                      key, image.label, exc.strerror)  # fmt: skip
        else:
            self.metrics.bump("os_errors")
            log.error("store: %s (%s) cannot be opened: %s", key, image.label, exc)
        return text_response(500, f"/{key} cannot be read from the store; the operator has been told")

    def _proxied(self, image: CatalogImage) -> bool:
        return image.upstream_path is not None or (self.disk_mode is DiskMode.PROXY and image.factory_path is not None)

    # ---- the store, read safely
    async def _open(self, key: str) -> tuple[Part, float | None, str] | None:
        """The object as a body part, its modification time and the store's ETag (None: missing).
        Raises OSError when it cannot be opened."""
        if isinstance(self.store, DirectoryStore):
            if self.store.stat(key) is None:  # a local stat; the store (or a subclass) may also raise StoreError
                return None
            try:
                opened: StoreFile = open_store_file(self.store, key)
            except FileNotFoundError:
                return None
            return FilePart(opened, key), opened.modified, opened.etag
        info = await anyio.to_thread.run_sync(self.store.stat, key, limiter=self.store_io)
        if info is None:
            return None
        return StorePart(self.store, key, info.size, self.store_io), info.modified, info.etag

    def _read_small(self, key: str) -> bytes:
        if isinstance(self.store, DirectoryStore):
            try:
                opened = open_store_file(self.store, key)
            except FileNotFoundError:
                raise ObjectMissing(f"{key} is not in the store at {self.store.describe()}") from None
            try:
                with open(opened.fd, "rb", closefd=False) as handle:
                    return handle.read()
            finally:
                opened.close()
        return self.store.read_bytes(key)

    # ---- routes
    async def index(self, request: StarletteRequest) -> Response:
        snapshot = await self.snapshot()
        return self.document(request, snapshot.index) if snapshot else self.unavailable()

    async def images(self, request: StarletteRequest) -> Response:
        snapshot = await self.snapshot()
        return self.document(request, snapshot.images) if snapshot else self.unavailable()

    def _health(self, snapshot: Snapshot | None) -> dict[str, object]:
        if snapshot is None:
            status = "unavailable"
        else:
            status = "degraded" if self.catalog.error is not None else "ok"
        body: dict[str, object] = {
            "status": status,
            "ready": snapshot is not None,
            "degraded": status == "degraded",
            "products": snapshot.products if snapshot else 0,
            "files": len(snapshot.files) if snapshot else 0,
            "catalog_etag": snapshot.images.etag if snapshot else None,
            "index_etag": snapshot.index.etag if snapshot else None,
            "disk_mode": str(self.disk_mode),
            "metrics": dict(self.metrics),
        }
        if self.catalog.error:
            body["error"] = self.catalog.public_error
        return body

    async def healthz(self, request: StarletteRequest) -> Response:
        """Liveness: 200 while this process answers; the catalog's state is in the body."""
        body = self._health(await self.snapshot())
        return JSONResponse(body, headers={"Cache-Control": NO_STORE})

    async def readyz(self, request: StarletteRequest) -> Response:
        """Readiness: 200 while a good catalog is served (also when the store's copy is damaged and
        the last good one is still served: `degraded`), 503 before the first one."""
        body = self._health(await self.snapshot())
        return JSONResponse(body, status_code=200 if body["ready"] else 503, headers={"Cache-Control": NO_STORE})

    async def metrics_page(self, request: StarletteRequest) -> Response:
        await self.snapshot()
        self.record_catalog()
        return Response(self.metrics.render(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": NO_STORE})

    async def file(self, request: StarletteRequest) -> Response:
        snapshot = await self.snapshot()
        if snapshot is None:
            return self.unavailable()
        key = request.scope["path"][1:]
        entry = self.catalog.file(key)
        if entry is None:
            return text_response(404, f"/{key} is not in the catalog (see /streams/v1/images.json)")
        if entry.kind == "disk" and self._proxied(entry.image):
            return await self._proxied_file(request, entry)
        try:
            opened = await self._open(key)
        except OSError as exc:
            return self._store_failed(key, entry.image, exc)
        if opened is None:
            return self._missing(key, entry.image)
        part, modified, store_etag = opened
        cleanup = part.file.close if isinstance(part, FilePart) else None
        if entry.size is not None and part.size != entry.size:
            if cleanup:
                cleanup()
            return self._mismatch(key, entry.image, part.size, entry.size)
        headers = {
            "ETag": f'"{entry.sha256}"' if entry.sha256 else store_etag,
            "Cache-Control": IMMUTABLE_CACHE if entry.immutable else SIGNATURE_CACHE,
            "Content-Type": content_type_for(key),
            "Accept-Ranges": "bytes",
        }
        verify = None
        if self.verify_reads and entry.sha256:
            verify = (entry.sha256, self._corrupt(key, entry.image))
        file = part.file if isinstance(part, FilePart) else None
        return self._ranged(request, part.size, headers, modified, part.read, verify=verify, cleanup=cleanup, file=file)

    # ---- proxied disks
    async def _proxied_file(self, request: StarletteRequest, entry: CatalogFile) -> Response:
        image = entry.image
        headers = {
            "ETag": f'"{image.disk.sha256}"',
            "Cache-Control": IMMUTABLE_CACHE,
            "Content-Type": content_type_for(entry.path),
        }
        return await self._stream_proxied(request, image, headers, image.disk.size, image.disk.sha256)

    async def _stream_proxied(
        self,
        request: StarletteRequest,
        image: CatalogImage,
        headers: dict[str, str],
        size: int,
        sha256: str,
        around: tuple[bytes, bytes] | None = None,
    ) -> Response:
        """A disk from the factory (bare, or wrapped `around` as the unified tarball): no ranges,
        hashed as it streams and cut off before its end if it is not what the catalog says.

        The factory gets `PROXY_HEADER_GRACE` seconds to answer: a failure by then is a 502 the
        client can retry. After that the response headers go out from the catalog (a cold build
        can take minutes, Incus waits 30 s for headers) and a later failure cuts the body off."""
        headers["Accept-Ranges"] = "none"
        answered = self._conditional(request, headers["ETag"], None, IMMUTABLE_CACHE)
        if answered is not None:
            return answered
        headers["Content-Length"] = str(size)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        if self.proxy is None:
            log.error("%s is proxied from the Image Factory but no factory URL is configured", image.label)
            return text_response(
                503, "this image is served from the Image Factory, but TALOS_FACTORY_URL is not configured"
            )
        opening = _Opening(self, image)
        with anyio.move_on_after(PROXY_HEADER_GRACE):
            await opening.wait()
        if opening.failure is not None:
            return opening.failure
        prefix, suffix = around or (b"", b"")
        disk = StreamPart(opening.chunks(), image.disk.size)
        parts: list[Part] = [BytesPart(prefix), disk, BytesPart(suffix)]
        drift = self._drift_handler(image, self.proxy.base, unified=around is not None)
        return BodyResponse(verified(concatenate(parts), sha256, size, drift), 200, headers, [opening.abandon])

    def upstream_failure(self, image: CatalogImage, exc: UpstreamProblem) -> Response:
        if isinstance(exc, UpstreamSizeDrift):
            self._drift(image, exc.url, f"announces {exc.size} bytes")
            return text_response(502, f"the Image Factory no longer serves the published bytes of {image.label}")
        if isinstance(exc, UpstreamBusy):
            self.metrics.reject("proxy_busy")
            log.warning("proxy: %s: %s", image.label, exc)
            return text_response(
                503,
                f"too many downloads from the Image Factory right now; retry {image.label} shortly",
                {"Retry-After": "10"},
            )
        self.metrics.bump("proxy_upstream_errors")
        log.error("proxy: %s: %s", image.label, exc)
        return text_response(502, f"the Image Factory did not deliver {image.label}; try again later")

    # ---- direct URL import
    def base_url(self, request: StarletteRequest) -> str:
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
        if not HOST.match(hosts[0]):
            raise BadRequest("the Host header is not a host name or address (with an optional port)")
        return f"{scheme}://{hosts[0]}"

    def page_base(self, request: StarletteRequest) -> str:
        """The base URL pages write into the commands they show (a placeholder when the request's
        Host cannot be used and TALOS_PUBLIC_URL is not set)."""
        try:
            return self.base_url(request)
        except BadRequest:
            return "https://images.example.com"

    async def direct(self, request: StarletteRequest) -> Response:
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
            return text_response(404, explain_missing(snapshot, parts[:-1], arch))
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

    # ---- unified tarball
    def _layout(self, image: CatalogImage) -> UnifiedLayout:
        """The tar header bytes around the disk, rebuilt from the published metadata tarball."""
        cache_key = (image.metadata.sha256, image.disk.size)
        layout = self._layouts.get(cache_key)
        if layout is None:
            tarball = self._read_small(image.metadata.path)
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

    async def unified(self, request: StarletteRequest) -> Response:
        match = _UNIFIED.match(request.scope["path"])
        snapshot = await self.snapshot()
        if snapshot is None:
            return self.unavailable()
        image = self.catalog.unified(match.group("version", "arch", "variant", "sha")) if match else None
        if image is None:
            return text_response(404, "no such unified image: it is not (or no longer) in the catalog; ask "
                                      "/talos/<version>[/<variant>]/<arch> for the current one")  # fmt: skip
        try:
            layout = await anyio.to_thread.run_sync(self._layout, image, limiter=self.store_io)
        except ObjectMissing:
            return self._missing(image.metadata.path, image)
        except OSError as exc:
            return self._store_failed(image.metadata.path, image, exc)
        except ValueError as exc:
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
        try:
            opened = await self._open(image.disk.path)
        except OSError as exc:
            return self._store_failed(image.disk.path, image, exc)
        if opened is None:
            return self._missing(image.disk.path, image)
        disk, modified, _etag = opened
        cleanup = disk.file.close if isinstance(disk, FilePart) else None
        if disk.size != image.disk.size:
            if cleanup:
                cleanup()
            return self._mismatch(image.disk.path, image, disk.size, image.disk.size)
        headers["Accept-Ranges"] = "bytes"
        parts: list[Part] = [BytesPart(layout.prefix), disk, BytesPart(layout.suffix)]
        verify = (image.unified_sha256, self._corrupt("unified tarball", image)) if self.verify_reads else None
        return self._ranged(request, image.unified_size, headers, modified,
                            lambda s, e: concatenate(parts, s, e), verify=verify, cleanup=cleanup)  # fmt: skip


class _Opening:
    """A proxied download being opened in the background, so headers can go out before it answers."""

    def __init__(self, handlers: Handlers, image: CatalogImage) -> None:
        assert handlers.proxy is not None
        self.handlers = handlers
        self.proxy = handlers.proxy
        self.image = image
        self.failure: Response | None = None
        self.done = asyncio.Event()
        self.result: tuple[str, requests.Response] | None = None
        self.error: UpstreamProblem | None = None
        self.abandoned = False
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            self.result = await self.proxy.open(self.image.factory_path, self.image.disk.size)
        except UpstreamProblem as exc:
            self.error = exc
        finally:
            self.done.set()
        if self.abandoned and self.result is not None:
            self.result[1].close()

    async def wait(self) -> None:
        await self.done.wait()
        if self.error is not None:
            self.failure = self.handlers.upstream_failure(self.image, self.error)

    async def chunks(self) -> AsyncIterator[bytes]:
        await self.done.wait()
        if self.error is not None:
            self.handlers.upstream_failure(self.image, self.error)
            raise StreamAborted(f"{self.image.label}: {self.error}")
        assert self.result is not None
        url, response = self.result
        image = self.image

        def on_error(received: int, exc: BaseException) -> None:
            self.handlers.metrics.bump("proxy_upstream_errors")
            log.error("proxy: %s: %s failed after %d of %d bytes (%s: %s)",
                      image.label, url, received, image.disk.size, type(exc).__name__, exc)  # fmt: skip

        async for chunk in self.proxy.chunks(url, response, on_error):
            yield chunk

    def abandon(self) -> None:
        """The response is over (or never started its body): close the upstream when it answers."""
        self.abandoned = True
        if self.done.is_set() and self.result is not None:
            self.result[1].close()
