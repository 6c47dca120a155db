"""The Talos Image Factory's routes, as clients see them (docs/talos-upstream.md, "Image Factory").

``GET /versions``, ``POST /schematics``, ``GET /schematics/<id>``,
``GET /version/<version>/extensions/official`` (`extensions.py`),
``GET|HEAD /image/<schematic>/<version>/<platform>-<arch>.qcow2`` with the factory's status codes
and plain-text errors, no ETag/Last-Modified/Range, cold builds (`builds.py`) and an optional 302
to ``/cdn/...`` (the object store the real factory redirects to). An image's bytes depend on its
schematic, so a schematic with extensions gets other bytes than the vanilla one.
"""

from __future__ import annotations

import re
import threading
from enum import StrEnum
from urllib.parse import unquote

from .builds import BuildQueue
from .extensions import extension_bytes, missing_extensions, offered_extensions
from .images import ImageCache, ImageFile, ImageKey, ImageSizes, normalize_version
from .messages import TEXT, Request, Response, json_answer, only, text
from .releases import ReleaseHistory, parse_semver
from .schematics import (
    VANILLA_SCHEMATIC_YAML,
    SchematicError,
    canonical_schematic,
    official_extensions,
    schematic_id,
)

__all__ = ["ARCHES", "PLATFORMS", "QCOW2_CONTENT_TYPE", "VANILLA_SCHEMATIC", "ImageFactory", "Redirect"]

VANILLA_SCHEMATIC = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
ARCHES = ("amd64", "arm64")
PLATFORMS = frozenset(
    {
        "nocloud", "metal", "aws", "azure", "gcp", "openstack", "vmware", "digital-ocean", "hcloud",
        "oracle", "scaleway", "upcloud", "vultr", "exoscale", "akamai", "cloudstack", "opennebula",
    }
)  # fmt: skip
QCOW2_CONTENT_TYPE = "application/x-qemu-disk"
_IMAGE_FILE_RE = re.compile(r"^(?P<stem>[^.]+)\.(?P<ext>.+)$")
_EXTENSIONS_RE = re.compile(r"^/version/(?P<version>[^/]+)/extensions/official/?$")


class Redirect(StrEnum):
    """Which image GETs answer 302 to ``/cdn/...`` (``HEAD`` never does)."""

    NEVER = "never"
    ALWAYS = "always"
    CACHED = "cached"  # only images built before the request, as the real factory


class ImageFactory:
    """The factory's state: registered schematics, image files, cold builds and download counts."""

    def __init__(
        self,
        history: ReleaseHistory,
        images: ImageCache,
        sizes: ImageSizes,
        builds: BuildQueue,
        *,
        redirect: Redirect,
    ) -> None:
        self.history = history
        self.images = images
        self.sizes = sizes
        self.builds = builds
        self.redirect = redirect
        self._lock = threading.Lock()
        self._schematics: dict[str, str] = {VANILLA_SCHEMATIC: VANILLA_SCHEMATIC_YAML}
        self._extensions: dict[str, tuple[str, ...]] = {VANILLA_SCHEMATIC: ()}
        self._downloads: dict[ImageKey, int] = {}

    # ------------------------------------------------------------------ state
    def register_schematic(self, body: bytes) -> str:
        canonical = canonical_schematic(body)
        sid = schematic_id(canonical)
        extensions = official_extensions(canonical)
        with self._lock:
            self._schematics[sid] = canonical
            self._extensions[sid] = extensions
        return sid

    def schematic(self, sid: str) -> str | None:
        with self._lock:
            return self._schematics.get(sid)

    def extensions_of(self, sid: str) -> tuple[str, ...]:
        """The official extensions a registered schematic asks for."""
        with self._lock:
            return self._extensions.get(sid, ())

    def image_file(self, key: ImageKey) -> ImageFile:
        extra = extension_bytes(self.extensions_of(key.schematic), key.version)
        return self.images.ensure(key, self.sizes.data_size(key, extra))

    def count_download(self, key: ImageKey) -> None:
        with self._lock:
            self._downloads[key] = self._downloads.get(key, 0) + 1

    def downloads(self, key: ImageKey) -> int:
        with self._lock:
            return self._downloads.get(key, 0)

    def total_downloads(self) -> int:
        with self._lock:
            return sum(self._downloads.values())

    def downloads_by_image(self) -> dict[ImageKey, int]:
        with self._lock:
            return dict(self._downloads)

    def reset_downloads(self) -> None:
        with self._lock:
            self._downloads.clear()

    def _build(self, key: ImageKey) -> bool:
        """Wait for the current generation of ``key`` to be built; True if it already was."""
        return self.builds.await_build((key, self.images.generation(key)), lambda: self.image_file(key))

    # ------------------------------------------------------------------ routes
    def handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/cdn/"):
            return self._cdn(request)
        if path == "/versions":
            return only(request, ("GET", "HEAD")) or json_answer(
                200, self.history.factory_versions(), content_type=TEXT
            )
        if path == "/schematics":
            return only(request, ("POST",)) or self._post_schematic(request.body)
        if path.startswith("/schematics/"):
            return only(request, ("GET", "HEAD")) or self._get_schematic(path)
        if path.startswith("/image/"):
            return only(request, ("GET", "HEAD")) or self._image(request)
        if (m := _EXTENSIONS_RE.match(path)) is not None:
            return only(request, ("GET", "HEAD")) or self._extensions_for(unquote(m.group("version")))
        return text(404, "404 page not found")

    def _offered(self, version: str) -> Response | None:
        """The factory's refusal of a version it cannot build (``version`` starts with "v"), if any."""
        if parse_semver(version) is None:
            return text(500, "internal server error")
        if version not in self.history.factory_versions():
            return text(404, f"version {version[1:]} is not available")
        return None

    def _extensions_for(self, version: str) -> Response:
        version = normalize_version(version)
        refusal = self._offered(version)
        if refusal is not None:
            return refusal
        listing = [extension.as_json(version) for extension in offered_extensions(version)]
        return json_answer(200, listing, content_type=TEXT)

    def _post_schematic(self, body: bytes) -> Response:
        try:
            sid = self.register_schematic(body)
        except SchematicError as exc:
            return text(400, str(exc))
        return json_answer(201, {"id": sid})

    def _get_schematic(self, path: str) -> Response:
        canonical = self.schematic(path[len("/schematics/") :])
        if canonical is None:
            return text(404, "schematic not found")
        return Response(200, canonical.encode(), content_type="application/yaml")

    def _image(self, request: Request) -> Response:
        path = request.path
        parts = path.split("/")
        if len(parts) != 5 or not all(parts[2:]):
            expected = "/image/<schematic>/<version>/<platform>-<arch>.qcow2"
            return text(400, f"invalid image path {path!r}: expected {expected}")
        schematic, version, filename = parts[2], unquote(parts[3]), unquote(parts[4])
        if self.schematic(schematic) is None:
            return text(404, "schematic not found")
        version = normalize_version(version)
        refusal = self._offered(version)
        if refusal is not None:
            return refusal
        m = _IMAGE_FILE_RE.match(filename)
        if m is None or "-" not in m.group("stem"):
            return text(400, f"invalid profile path {filename!r}: expected <platform>-<arch>.qcow2")
        platform, arch = m.group("stem").rsplit("-", 1)
        ext = m.group("ext")
        if ext.endswith((".sha256", ".sha512")):
            return text(402, "checksums are an Image Factory Enterprise feature")
        if arch not in ARCHES:
            return text(400, f"invalid architecture {arch!r}: expected one of {', '.join(ARCHES)}")
        if platform not in PLATFORMS:
            return text(400, f"unknown platform {platform!r}")
        if ext != "qcow2":
            return text(400, f"unsupported image kind {ext!r}: this simulator serves only .qcow2 disk images")
        missing = missing_extensions(self.extensions_of(schematic), version)
        if missing:
            return text(400, f'official extension "{missing[0]}" is not available for Talos version {version}')
        key = ImageKey(schematic, version, platform, arch)
        cached = self._build(key)
        image = self.image_file(key)
        redirect = self.redirect is Redirect.ALWAYS or (self.redirect is Redirect.CACHED and cached)
        if redirect and request.method == "GET":
            location = f"{request.base_url}/cdn/{image.token}/{key.filename}"
            body = f'<a href="{location}">Found</a>.\n\n'.encode()
            return Response(302, body, content_type="text/html; charset=utf-8", headers={"Location": location})
        return self._serve(image)

    def _cdn(self, request: Request) -> Response:
        parts = request.path.split("/")
        image = self.images.cdn_file(parts[2]) if len(parts) == 4 else None
        if image is None or parts[3] != image.key.filename or request.method not in ("GET", "HEAD"):
            return text(404, "404 page not found")
        return self._serve(image)

    def _serve(self, image: ImageFile) -> Response:
        return Response(
            200,
            content_type=QCOW2_CONTENT_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{image.key.filename}"'},
            file=image.path,
            size=image.size,
            on_body_start=lambda: self.count_download(image.key),
        )
