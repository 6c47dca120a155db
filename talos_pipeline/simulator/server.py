"""An offline stand-in for the GitHub releases API and the Talos Image Factory.

One loopback HTTP server answers both:

* ``/repos/siderolabs/talos/releases`` (and the ``/repositories/<id>/releases`` form its ``link``
  headers use): newest first, ``per_page``/``page``, ``link``, ``etag``/``If-None-Match`` -> 304,
  ``x-ratelimit-*`` headers with the real budgets (60/hour anonymous, 5000/hour with a token;
  304s are free only with a token), drafts hidden, ``/releases/tags/<tag>``, ``/releases/latest``.
* the factory at the root: ``/versions``, ``POST /schematics``, ``/schematics/<id>``,
  ``GET|HEAD /image/<schematic>/<version>/<platform>-<arch>.qcow2`` with the factory's status codes
  and plain-text error bodies, no ETag/Last-Modified/Range, optional 302 to ``/cdn/...``, an
  optional cold-build delay, and images that are real qcow2 files (see `qcow2.py`).

Tests drive it through `UpstreamSimulator`: count downloads, make an image drift (the factory
rebuilt it: same URL, other bytes), add releases at runtime, inject faults by URL path prefix, and
exhaust the GitHub rate limit. See `talos-upstream.md` in the shared reference for the behaviour
being reproduced.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .qcow2 import write_qcow2
from .releases import DEFAULT_RELEASES, SimulatedRelease, factory_versions, format_timestamp, parse_semver, semver_key
from .schematics import VANILLA_SCHEMATIC_YAML, SchematicError, canonical_schematic, schematic_id

__all__ = ["ARCHES", "FAULTS", "GITHUB_REPO_ID", "PLATFORMS", "VANILLA_SCHEMATIC", "UpstreamSimulator"]

VANILLA_SCHEMATIC = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
GITHUB_OWNER, GITHUB_REPO = "siderolabs", "talos"
GITHUB_REPO_ID = 130424170  # illustrative: link headers use /repositories/<id>/releases
ARCHES = ("amd64", "arm64")
PLATFORMS = frozenset(
    {
        "nocloud", "metal", "aws", "azure", "gcp", "openstack", "vmware", "digital-ocean", "hcloud",
        "oracle", "scaleway", "upcloud", "vultr", "exoscale", "akamai", "cloudstack", "opennebula",
    }
)  # fmt: skip
QCOW2_CONTENT_TYPE = "application/x-qemu-disk"
TEXT = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"
MAX_REQUEST_BODY = 1024 * 1024
GITHUB_DOCS = "https://docs.github.com/rest"
RATE_LIMIT_DOCS = f"{GITHUB_DOCS}/overview/rate-limits-for-the-rest-api"
UPLOADS = "https://uploads.github.com"

# Faults answered before routing (status faults) and faults applied to a 200 response body.
_STATUS_FAULTS = ("500", "503", "429", "403")
_BODY_FAULTS = ("truncate", "reset", "overlong", "stall")
_DELAY_FAULTS = ("slow_first_byte",)
_REDIRECT_FAULTS = ("redirect_chain",)
FAULTS = frozenset(_STATUS_FAULTS + _BODY_FAULTS + _DELAY_FAULTS + _REDIRECT_FAULTS)
# Bump when the image recipe changes so a reused cache_dir never serves stale bytes.
_IMAGE_RECIPE = "q1"


class _ImageKey(NamedTuple):
    schematic: str
    version: str  # always with the leading "v"
    platform: str
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.platform}-{self.arch}.qcow2"


class _Fault:
    __slots__ = ("kind", "prefix", "remaining")

    def __init__(self, prefix: str, kind: str, remaining: int | None) -> None:
        self.prefix, self.kind, self.remaining = prefix, kind, remaining


class _CdnObject(NamedTuple):
    key: _ImageKey
    path: Path
    size: int


def _normalize_version(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"


def _release_id(tag: str) -> int:
    return 200_000_000 + int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "big") % 90_000_000


def _now_timestamp() -> str:
    return format_timestamp(datetime.now(UTC))


class UpstreamSimulator:
    """GitHub releases API + Talos Image Factory on one loopback port. Use as a context manager.

    ``disk_size`` is the amount of pseudo-random data in each served qcow2 (the file is a little
    larger: qcow2 metadata). Images are generated on first request into ``cache_dir`` (a temporary
    directory removed by `stop` when not given; a given directory is reused across runs).
    """

    #: seconds the ``slow_first_byte`` fault waits before answering
    slow_first_byte_seconds: float = 2.0
    #: seconds the ``stall`` fault pauses in the middle of a body
    stall_seconds: float = 2.0
    #: hops of the ``redirect_chain`` fault before the real answer
    redirect_hops: int = 3
    #: ``retry-after`` sent with the ``429`` fault
    fault_retry_after: int = 1
    #: seconds until ``x-ratelimit-reset`` for the ``403``/``429`` faults
    fault_reset_in: float = 1.0
    #: GitHub's rate-limit window
    rate_limit_window: float = 3600.0

    def __init__(
        self,
        releases: Iterable[SimulatedRelease] | None = None,
        *,
        disk_size: int = 2 * 1024 * 1024,
        cache_dir: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect: bool = False,
        first_byte_delay: float = 0.0,
        per_page_default: int = 30,
        verbose: bool = False,
        rate_limit_unauthenticated: int = 60,
        rate_limit_authenticated: int = 5000,
    ) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the upstream simulator listens on loopback only; host {host!r} is not 127.0.0.1 or ::1")
        if not isinstance(disk_size, int) or disk_size <= 0:
            raise ValueError(f"disk_size must be a positive number of bytes, got {disk_size!r}")
        if not 1 <= per_page_default <= 100:
            raise ValueError(f"per_page_default must be between 1 and 100, got {per_page_default}")
        self.host = host
        self.port = port
        self.disk_size = disk_size
        self.redirect = redirect
        self.first_byte_delay = first_byte_delay
        self.per_page_default = per_page_default
        self.verbose = verbose
        self.rate_limit_unauthenticated = rate_limit_unauthenticated
        self.rate_limit_authenticated = rate_limit_authenticated
        self._given_cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._temp_cache_dir: Path | None = None

        self._lock = threading.RLock()
        self._releases: dict[str, SimulatedRelease] = {}
        for release in DEFAULT_RELEASES if releases is None else releases:
            if not isinstance(release, SimulatedRelease):
                raise TypeError(f"releases must be SimulatedRelease objects, got {release!r}")
            self._releases[release.tag] = release
        self._schematics: dict[str, str] = {VANILLA_SCHEMATIC: VANILLA_SCHEMATIC_YAML}
        self._downloads: dict[_ImageKey, int] = {}
        self._generations: dict[_ImageKey, int] = {}
        self._cold_until: dict[tuple[_ImageKey, int], float] = {}
        self._file_locks: dict[str, threading.Lock] = {}
        self._cdn: dict[str, _CdnObject] = {}
        self._faults: list[_Fault] = []
        self._buckets: dict[str, dict[str, Any]] = {}
        self._forced_limit: dict[str, float] | None = None
        self._requests: deque[tuple[str, str, int]] = deque(maxlen=100_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> UpstreamSimulator:
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._server = _Server((self.host, self.port), _Handler, self, family)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="upstream-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            temp, self._temp_cache_dir = self._temp_cache_dir, None
            self._cdn.clear()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    def __enter__(self) -> UpstreamSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running; call start() or use it as a context manager")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def releases_url(self) -> str:
        return f"{self.url}/repos/{GITHUB_OWNER}/{GITHUB_REPO}/releases"

    @property
    def factory_url(self) -> str:
        return self.url

    @property
    def cache_dir(self) -> Path:
        with self._lock:
            if self._given_cache_dir is not None:
                self._given_cache_dir.mkdir(parents=True, exist_ok=True)
                return self._given_cache_dir
            if self._temp_cache_dir is None:
                self._temp_cache_dir = Path(tempfile.mkdtemp(prefix="talos-upstream-sim-"))
            return self._temp_cache_dir

    def image_url(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> str:
        return f"{self.factory_url}/image/{schematic}/{_normalize_version(version)}/{platform}-{arch}.qcow2"

    # ------------------------------------------------------------------ releases
    @property
    def releases(self) -> list[SimulatedRelease]:
        """All releases (drafts included), newest first as GitHub orders them."""
        with self._lock:
            return _newest_first(self._releases.values())

    def versions(self) -> list[str]:
        """What the factory's ``GET /versions`` currently answers."""
        with self._lock:
            return factory_versions(self._releases.values())

    def add_release(
        self,
        tag: str,
        published_at: str | None = None,
        prerelease: bool | None = None,
        draft: bool = False,
    ) -> SimulatedRelease:
        """Add (or replace: e.g. publish a draft) a release; the releases etag changes."""
        release = SimulatedRelease(
            tag=tag,
            published_at=published_at or _now_timestamp(),
            prerelease=("-" in tag) if prerelease is None else prerelease,
            draft=draft,
        )
        with self._lock:
            self._releases[tag] = release
        return release

    def remove_release(self, tag: str) -> None:
        with self._lock:
            if self._releases.pop(tag, None) is None:
                raise KeyError(f"no release {tag!r}")

    # ------------------------------------------------------------------ images
    def _key(self, version: str, arch: str, platform: str, schematic: str) -> _ImageKey:
        return _ImageKey(schematic, _normalize_version(version), platform, arch)

    def downloads(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> int:
        """GET bodies started for that image (factory or CDN; HEAD and 302s not counted)."""
        with self._lock:
            return self._downloads.get(self._key(version, arch, platform, schematic), 0)

    def total_downloads(self) -> int:
        with self._lock:
            return sum(self._downloads.values())

    def drift(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> int:
        """Later requests for that image get different bytes (a factory rebuild); returns the generation."""
        key = self._key(version, arch, platform, schematic)
        with self._lock:
            self._generations[key] = self._generations.get(key, 0) + 1
            return self._generations[key]

    def image_seed(
        self,
        version: str,
        arch: str,
        platform: str = "nocloud",
        schematic: str = VANILLA_SCHEMATIC,
        generation: int | None = None,
    ) -> bytes:
        key = self._key(version, arch, platform, schematic)
        if generation is None:
            with self._lock:
                generation = self._generations.get(key, 0)
        return _seed(key, generation)

    def image_path(
        self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC
    ) -> Path:
        """The file the factory currently serves for that image (generated if needed)."""
        path, _, _ = self._ensure_image(self._key(version, arch, platform, schematic))
        return path

    def image_sha256(
        self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC
    ) -> str:
        """sha256 of the bytes the factory currently serves for that image."""
        digest = hashlib.sha256()
        with open(self.image_path(version, arch, platform, schematic), "rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                digest.update(chunk)
        return digest.hexdigest()

    def _ensure_image(self, key: _ImageKey) -> tuple[Path, int, str]:
        """Generate the current generation's file once (temp file + rename); return path, size, CDN token."""
        with self._lock:
            generation = self._generations.get(key, 0)
            seed = _seed(key, generation)
            name = f"{_IMAGE_RECIPE}-{seed.hex()}-{self.disk_size}.qcow2"
            lock = self._file_locks.setdefault(name, threading.Lock())
        path = self.cache_dir / name
        with lock:
            if not path.exists():
                tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
                try:
                    with open(tmp, "wb") as f:
                        write_qcow2(f, data_size=self.disk_size, seed=seed)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        size = path.stat().st_size
        token = hashlib.sha256(name.encode()).hexdigest()[:32]
        with self._lock:
            self._cdn[token] = _CdnObject(key, path, size)
        return path, size, token

    def _cold_wait(self, key: _ImageKey) -> None:
        delay = self.first_byte_delay
        if delay <= 0:
            return
        with self._lock:
            cold = (key, self._generations.get(key, 0))
            until = self._cold_until.get(cold)
            if until is None:
                until = self._cold_until[cold] = time.monotonic() + delay
        remaining = until - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    def _count_download(self, key: _ImageKey) -> None:
        with self._lock:
            self._downloads[key] = self._downloads.get(key, 0) + 1

    # ------------------------------------------------------------------ schematics
    def schematics(self) -> dict[str, str]:
        with self._lock:
            return dict(self._schematics)

    def _register_schematic(self, body: bytes) -> str:
        canonical = canonical_schematic(body)
        sid = schematic_id(canonical)
        with self._lock:
            self._schematics[sid] = canonical
        return sid

    # ------------------------------------------------------------------ faults
    def set_fault(self, path_prefix: str, fault: str, count: int | None = None) -> None:
        """Inject ``fault`` into requests whose path starts with ``path_prefix``.

        ``count=None``: every matching request until `clear_faults`; else the next ``count``.
        Status faults (500, 503, 429, 403) replace the answer; ``slow_first_byte`` delays it;
        ``truncate`` / ``reset`` / ``overlong`` (junk after Content-Length bytes) / ``stall``
        (a pause of `stall_seconds` mid-body) apply to the next matching 200 response that has a
        body; ``redirect_chain`` answers `redirect_hops` 302s before the real answer.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if not isinstance(path_prefix, str) or not path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', got {path_prefix!r}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be None (persistent) or a positive integer, got {count!r}")
        with self._lock:
            self._faults = [f for f in self._faults if not (f.prefix == path_prefix and f.kind == fault)]
            self._faults.append(_Fault(path_prefix, fault, count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            best: _Fault | None = None
            for fault in self._faults:
                if fault.kind in kinds and path.startswith(fault.prefix):
                    if best is None or len(fault.prefix) >= len(best.prefix):
                        best = fault
            if best is None:
                return None
            if best.remaining is not None:
                best.remaining -= 1
                if best.remaining <= 0:
                    self._faults.remove(best)
            return best.kind

    # ------------------------------------------------------------------ GitHub rate limit
    def rate_limit(self, remaining: int | None, *, reset_in: float = 60.0) -> None:
        """After ``remaining`` more GitHub API requests, answer 403 until ``reset_in`` seconds pass.

        ``None`` lifts the override (the normal 60/5000 per hour budgets still apply).
        """
        with self._lock:
            if remaining is None:
                self._forced_limit = None
                return
            if not isinstance(remaining, int) or remaining < 0:
                raise ValueError(f"remaining must be a non-negative integer, got {remaining!r}")
            self._forced_limit = {"remaining": remaining, "reset": math.ceil(time.time() + reset_in)}

    def _rl_admit(self, identity: str, limit: int) -> tuple[bool, dict[str, str]]:
        """Charge one request if budget is left; return (admitted, headers)."""
        with self._lock:
            now = time.time()
            bucket = self._buckets.get(identity)
            if bucket is None or now >= bucket["reset"]:
                bucket = self._buckets[identity] = {
                    "limit": limit, "used": 0, "reset": math.ceil(now + self.rate_limit_window)
                }  # fmt: skip
            forced = self._forced_limit
            if forced is not None and now >= forced["reset"]:
                forced = self._forced_limit = None
            admitted = self._rl_remaining(bucket, forced)[0] > 0
            if admitted:
                bucket["used"] += 1
                if forced is not None:
                    forced["remaining"] -= 1
            return admitted, self._rl_headers(bucket, forced)

    def _rl_refund(self, identity: str) -> dict[str, str]:
        with self._lock:
            bucket = self._buckets[identity]
            bucket["used"] = max(0, bucket["used"] - 1)
            forced = self._forced_limit
            if forced is not None:
                forced["remaining"] += 1
            return self._rl_headers(bucket, forced)

    @staticmethod
    def _rl_remaining(bucket: dict[str, Any], forced: dict[str, float] | None) -> tuple[int, int]:
        remaining, reset = bucket["limit"] - bucket["used"], bucket["reset"]
        if forced is not None and forced["remaining"] < remaining:
            remaining, reset = int(forced["remaining"]), int(forced["reset"])
        return max(0, remaining), reset

    def _rl_headers(self, bucket: dict[str, Any], forced: dict[str, float] | None) -> dict[str, str]:
        remaining, reset = self._rl_remaining(bucket, forced)
        return {
            "x-ratelimit-limit": str(bucket["limit"]),
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-used": str(bucket["limit"] - remaining),
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-resource": "core",
        }

    def rate_limit_status(self, token: str | None = None) -> dict[str, int]:
        """The budget GitHub would report for anonymous callers (or ``token``), without spending it."""
        identity = f"token:{token}" if token else "ip:127.0.0.1"
        limit = self.rate_limit_authenticated if token else self.rate_limit_unauthenticated
        with self._lock:
            bucket = self._buckets.get(identity) or {
                "limit": limit, "used": 0, "reset": math.ceil(time.time() + self.rate_limit_window)
            }  # fmt: skip
            headers = self._rl_headers(bucket, self._forced_limit)
        return {k.removeprefix("x-ratelimit-"): int(v) for k, v in headers.items() if v.isdigit()}

    # ------------------------------------------------------------------ misc
    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path with query, status)`` of recent requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<UpstreamSimulator {where} releases={len(self._releases)} disk_size={self.disk_size}>"


def _seed(key: _ImageKey, generation: int) -> bytes:
    return hashlib.sha256(f"{key.schematic}/{key.version}/{key.platform}-{key.arch}/{generation}".encode()).digest()


def _newest_first(releases: Iterable[SimulatedRelease]) -> list[SimulatedRelease]:
    def order(release: SimulatedRelease) -> tuple:
        parsed = parse_semver(release.tag)
        return (release.published_at, 1 if parsed else 0, semver_key(release.tag) if parsed else (), release.tag)

    return sorted(releases, key=order, reverse=True)


# ====================================================================== HTTP plumbing
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, sim: UpstreamSimulator, family: int) -> None:
        self.address_family = family
        self.sim = sim
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = host, port

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        if self.sim.verbose:
            super().handle_error(request, client_address)


_IMAGE_FILE_RE = re.compile(r"^(?P<stem>[^.]+)\.(?P<ext>.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "talos-upstream-simulator/1"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _Server

    # ---------------------------------------------------------------- entry points
    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.sim.verbose:
            super().log_message(format, *args)

    @property
    def sim(self) -> UpstreamSimulator:
        return self.server.sim

    # ---------------------------------------------------------------- response helpers
    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.sim.url

    def _respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = TEXT,
        headers: dict[str, str] | None = None,
        file=None,
        size: int | None = None,
        on_body_start=None,
    ) -> None:
        head = self.command == "HEAD"
        length = size if file is not None else len(body)
        body_fault = None
        if status == 200 and not head and length:
            body_fault = self.sim._take_fault(self._path, _BODY_FAULTS)
        self.sim._record(self.command, self.path, status)
        self.send_response(status)
        if content_type and status != 304:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if head or status == 304 or not length:
            return
        if on_body_start is not None:
            on_body_start()
        if body_fault == "truncate":
            self._send_body(body, file, length // 2)
            self.close_connection = True
        elif body_fault == "reset":
            self._send_body(body, file, length // 4)
            self._reset_connection()
        elif body_fault == "overlong":
            self._send_body(body, file, length)
            self.wfile.write(b"\0JUNK AFTER CONTENT-LENGTH\0" * 64)
            self.close_connection = True
        elif body_fault == "stall":
            self._send_body(body, file, length // 2)
            time.sleep(self.sim.stall_seconds)
            self._send_body_from(body, file, length // 2, length)
        else:
            self._send_body(body, file, length)

    def _send_body_from(self, body: bytes, file, start: int, end: int) -> None:
        if file is None:
            self.wfile.write(body[start:end])
        else:
            self.connection.sendfile(file, start, end - start)

    def _send_body(self, body: bytes, file, count: int) -> None:
        if count <= 0:
            return
        if file is None:
            self.wfile.write(body[:count])
        else:
            self.connection.sendfile(file, 0, count)

    def _reset_connection(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0), as a dropped proxy or crashed server would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # drop makefile()'s reference so close() really closes the socket
        finally:
            self.connection.close()

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if not message.endswith("\n"):
            message += "\n"
        self._respond(status, message.encode(), headers=headers)

    def _json(
        self, status: int, value: Any, headers: dict[str, str] | None = None, content_type: str = JSON_TYPE
    ) -> None:
        body = json.dumps(value, separators=(",", ":")).encode()
        self._respond(status, body, content_type=content_type, headers=headers)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); ``None`` if too large (already answered)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_REQUEST_BODY:
                    self.close_connection = True
                    self._text(413, "request body too large")
                    return None
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(parts)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._text(400, "invalid Content-Length")
            return None
        if length > MAX_REQUEST_BODY:
            self.close_connection = True
            self._text(413, "request body too large")
            return None
        return self.rfile.read(length) if length > 0 else b""

    # ---------------------------------------------------------------- routing
    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = self._path = split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        body = b""
        if self.command in ("POST", "PUT", "PATCH"):
            body = self._read_body()
            if body is None:
                return
        sim = self.sim
        if sim._take_fault(path, _DELAY_FAULTS):
            time.sleep(sim.slow_first_byte_seconds)
        fault = sim._take_fault(path, _STATUS_FAULTS)
        if fault is not None:
            self._fault_answer(fault)
            return
        hop = dict(query).get("hop", "")
        hops = int(hop) if hop.isdigit() else 0
        if self.command == "GET" and (hops or sim._take_fault(path, _REDIRECT_FAULTS)) and hops < sim.redirect_hops:
            location = f"{self._base_url()}{path}?hop={hops + 1}"
            self._respond(302, b"", content_type=None, headers={"Location": location})
            return
        if path.startswith(("/repos/", "/repositories/")) or path == "/rate_limit":
            self._github(path, query)
        elif path.startswith("/cdn/"):
            self._cdn(path)
        elif path == "/versions":
            self._only(("GET", "HEAD")) and self._json(200, sim.versions(), content_type=TEXT)
        elif path == "/schematics":
            self._only(("POST",)) and self._post_schematic(body)
        elif path.startswith("/schematics/"):
            self._only(("GET", "HEAD")) and self._get_schematic(path)
        elif path.startswith("/image/"):
            self._only(("GET", "HEAD")) and self._image(path)
        else:
            self._text(404, "404 page not found")

    def _only(self, methods: tuple[str, ...]) -> bool:
        if self.command in methods:
            return True
        self._text(405, "Method Not Allowed", headers={"Allow": ", ".join(methods)})
        return False

    def _fault_answer(self, fault: str) -> None:
        sim = self.sim
        if fault == "500":
            self._text(500, "500 internal server error")
        elif fault == "503":
            self._text(503, "503 service unavailable")
        else:
            reset = math.ceil(time.time() + sim.fault_reset_in)
            headers = {
                "x-ratelimit-limit": str(sim.rate_limit_unauthenticated),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": str(sim.rate_limit_unauthenticated),
                "x-ratelimit-reset": str(reset),
                "x-ratelimit-resource": "core",
            }
            if fault == "429":
                headers["retry-after"] = str(sim.fault_retry_after)
                message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            else:
                message = f"API rate limit exceeded for {self.client_address[0]}."
            self._json(int(fault), {"message": message, "documentation_url": RATE_LIMIT_DOCS, "status": fault}, headers)

    # ---------------------------------------------------------------- GitHub
    def _github(self, path: str, query: list[tuple[str, str]]) -> None:
        sim = self.sim
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() in ("bearer", "token") else ""
        identity = f"token:{token}" if token else f"ip:{self.client_address[0]}"
        limit = sim.rate_limit_authenticated if token else sim.rate_limit_unauthenticated
        common = {
            "x-github-api-version-selected": "2022-11-28",
            "x-github-media-type": "github.v3; format=json",
            "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding",
            "Cache-Control": f"{'private' if token else 'public'}, max-age=60, s-maxage=60",
        }
        if path == "/rate_limit":  # free, like the real endpoint
            status = sim.rate_limit_status(token or None)
            core = {name: status[name] for name in ("limit", "remaining", "used", "reset")}
            self._json(200, {"resources": {"core": core}, "rate": core}, common)
            return
        if self.command not in ("GET", "HEAD"):
            self._json(404, _not_found("releases/releases"), common)
            return
        admitted, rl = sim._rl_admit(identity, limit)
        if not admitted:
            who = "user ID 1" if token else self.client_address[0]
            message = f"API rate limit exceeded for {who}."
            if not token:
                message += (
                    " (But here's the good news: Authenticated requests get a higher rate limit. "
                    "Check out the documentation for more details.)"
                )
            self._json(403, {"message": message, "documentation_url": RATE_LIMIT_DOCS}, {**common, **rl})
            return

        status, value, extra = self._github_route(path, query)
        if status != 200:
            self._json(status, value, {**common, **rl, **extra})
            return
        body = json.dumps(value, separators=(",", ":")).encode()
        etag = 'W/"' + hashlib.sha256(body).hexdigest() + '"'
        if _etag_matches(self.headers.get("If-None-Match"), etag):
            if token:
                rl = sim._rl_refund(identity)
            self._respond(304, headers={**common, **rl, **extra, "ETag": etag}, content_type=None)
            return
        self._respond(200, body, content_type=JSON_TYPE, headers={**common, **rl, **extra, "ETag": etag})

    def _github_route(self, path: str, query: list[tuple[str, str]]) -> tuple[int, Any, dict[str, str]]:
        sim = self.sim
        m = re.match(r"^/repos/([^/]+)/([^/]+)(/.*)?$", path) or re.match(r"^/repositories/(\d+)(/.*)?$", path)
        if m is None:
            return 404, _not_found(""), {}
        if path.startswith("/repos/"):
            owner, repo, rest = m.group(1), m.group(2), m.group(3) or ""
            if (owner.lower(), repo.lower()) != (GITHUB_OWNER, GITHUB_REPO):
                return 404, _not_found("repos/repos#get-a-repository"), {}
        else:
            if int(m.group(1)) != GITHUB_REPO_ID:
                return 404, _not_found("repos/repos#get-a-repository"), {}
            rest = m.group(2) or ""
        rest = rest.rstrip("/")
        base = self._base_url()
        with sim._lock:
            visible = [r for r in _newest_first(sim._releases.values()) if not r.draft]
        if rest == "/releases":
            return self._release_page(visible, query, base)
        if rest.startswith("/releases/tags/"):
            tag = unquote(rest[len("/releases/tags/") :])
            for release in visible:
                if release.tag == tag:
                    return 200, _release_json(release, base), {}
            return 404, _not_found("releases/releases#get-a-release-by-tag-name"), {}
        if rest == "/releases/latest":
            for release in visible:
                if not release.prerelease and "-" not in release.tag:
                    return 200, _release_json(release, base), {}
            return 404, _not_found("releases/releases#get-the-latest-release"), {}
        m = re.match(r"^/releases/(\d+)$", rest)
        if m:
            for release in visible:
                if _release_id(release.tag) == int(m.group(1)):
                    return 200, _release_json(release, base), {}
            return 404, _not_found("releases/releases#get-a-release"), {}
        return 404, _not_found(""), {}

    def _release_page(
        self, visible: list[SimulatedRelease], query: list[tuple[str, str]], base: str
    ) -> tuple[int, Any, dict[str, str]]:
        params = dict(query)
        try:
            per_page = int(params.get("per_page", ""))
        except ValueError:
            per_page = self.sim.per_page_default
        per_page = self.sim.per_page_default if per_page < 1 else min(per_page, 100)
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        last = max(1, math.ceil(len(visible) / per_page))
        items = visible[(page - 1) * per_page : page * per_page]
        headers = {}
        if len(visible) > per_page:

            def link(n: int) -> str:
                kept = [(k, v) for k, v in query if k != "page"]
                return f"{base}/repositories/{GITHUB_REPO_ID}/releases?{urlencode(kept + [('page', str(n))])}"

            rels = []
            if page > 1:
                rels.append(f'<{link(min(page - 1, last))}>; rel="prev"')
            if page < last:
                rels.append(f'<{link(page + 1)}>; rel="next"')
                rels.append(f'<{link(last)}>; rel="last"')
            if page > 1:
                rels.append(f'<{link(1)}>; rel="first"')
            headers["Link"] = ", ".join(rels)
        return 200, [_release_json(r, base) for r in items], headers

    # ---------------------------------------------------------------- factory
    def _post_schematic(self, body: bytes) -> None:
        try:
            sid = self.sim._register_schematic(body)
        except SchematicError as exc:
            self._text(400, str(exc))
            return
        self._json(201, {"id": sid})

    def _get_schematic(self, path: str) -> None:
        sid = path[len("/schematics/") :]
        with self.sim._lock:
            canonical = self.sim._schematics.get(sid)
        if canonical is None:
            self._text(404, "schematic not found")
        else:
            self._respond(200, canonical.encode(), content_type="application/yaml")

    def _image(self, path: str) -> None:
        sim = self.sim
        parts = path.split("/")
        if len(parts) != 5 or not all(parts[2:]):
            expected = "/image/<schematic>/<version>/<platform>-<arch>.qcow2"
            self._text(400, f"invalid image path {path!r}: expected {expected}")
            return
        schematic, version, filename = parts[2], unquote(parts[3]), unquote(parts[4])
        with sim._lock:
            known = schematic in sim._schematics
        if not known:
            self._text(404, "schematic not found")
            return
        version = _normalize_version(version)
        if parse_semver(version) is None:
            self._text(500, "internal server error")
            return
        if version not in sim.versions():
            self._text(404, f"version {version[1:]} is not available")
            return
        m = _IMAGE_FILE_RE.match(filename)
        if m is None or "-" not in m.group("stem"):
            self._text(400, f"invalid profile path {filename!r}: expected <platform>-<arch>.qcow2")
            return
        platform, arch = m.group("stem").rsplit("-", 1)
        ext = m.group("ext")
        if ext.endswith((".sha256", ".sha512")):
            self._text(402, "checksums are an Image Factory Enterprise feature")
            return
        if arch not in ARCHES:
            self._text(400, f"invalid architecture {arch!r}: expected one of {', '.join(ARCHES)}")
            return
        if platform not in PLATFORMS:
            self._text(400, f"unknown platform {platform!r}")
            return
        if ext != "qcow2":
            self._text(400, f"unsupported image kind {ext!r}: this simulator serves only .qcow2 disk images")
            return
        key = _ImageKey(schematic, version, platform, arch)
        sim._cold_wait(key)
        file_path, size, token = sim._ensure_image(key)
        if sim.redirect and self.command == "GET":
            location = f"{self._base_url()}/cdn/{token}/{key.filename}"
            body = f'<a href="{location}">Found</a>.\n\n'.encode()
            self._respond(302, body, content_type="text/html; charset=utf-8", headers={"Location": location})
            return
        self._serve_image(key, file_path, size)

    def _cdn(self, path: str) -> None:
        parts = path.split("/")
        with self.sim._lock:
            obj = self.sim._cdn.get(parts[2]) if len(parts) == 4 else None
        if obj is None or parts[3] != obj.key.filename or self.command not in ("GET", "HEAD"):
            self._text(404, "404 page not found")
            return
        self._serve_image(obj.key, obj.path, obj.size)

    def _serve_image(self, key: _ImageKey, path: Path, size: int) -> None:
        headers = {"Content-Disposition": f'attachment; filename="{key.filename}"'}
        with open(path, "rb") as f:
            self._respond(
                200,
                content_type=QCOW2_CONTENT_TYPE,
                headers=headers,
                file=f,
                size=size,
                on_body_start=lambda: self.sim._count_download(key),
            )


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == wanted for candidate in header.split(","))


def _not_found(doc: str) -> dict[str, str]:
    url = f"{GITHUB_DOCS}/{doc}" if doc else GITHUB_DOCS
    return {"message": "Not Found", "documentation_url": url, "status": "404"}


def _release_json(release: SimulatedRelease, base: str) -> dict[str, Any]:
    rid = _release_id(release.tag)
    tag = release.tag
    parsed = parse_semver(tag)
    published = release.published
    created = format_timestamp(datetime.fromtimestamp(published.timestamp() - 5233, UTC))
    api = f"{base}/repos/{GITHUB_OWNER}/{GITHUB_REPO}"
    html = f"https://github.com/{GITHUB_OWNER}/{GITHUB_REPO}/releases/tag/{tag}"
    return {
        "url": f"{api}/releases/{rid}",
        "assets_url": f"{api}/releases/{rid}/assets",
        "upload_url": f"{UPLOADS}/repos/{GITHUB_OWNER}/{GITHUB_REPO}/releases/{rid}/assets{{?name,label}}",
        "html_url": html,
        "id": rid,
        "author": {"login": "talos-bot", "id": 44077431, "type": "User", "site_admin": False},
        "node_id": "RE_kwDOB8Z" + hashlib.sha256(tag.encode()).hexdigest()[:8],
        "tag_name": tag,
        "target_commitish": f"release-{parsed[0]}.{parsed[1]}" if parsed else "main",
        "name": tag,
        "draft": release.draft,
        "immutable": False,
        "prerelease": release.prerelease,
        "created_at": created,
        "updated_at": release.published_at,
        "published_at": None if release.draft else release.published_at,
        "assets": [],
        "tarball_url": f"{api}/tarball/{tag}",
        "zipball_url": f"{api}/zipball/{tag}",
        "body": f"## [Talos {tag.lstrip('v')}]({html}) (simulated)\n",
    }
