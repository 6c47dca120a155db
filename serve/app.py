"""The ASGI application: a simplestreams remote and Incus direct-URL import, read from a `Store`.

Routes (GET and HEAD only; any other method is 405 with `Allow: GET, HEAD`):

    /streams/v1/index.json, /streams/v1/images.json   the catalog, from memory, ETag + 304
    /<any path or signature the catalog names>          the object, streamed from the store
                                                         (or from the Image Factory when proxied)
    /talos/<version>[/<variant>]/<arch>                 direct URL import: Incus-Image-Hash/-URL
    /unified/<version>/<arch>/<variant>/<sha256>.tar    the unified tarball, built on the fly
    /healthz                                            JSON status (503 when the catalog is unreadable)
    /                                                   a short text page saying how to use this

A request path reaches the store only when it is an exact key of the catalog's allow-list
(`serve.catalog`); nothing is looked up on a filesystem, and the proxy's host is always the
configured factory URL.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from talos_pipeline.core.errors import ConfigError, StoreError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.media import content_type_for
from talos_pipeline.core.metadata import UnifiedLayout, layout_for, read_metadata_yaml
from talos_pipeline.core.settings import DiskMode
from talos_pipeline.core.stores import ObjectMissing, Store
from talos_pipeline.core.variants import ARCHES

from .catalog import CatalogFile, CatalogHolder, Document, Image, Snapshot
from .streams import (
    BytesPart,
    FactoryProxy,
    Metrics,
    StorePart,
    StreamAborted,
    StreamPart,
    Unsatisfiable,
    UpstreamProblem,
    UpstreamSizeDrift,
    close_quietly,
    concatenate,
    parse_range,
    verified,
)

log = logging.getLogger("serve")
access_log = logging.getLogger("serve.access")

# Request line + headers. uvicorn's h11 parser enforces the same bound on heads that arrive in
# pieces (`h11_max_incomplete_event_size`); a head that arrives whole is measured here.
MAX_REQUEST_HEAD = 16 * 1024
ALLOWED_METHODS = ("GET", "HEAD")
# The catalog changes when something is published; a minute of shared caching (CDN, proxies) takes
# the load off while bounding how stale an answer can be. Clients revalidate cheaply with the ETag.
# (Incus itself caches the index for an hour regardless.)
CATALOG_CACHE = "public, max-age=60"
# Objects named by their own sha256 never change bytes.
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
# Signature bundles keep their name when an image is re-signed, so they are not immutable.
SIGNATURE_CACHE = "public, max-age=300"
NO_STORE = "no-store"

_SAFE_PATH = re.compile(r"^(?:/[A-Za-z0-9._~+:-]+)*/?$")
_ENCODED_SEPARATORS = re.compile(rb"%(?:2f|5c|00|25)", re.IGNORECASE)
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")
_PUBLIC_URL = re.compile(r"^https?://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?(?:/[A-Za-z0-9._~/-]*)?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNIFIED = re.compile(r"^/unified/(?P<version>[^/]+)/(?P<arch>[^/]+)/(?P<variant>[^/]+)/(?P<sha>[0-9a-f]{64})\.tar$")


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


class BodyResponse(StreamingResponse):
    """A StreamingResponse over a blocking iterator that is always closed at the end.

    Closing runs the iterator's `finally` blocks (closing a store file or an upstream connection)
    when the client goes away mid-body, instead of whenever the garbage collector gets to it.
    """

    def __init__(self, iterator: Iterator[bytes], status_code: int, headers: dict[str, str]) -> None:
        self._source = iterator
        super().__init__(iterator, status_code=status_code, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close_quietly(self._source)


def _text(status: int, body: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    headers = {"Cache-Control": NO_STORE, **(headers or {})}
    return PlainTextResponse(body if body.endswith("\n") else body + "\n", status_code=status, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or a list of (possibly weak) entity tags; weak comparison."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


_DOCUMENTS = {"/streams/v1/index.json": "index", "/streams/v1/images.json": "images"}
# (status, raw headers, body) of a response answered without the framework
FastAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


# --------------------------------------------------------------------------- request guard + logs
class RequestGuard:
    """Outermost checks and the access log.

    * request heads over 16 KiB → 431;
    * methods other than GET/HEAD → 405 with `Allow`;
    * paths with encoded separators (`%2f`, `%5c`, `%00`, `%25`), backslashes, NUL, control or
      non-ASCII characters, empty segments (`//`) or dot segments (`.`, `..`) → 400;
    * one log line per request on `serve.access`: client, method, path, status, bytes, duration,
      and `ABORTED` when the body was cut off on purpose or by an error, `INCOMPLETE` when the
      client left before the end.
    """

    def __init__(self, app: ASGIApp, fast: Callable[[Scope], FastAnswer | None] | None = None) -> None:
        self.app = app
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 0, "bytes": 0, "length": None}

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-length" and value.isdigit():
                        state["length"] = int(value)
            elif message["type"] == "http.response.body" and scope["method"] != "HEAD":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        outcome = ""
        try:
            rejection = self._reject(scope)
            answer = self.fast(scope) if rejection is None and self.fast else None
            if rejection is not None:
                await rejection(scope, receive, logged_send)
            elif answer is not None:
                status, headers, body = answer
                await logged_send({"type": "http.response.start", "status": status, "headers": headers})
                await logged_send({"type": "http.response.body", "body": body})
            else:
                await self.app(scope, receive, logged_send)
        except BaseException as exc:
            outcome = " ABORTED" if state["status"] else " FAILED"
            if not isinstance(exc, StreamAborted):
                outcome += f" ({type(exc).__name__})"
            if not state["status"]:
                state["status"] = 500
            raise
        finally:
            short = state["length"] is not None and state["bytes"] < state["length"]
            if not outcome and short and scope["method"] != "HEAD":
                outcome = " INCOMPLETE (client went away)"
            self._log(scope, state, started, outcome)

    @staticmethod
    def _reject(scope: Scope) -> Response | None:
        method = scope["method"]
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
        if head > MAX_REQUEST_HEAD:
            return _text(431, f"request headers too large: at most {MAX_REQUEST_HEAD} bytes are accepted")
        if method not in ALLOWED_METHODS:
            return _text(
                405,
                f"method {method} is not allowed here: this server only answers GET and HEAD",
                {"Allow": ", ".join(ALLOWED_METHODS)},
            )
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
        path = scope["path"]
        dots = any(segment in (".", "..") for segment in path.split("/"))
        if _ENCODED_SEPARATORS.search(raw) or not _SAFE_PATH.match(path) or dots:
            return _text(400, "bad request path: only plain paths of the catalog are served here")
        return None

    @staticmethod
    def _log(scope: Scope, state: dict, started: float, outcome: str) -> None:
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        raw = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
        path = raw.decode("ascii", "backslashreplace")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("ascii", "backslashreplace")
        agent = "-"
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                agent = value.decode("latin-1").replace('"', "'")[:200]
                break
        elapsed = (time.perf_counter() - started) * 1000
        access_log.info(
            '%s %s %s %d %dB %.1fms%s "%s"',
            who, scope["method"], path[:512], state["status"], state["bytes"], elapsed, outcome, agent,
        )  # fmt: skip


# --------------------------------------------------------------------------- the application
class _Server:
    """The handlers, sharing one catalog holder, metrics and (optionally) a factory proxy."""

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
        return _text(503, f"the catalog is unavailable: {self.catalog.public_error or 'not loaded yet'}",
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
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": headers["Cache-Control"]})
        span = None
        if ranges:
            if_range = request.headers.get("if-range")
            if if_range is None or if_range.strip() == etag:
                try:
                    span = parse_range(request.headers.get("range"), size)
                except Unsatisfiable:
                    return _text(416, f"range not satisfiable: the object has {size} bytes",
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
        if wanted is not None and _etag_matches(wanted.decode("latin-1"), doc.etag):
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
        if _etag_matches(request.headers.get("if-none-match"), doc.etag):
            return Response(status_code=304, headers={"ETag": doc.etag, "Cache-Control": CATALOG_CACHE})
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(len(doc.body))})
        return Response(doc.body, status_code=200, headers=headers)

    # ---- integrity problems: log at ERROR, count, and say what to do
    def _drift(self, image: Image, url: str, what: str) -> None:
        self.metrics.bump("proxy_drift")
        log.error(
            "proxy drift: %s (version=%s arch=%s variant=%s): %s %s, but the catalog says %d bytes with sha256 %s; "
            "the response was cut off before its end. The factory rebuilt this image: republish it "
            "(talos-pipeline publish %s --arch %s --variant %s) or use TALOS_DISK_MODE=mirror",
            image.label, image.version, image.arch, image.variant, url, what, image.disk_size, image.disk_sha256,
            image.version, image.arch, image.variant,
        )  # fmt: skip

    def _drift_handler(self, image: Image, url: str, unified: bool) -> Callable[[int, str], None]:
        def handler(size: int, sha: str) -> None:
            if unified:
                what = f"served a disk that makes a unified tarball of {size} bytes with sha256 {sha} " \
                       f"(the catalog says {image.unified_sha256})"  # fmt: skip
            else:
                what = f"served {size} bytes with sha256 {sha}"
            self._drift(image, url, what)

        return handler

    def _corrupt(self, what: str, image: Image) -> Callable[[int, str], None]:
        def handler(size: int, sha: str) -> None:
            self.metrics.bump("store_corrupt")
            log.error(
                "store corrupt: %s of %s (version=%s arch=%s variant=%s) read back as %d bytes with sha256 %s, "
                "not what the catalog says; the response was cut off. Run `talos-pipeline verify` and republish",
                what, image.label, image.version, image.arch, image.variant, size, sha,
            )  # fmt: skip

        return handler

    def _missing(self, key: str, image: Image) -> Response:
        self.metrics.bump("store_missing")
        log.error("store missing: %s (named by the catalog for %s) is not in the store at %s",
                  key, image.label, self.store.describe())  # fmt: skip
        return _text(404, f"/{key} is named by the catalog but missing from the store")

    def _mismatch(self, key: str, image: Image, size: int, expected: int) -> Response:
        self.metrics.bump("store_corrupt")
        log.error("store corrupt: %s (%s) has %d bytes, the catalog says %d", key, image.label, size, expected)
        return _text(500, f"/{key}: the stored object does not match the catalog; the operator has been told")

    def _proxied(self, image: Image) -> bool:
        return image.upstream_path is not None or (self.disk_mode is DiskMode.PROXY and image.factory_path is not None)

    async def _open_upstream(self, image: Image) -> tuple[str, object] | Response:
        if self.proxy is None:
            log.error("%s is proxied from the Image Factory but no factory URL is configured", image.label)
            return _text(503, "this image is served from the Image Factory, but TALOS_FACTORY_URL is not configured")
        try:
            return await anyio.to_thread.run_sync(self.proxy.open, image.factory_path, image.disk_size)
        except UpstreamSizeDrift as exc:
            self._drift(image, exc.url, f"announces {exc.size} bytes")
            return _text(502, f"the Image Factory no longer serves the published bytes of {image.label}")
        except UpstreamProblem as exc:
            self.metrics.bump("proxy_upstream_errors")
            log.error("proxy: %s: %s", image.label, exc)
            return _text(502, f"the Image Factory did not deliver {image.label}; try again later")

    def _upstream_chunks(self, image: Image, url: str, response) -> Iterator[bytes]:
        def on_error(received: int, exc: BaseException) -> None:
            self.metrics.bump("proxy_upstream_errors")
            log.error("proxy: %s: %s failed after %d of %d bytes (%s: %s)",
                      image.label, url, received, image.disk_size, type(exc).__name__, exc)  # fmt: skip

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
        return _text(
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
            return _text(404, f"/{key} is not in the catalog (see /streams/v1/images.json)")
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
            "ETag": f'"{image.disk_sha256}"',
            "Cache-Control": IMMUTABLE_CACHE,
            "Content-Type": content_type_for(entry.path),
        }
        return await self._stream_proxied(request, image, headers, image.disk_size, image.disk_sha256)

    async def _stream_proxied(
        self,
        request: Request,
        image: Image,
        headers: dict[str, str],
        size: int,
        sha256: str,
        around: tuple[bytes, bytes] | None = None,
    ) -> Response:
        """A disk from the factory (bare, or wrapped `around` as the unified tarball): no ranges,
        hashed as it streams and cut off before its end if it is not what the catalog says."""
        headers["Accept-Ranges"] = "none"
        if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers={"ETag": headers["ETag"], "Cache-Control": IMMUTABLE_CACHE})
        headers["Content-Length"] = str(size)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        opened = await self._open_upstream(image)
        if isinstance(opened, Response):
            return opened
        url, response = opened
        prefix, suffix = around or (b"", b"")
        disk = StreamPart(self._upstream_chunks(image, url, response), image.disk_size)
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
            return _text(404, "direct import URLs look like /talos/<version>/<arch> or /talos/<version>/<variant>/<arch>, "
                              "e.g. /talos/v1.12.0/amd64")  # fmt: skip
        name, arch = "/".join(parts[:-1]), parts[-1]
        image = snapshot.resolve(name, arch)
        if image is None:
            return _text(404, self._explain_missing(snapshot, parts[:-1], arch))
        try:
            base = self.base_url(request)
        except BadRequest as exc:
            return _text(400, f"bad request: {exc}; set TALOS_PUBLIC_URL on the server to fix the public URL")
        url = base + image.unified_url_path
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
        return _text(200, body, headers)  # for HEAD the server sends the headers only

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
    def _layout(self, image: Image) -> UnifiedLayout:
        """The tar header bytes around the disk, rebuilt from the published metadata tarball."""
        cache_key = (image.metadata_sha256, image.disk_size)
        layout = self._layouts.get(cache_key)
        if layout is None:
            tarball = self.store.read_bytes(image.metadata_path)
            if sha256_hex(tarball) != image.metadata_sha256:
                raise ValueError(f"{image.metadata_path} does not match its sha256 {image.metadata_sha256}")
            yaml, mtime = read_metadata_yaml(tarball)
            layout = layout_for(yaml, mtime, image.disk_size)
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
            return _text(404, "no such unified image: it is not (or no longer) in the catalog; ask "
                              "/talos/<version>[/<variant>]/<arch> for the current one")  # fmt: skip
        try:
            layout = await anyio.to_thread.run_sync(self._layout, image)
        except ObjectMissing:
            return self._missing(image.metadata_path, image)
        except Exception as exc:
            self.metrics.bump("store_corrupt")
            log.error("store corrupt: unified tarball of %s: %s", image.label, exc)
            return _text(500, f"the unified image of {image.label} cannot be built; the operator has been told")
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
        info = await anyio.to_thread.run_sync(self.store.stat, image.disk_path)
        if info is None:
            return self._missing(image.disk_path, image)
        if info.size != image.disk_size:
            return self._mismatch(image.disk_path, image, info.size, image.disk_size)
        headers["Accept-Ranges"] = "bytes"
        parts = [prefix, StorePart(self.store, image.disk_path, image.disk_size), suffix]
        verify = (image.unified_sha256, self._corrupt("unified tarball", image)) if self.verify_reads else None
        return self._ranged(request, image.unified_size, headers, lambda s, e: concatenate(parts, s, e), verify=verify)


def create_app(
    store: Store,
    *,
    public_url: str | None = None,
    disk_mode: str = "mirror",
    factory_url: str | None = None,
    refresh_seconds: float = 2.0,
    retain_seconds: float = 3600.0,
    verify_reads: bool = False,
) -> Starlette:
    """The server over `store`.

    `public_url` (TALOS_PUBLIC_URL) is the base of absolute links; without it they are built from
    the request's scheme and (validated) Host header. `disk_mode="proxy"` streams disks from
    `factory_url` instead of the store (items with `talos_upstream_path` always are).
    `refresh_seconds` bounds how long a new catalog takes to be seen; `retain_seconds` how long
    files that left the catalog stay downloadable from this process. `verify_reads`
    (TALOS_VERIFY_READS) re-hashes full-body reads from the store and cuts off any response whose
    bytes do not match. It is off by default: Incus checks every file's sha256 itself (a corrupted
    store fails `incus image copy` with "Hash mismatch"), and the extra hash costs about a third of
    the download throughput on two cores; proxied disks are always verified.
    """
    server = _Server(
        store,
        public_url=public_url,
        disk_mode=disk_mode,
        factory_url=factory_url,
        refresh_seconds=refresh_seconds,
        retain_seconds=retain_seconds,
        verify_reads=verify_reads,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        snapshot = await anyio.to_thread.run_sync(server.catalog.current)
        if snapshot is None:
            log.warning("starting without a catalog: %s", server.catalog.error)
        try:
            yield
        finally:
            if server.proxy is not None:
                server.proxy.session.close()

    methods = list(ALLOWED_METHODS)
    routes = [
        Route("/", server.landing, methods=methods),
        Route("/healthz", server.healthz, methods=methods),
        Route("/streams/v1/index.json", server.index, methods=methods),
        Route("/streams/v1/images.json", server.images, methods=methods),
        Route("/talos/{rest:path}", server.direct, methods=methods),
        Route("/unified/{rest:path}", server.unified, methods=methods),
        Route("/{path:path}", server.file, methods=methods),
    ]

    async def store_failed(request: Request, exc: Exception) -> Response:
        log.error("store: %s %s: %s", request.method, request.url.path, exc)
        return _text(503, "the image store is not available right now; try again later", {"Retry-After": "5"})

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestGuard, fast=server.fast_document)],
        exception_handlers={StoreError: store_failed},
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.store = store
    app.state.catalog = server.catalog
    app.state.metrics = server.metrics
    return app
