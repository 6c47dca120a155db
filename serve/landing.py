"""The page at `/`: rendered from the catalog snapshot being served, kept like the catalog documents.

The page is rebuilt when the snapshot changes (so it never shows another catalog than the one
`/streams/v1/images.json` answers with at that moment) and, with self-service on, when the requests
in the store change (checked at most every `refresh_seconds`); each build is kept as a `Document`
(identity and gzip, strong ETags, 304s). Builds are per base URL (from `TALOS_PUBLIC_URL`, else the
request's Host), a handful at most. The extensions of custom schematics come from the store
(`state/schematics/<id>.json`, written by the pipeline): the page never asks the factory about
the catalog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from talos_pipeline.core.schematics import read_schematic_extensions
from talos_pipeline.core.simplestreams import CatalogImage
from talos_pipeline.core.stores import Store
from talos_pipeline.core.variants import VANILLA_SCHEMATIC

from .handlers import Handlers
from .page import HTML, PAGE_HEADERS, PageView, render_page, schematic_and_platform
from .selfservice import SelfService
from .snapshot import Document, Snapshot

MAX_BASES = 8
MISSING_RETRY_SECONDS = 60.0


@dataclass
class _Built:
    snapshot: Snapshot
    document: Document
    checked: float


class Landing:
    def __init__(
        self,
        store: Store,
        handlers: Handlers,
        self_service: SelfService | None,
        limiter: anyio.CapacityLimiter,
        refresh_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.handlers = handlers
        self.self_service = self_service
        self.limiter = limiter
        self.refresh_seconds = refresh_seconds
        self._built: dict[str, _Built] = {}
        self._extensions: dict[str, tuple[str, ...]] = {VANILLA_SCHEMATIC: ()}
        self._missing: dict[str, float] = {}
        self._lock = threading.Lock()

    async def page(self, request: Request) -> Response:
        snapshot = await self.handlers.snapshot()
        if snapshot is None:
            return self.handlers.unavailable()
        base = self.handlers.page_base(request)
        built = self._built.get(base)
        if built is None or built.snapshot is not snapshot or self._due(built):
            document = await anyio.to_thread.run_sync(self.build, snapshot, base, limiter=self.limiter)
        else:
            document = built.document
        return self.handlers.document(request, document, content_type=HTML)

    def _due(self, built: _Built) -> bool:
        return self.self_service is not None and time.monotonic() - built.checked >= self.refresh_seconds

    def build(self, snapshot: Snapshot, base: str) -> Document:
        """The page for `snapshot` at `base` (blocking: reads the store, maybe the factory's lists)."""
        with self._lock:
            built = self._built.get(base)
            if built is not None and built.snapshot is snapshot and not self._due(built):
                return built.document
            images = list(snapshot.by_triple.values())
            view = PageView(
                base=base,
                images=images,
                extensions=self._schematic_extensions(images),
                written_at=snapshot.written_at,
                self_service=self.self_service.view(snapshot) if self.self_service is not None else None,
            )
            body = render_page(view)
            if built is not None and built.document.body == body:
                document = built.document
            else:
                document = Document.of(body, None, content_type=HTML, headers=PAGE_HEADERS)
            if base not in self._built and len(self._built) >= MAX_BASES:
                self._built.clear()
            self._built[base] = _Built(snapshot, document, time.monotonic())
            return document

    def _schematic_extensions(self, images: Iterable[CatalogImage]) -> dict[str, tuple[str, ...]]:
        now = time.monotonic()
        for image in images:
            schematic, _platform = schematic_and_platform(image)
            if schematic is None or schematic in self._extensions or self._missing.get(schematic, 0) > now:
                continue
            found = read_schematic_extensions(self.store, schematic)
            if found is None:
                self._missing[schematic] = now + MISSING_RETRY_SECONDS
            else:
                self._extensions[schematic] = found
        return dict(self._extensions)
