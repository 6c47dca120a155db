"""Self-service requests over HTTP: `POST /requests` and `GET /requests/<id>` (docs/self-service.md).

Only mounted when `TALOS_SELF_SERVICE` is on. A request is checked in an order that costs the
least first and never lets a refused request reach the factory: body size, token (constant-time,
`TALOS_SELF_SERVICE_TOKENS`), shape (`core.selfservice.spec`), name and pending requests against
what the store holds (`Admission`), and only then the factory's official extension lists for the
versions it would be built for (the configured factory only; cached for a few minutes). An
accepted request is written to the store (`requests/<id>.json`) and answered 202; the server
keeps no other state, so any replica answers its status. The page's form posts here too
(`application/x-www-form-urlencoded`, the token as a field) and is answered with a redirect to
the request's status page, or an HTML page saying why it was refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from talos_pipeline.core.errors import StoreError, UpstreamError
from talos_pipeline.core.selfservice import (
    Admission,
    RequestBook,
    RequestRejected,
    RequestSpec,
    SelfServiceRequest,
    check_offered,
    create_request,
    parse_form_request,
    parse_json_request,
    read_request,
    read_variant_set,
    target_versions,
    token_fingerprint,
)
from talos_pipeline.core.selfservice.spec import check_size, form_token
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import Store
from talos_pipeline.core.upstream import FactoryClient, RetryPolicy

from .http import NO_STORE
from .page import HTML, PAGE_HEADERS, SelfServiceView, render_error, render_request
from .snapshot import Snapshot

log = logging.getLogger("serve.requests")

FORM = "application/x-www-form-urlencoded"
EXTENSIONS_TTL = 600.0
RECENT = 20


@dataclass(frozen=True)
class SelfServiceOptions:
    tokens: tuple[str, ...]
    versions: int = 2
    pending_limit: int = 3
    configured: frozenset[str] = frozenset()
    arches: tuple[str, ...] = ("amd64", "arm64")

    @classmethod
    def from_settings(cls, settings: Settings) -> SelfServiceOptions | None:
        """None when TALOS_SELF_SERVICE is off; a ConfigError when it is on without tokens."""
        if not settings.self_service:
            return None
        return cls(
            tokens=tuple(settings.token_list()),
            versions=settings.self_service_versions,
            pending_limit=settings.self_service_pending,
            configured=frozenset(v.name for v in settings.variant_list()),
            arches=tuple(settings.arch_list()),
        )


class OfficialExtensions:
    """The factory's official extension names per version, cached for `ttl` seconds."""

    def __init__(self, factory: FactoryClient, ttl: float = EXTENSIONS_TTL) -> None:
        self.factory = factory
        self.ttl = ttl
        self._lists: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def for_versions(self, versions: Iterable[str]) -> dict[str, list[str]]:
        """Blocking; raises `UpstreamError` when the factory cannot answer."""
        lists = {}
        for version in versions:
            with self._lock:
                cached = self._lists.get(version)
            if cached is None or time.monotonic() - cached[0] > self.ttl:
                names = [extension.name for extension in self.factory.official_extensions(version)]
                cached = (time.monotonic(), names)
                with self._lock:
                    self._lists[version] = cached
            lists[version] = cached[1]
        return lists

    def common(self, versions: list[str]) -> list[str] | None:
        """The names every one of `versions` offers, for the form (None: the factory did not answer)."""
        try:
            lists = self.for_versions(versions)
        except UpstreamError as exc:
            log.warning("official extensions for the request form: %s", exc)
            return None
        sets = [set(names) for names in lists.values()]
        return sorted(set.intersection(*sets)) if sets else []


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class SelfService:
    """The two routes, over the store, the catalog snapshot and the configured factory."""

    def __init__(
        self,
        store: Store,
        options: SelfServiceOptions,
        factory: FactoryClient,
        snapshot: Callable[[], Any],
        limiter: anyio.CapacityLimiter,
        base_url: Callable[[Request], str],
    ) -> None:
        self.store = store
        self.base_url = base_url
        self.options = options
        self.extensions = OfficialExtensions(factory)
        self.snapshot = snapshot
        self.limiter = limiter
        self.admission = Admission(configured=options.configured, pending_limit=options.pending_limit)
        self._digests = tuple(_digest(token) for token in options.tokens)
        self._book = RequestBook(store)
        self._book_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        store: Store,
        options: SelfServiceOptions,
        factory_url: str,
        snapshot: Callable[[], Any],
        limiter: Any,
        base_url: Callable[[Request], str],
    ) -> SelfService:
        factory = FactoryClient(factory_url, retry=RetryPolicy(attempts=2))
        return cls(store, options, factory, snapshot, limiter, base_url)

    # ---- what the page shows
    def requests(self) -> list[SelfServiceRequest]:
        with self._book_lock:
            return self._book.all()

    def targets(self, snapshot: Snapshot) -> list[str]:
        return target_versions({version for (version, _v, _a) in snapshot.by_triple}, self.options.versions)

    def view(self, snapshot: Snapshot) -> SelfServiceView:
        """Blocking (store, factory): the form's choices and the recent requests."""
        targets = self.targets(snapshot)
        return SelfServiceView(
            versions=targets,
            arches=self.options.arches,
            extensions=self.extensions.common(targets),
            recent=list(reversed(self.requests()))[:RECENT],
            pending_limit=self.options.pending_limit,
        )

    # ---- POST /requests
    def authorized(self, token: str | None) -> bool:
        """Compared in constant time with every configured token (as sha256 digests, so neither
        the tokens' contents nor their lengths show in the timing)."""
        given = _digest(token or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(given, digest)
        return found and bool(token)

    async def post(self, request: Request) -> Response:
        form = request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM
        try:
            body = check_size(await request.body())
            accepted, created = await anyio.to_thread.run_sync(self._accept, request, body, form, limiter=self.limiter)
        except RequestRejected as exc:
            log.info("request refused (%d): %s", exc.status, exc)
            return self._refused(exc.status, str(exc), form)
        except (StoreError, UpstreamError) as exc:
            log.error("request not taken: %s", exc)
            what = "the store" if isinstance(exc, StoreError) else "the Image Factory"
            return self._refused(503, f"{what} cannot be reached to check this request; try again shortly", form)
        if form:
            return Response(
                status_code=303, headers={"Location": f"/requests/{accepted.id}", "Cache-Control": NO_STORE}
            )
        status = 202 if created else 200
        body_json = accepted.public() if not created else {
            "id": accepted.id, "status": str(accepted.status), "status_url": f"/requests/{accepted.id}",
        }  # fmt: skip
        return JSONResponse(
            body_json, status_code=status, headers={"Location": f"/requests/{accepted.id}", "Cache-Control": NO_STORE}
        )

    def _accept(self, request: Request, body: bytes, form: bool) -> tuple[SelfServiceRequest, bool]:
        """(the request, created) or `RequestRejected`; blocking (store, factory)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not form and content_type not in ("application/json", ""):
            raise RequestRejected(415, f"send the request as application/json or {FORM}, not {content_type!r}")
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        if form and token is None:
            token = form_token(body)
        if not token:
            raise RequestRejected(401, "no token: send Authorization: Bearer <token> (or the form's token field)")
        if not self.authorized(token):
            raise RequestRejected(401, "the token is not one this server accepts")
        spec: RequestSpec = parse_form_request(body)[0] if form else parse_json_request(body)
        snapshot = self.snapshot()
        if snapshot is None:
            raise RequestRejected(503, "no catalog is published yet; requests are taken once images are")
        requester = token_fingerprint(token)
        with self._book_lock:
            existing = self._book.all()
        reused = self.admission.admit(spec, requester, existing, read_variant_set(self.store))
        if reused is not None:
            log.info("request for %s answered with request %s (same image)", spec.name, reused.id)
            return reused, False
        targets = self.targets(snapshot)
        check_offered(spec, self.extensions.for_versions(targets))
        created = SelfServiceRequest.new(spec, requester)
        create_request(self.store, created)
        log.info(
            "request %s accepted: %s (%s, %s) for %s",
            created.id, spec.name, spec.platform, ", ".join(spec.extensions) or "no extensions", ", ".join(targets),
        )  # fmt: skip
        return created, True

    def _refused(self, status: int, message: str, form: bool) -> Response:
        headers = {"Cache-Control": NO_STORE}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="talos-pipeline self-service"'
        if form:
            return Response(render_error(status, message), status_code=status, media_type=HTML,
                            headers={**dict(PAGE_HEADERS), **headers})  # fmt: skip
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    # ---- GET /requests/<id>
    async def status(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        found = await anyio.to_thread.run_sync(read_request, self.store, request_id, limiter=self.limiter)
        if found is None:
            return JSONResponse(
                {"error": f"no request {request_id!r} here", "status": 404},
                status_code=404,
                headers={"Cache-Control": NO_STORE},
            )
        if _wants_html(request):
            headers = {**dict(PAGE_HEADERS), "Cache-Control": NO_STORE, "Vary": "Accept"}
            return Response(render_request(found, self.base_url(request)), media_type=HTML, headers=headers)
        return Response(
            json.dumps(found.public(), indent=1) + "\n",
            media_type="application/json",
            headers={"Cache-Control": NO_STORE, "Vary": "Accept"},  # the page's link asks for HTML
        )


def _wants_html(request: Request) -> bool:
    """Browsers name text/html first in Accept; curl and libraries send `*/*` or JSON."""
    if request.query_params.get("format") == "json":
        return False
    return request.headers.get("accept", "").lstrip().startswith(("text/html", "application/xhtml+xml"))
