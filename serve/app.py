"""The app factory: `create_app(store, ...)` wires the handlers, the routes and the request guard.

Routes (GET and HEAD only; any other method is 405 with `Allow: GET, HEAD`, except POST /requests
with self-service on):

    /streams/v1/index.json, /streams/v1/images.json   the catalog, from memory, ETag + 304
    /<any path or signature the catalog names>          the object, streamed from the store
                                                         (or from the Image Factory when proxied)
    /talos/<version>[/<variant>]/<arch>                 direct URL import: Incus-Image-Hash/-URL
    /unified/<version>/<arch>/<variant>/<sha256>.tar    the unified tarball, built on the fly
    /healthz                                            liveness: 200 while the process answers (JSON status)
    /readyz                                             readiness: 200 while a good catalog is served
    /metrics                                            Prometheus metrics (all workers)
    /                                                   the page: every image and its commands (HTML)
    POST /requests, /requests/<id>                      self-service requests (TALOS_SELF_SERVICE=on)
"""

from __future__ import annotations

import contextlib
import logging

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from talos_pipeline.core.errors import ConfigError, StoreError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import Store, open_store

from .guard import ALLOWED_METHODS, RequestGuard, text_response
from .handlers import Handlers
from .landing import Landing
from .selfservice import SelfService, SelfServiceOptions
from .upstream import FactoryProxy

log = logging.getLogger("serve")


def create_app(
    store: Store,
    *,
    public_url: str | None = None,
    disk_mode: str = "mirror",
    factory_url: str | None = None,
    refresh_seconds: float = 2.0,
    retain_seconds: float = 3600.0,
    verify_reads: bool = False,
    proxy_connections: int = 64,
    upstream_timeout: float = 30.0,
    upstream_first_byte_timeout: float = 600.0,
    self_service: SelfServiceOptions | None = None,
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
    the download throughput on two cores; proxied disks are always verified. Proxied downloads run
    on their own pool of `proxy_connections` threads; a factory silent for `upstream_timeout`
    seconds mid-body is cut off, one that takes up to `upstream_first_byte_timeout` to answer (a
    cold build) is waited for. `self_service` (TALOS_SELF_SERVICE on: tokens and limits) mounts
    `POST /requests` and `GET /requests/<id>` and puts the request form on the page; requests are
    checked against `factory_url` only (docs/self-service.md).
    """
    proxy = None
    if factory_url:
        proxy = FactoryProxy(
            factory_url,
            connections=proxy_connections,
            stall_timeout=upstream_timeout,
            first_byte_timeout=upstream_first_byte_timeout,
        )
    server = Handlers(
        store,
        public_url=public_url,
        disk_mode=disk_mode,
        proxy=proxy,
        refresh_seconds=refresh_seconds,
        retain_seconds=retain_seconds,
        verify_reads=verify_reads,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        snapshot = await anyio.to_thread.run_sync(server.catalog.current)
        server.record_catalog()
        if snapshot is None:
            log.warning("starting without a catalog: %s", server.catalog.error)
        try:
            yield
        finally:
            if server.proxy is not None:
                server.proxy.close()

    requests = None
    if self_service is not None:
        if not factory_url:
            raise ConfigError("self-service requests need TALOS_FACTORY_URL (extensions are checked there)")
        requests = SelfService.create(
            store, self_service, factory_url, lambda: server.catalog.snapshot, server.store_io, server.page_base
        )
    landing = Landing(store, server, requests, server.store_io, refresh_seconds=refresh_seconds)

    methods = list(ALLOWED_METHODS)
    request_routes = []
    if requests is not None:
        request_routes = [
            Route("/requests", requests.post, methods=["POST"]),
            Route("/requests/{request_id}", requests.status, methods=methods),
        ]
    routes = [
        Route("/", landing.page, methods=methods),
        *request_routes,
        Route("/healthz", server.healthz, methods=methods),
        Route("/readyz", server.readyz, methods=methods),
        Route("/metrics", server.metrics_page, methods=methods),
        Route("/streams/v1/index.json", server.index, methods=methods),
        Route("/streams/v1/images.json", server.images, methods=methods),
        Route("/talos/{rest:path}", server.direct, methods=methods),
        Route("/unified/{rest:path}", server.unified, methods=methods),
        Route("/{path:path}", server.file, methods=methods),
    ]

    async def store_failed(request: Request, exc: Exception) -> Response:
        log.error("store: %s %s: %s", request.method, request.url.path, exc)
        return text_response(503, "the image store is not available right now; try again later", {"Retry-After": "5"})

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestGuard, post_paths=frozenset({"/requests"} if requests else set()))],
        exception_handlers={StoreError: store_failed},
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.site = server
    app.state.store = store
    app.state.catalog = server.catalog
    app.state.metrics = server.metrics
    app.state.requests = requests
    return app


def app_from_settings(settings: Settings | None = None) -> Starlette:
    """The app as the settings table says (`TALOS_STORE`, `TALOS_DISK_MODE`, `TALOS_PUBLIC_URL`,
    `TALOS_FACTORY_URL`, `TALOS_VERIFY_READS`, `TALOS_SELF_SERVICE*`); read from the environment
    when not given, which is how every worker process of `--workers N` builds the same app."""
    settings = settings or Settings.from_env()
    return create_app(
        open_store(settings.store),
        public_url=settings.public_url,
        disk_mode=settings.disk_mode,
        factory_url=settings.factory_url,
        verify_reads=settings.verify_reads,
        proxy_connections=settings.serve_proxy_connections,
        upstream_timeout=settings.serve_upstream_timeout,
        upstream_first_byte_timeout=settings.serve_upstream_first_byte_timeout,
        self_service=SelfServiceOptions.from_settings(settings),
    )
