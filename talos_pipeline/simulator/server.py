"""`UpstreamSimulator`: the GitHub releases API and the Talos Image Factory on one loopback port.

This module wires the parts to HTTP and gives tests one object to drive them: `github.py` and
`factory.py` answer requests, `faults.py` and `ratelimit.py` decide what goes wrong. The handler
below only turns requests into `messages.Request` values, applies faults, and writes the
`messages.Response` it gets back. The behaviour reproduced is described in
docs/talos-upstream.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from .builds import BuildQueue, BuildStats
from .factory import VANILLA_SCHEMATIC, ImageFactory, Redirect
from .faults import BODY_FAULTS, DELAY_FAULTS, REDIRECT_FAULTS, STATUS_FAULTS, FaultBoard, InjectedFault
from .github import GITHUB_OWNER, GITHUB_REPO, GitHubAPI, is_github_path
from .images import FixedSize, ImageCache, ImageKey, ImageSizes, RealisticSizes, normalize_version
from .messages import Request, RequestLog, Response, text
from .profiles import PROFILES, ProfileName
from .ratelimit import RateLimiter
from .releases import ReleaseHistory, SimulatedRelease, format_timestamp

__all__ = ["MAX_REQUEST_BODY", "UpstreamSimulator"]

MAX_REQUEST_BODY = 1024 * 1024
DEFAULT_DISK_SIZE = 2 * 1024 * 1024


class _Delegate:
    """A setting of the facade that lives on one of its parts (``sim.stall_seconds = 0.5`` keeps working)."""

    def __init__(self, part: str, name: str) -> None:
        self.part, self.name = part, name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class UpstreamSimulator:
    """GitHub releases API + Talos Image Factory on one loopback port. Use as a context manager.

    ``profile`` is ``"default"`` (small, fast, the demo's) or ``"production"`` (realistic; see
    `profiles.py`). With the default profile every image holds ``disk_size`` bytes of content (the
    qcow2 file is a little larger); the production profile sizes images per arch like the factory,
    times ``scale``. ``releases``, ``redirect``, ``first_byte_delay`` (the cold-build time),
    ``build_slots`` and ``download_tick_seconds`` override the profile's. Images are generated on
    first request into ``cache_dir`` (a temporary directory removed by `stop` when not given; a given
    directory is reused across runs, though every run starts with all images cold).
    """

    #: seconds the ``slow_first_byte`` fault waits before answering
    slow_first_byte_seconds = _Delegate("_faults", "slow_first_byte_seconds")
    #: seconds the ``stall`` fault pauses in the middle of a body
    stall_seconds = _Delegate("_faults", "stall_seconds")
    #: hops of the ``redirect_chain`` fault before the real answer
    redirect_hops = _Delegate("_faults", "redirect_hops")
    #: ``retry-after`` sent with the ``429`` fault
    fault_retry_after = _Delegate("_faults", "retry_after")
    #: seconds until ``x-ratelimit-reset`` for the ``403``/``429`` faults
    fault_reset_in = _Delegate("_faults", "reset_in")
    #: GitHub's rate-limit window
    rate_limit_window = _Delegate("_limiter", "window")
    rate_limit_unauthenticated = _Delegate("_limiter", "unauthenticated")
    rate_limit_authenticated = _Delegate("_limiter", "authenticated")
    per_page_default = _Delegate("_github", "per_page_default")
    #: seconds a cold build takes (the first request for an image waits this long, or longer if queued)
    first_byte_delay = _Delegate("_builds", "seconds")
    #: cold builds at once (None: no limit); the others queue
    build_slots = _Delegate("_builds", "slots")
    #: the release assets' download counts grow by one tick per this many seconds (0: only by `tick_downloads`)
    download_tick_seconds = _Delegate("_github", "download_tick_seconds")

    def __init__(
        self,
        releases: Iterable[SimulatedRelease] | None = None,
        *,
        profile: str = ProfileName.DEFAULT,
        scale: float | None = None,
        disk_size: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect: bool | str | None = None,
        first_byte_delay: float | None = None,
        build_slots: int | None = None,
        download_tick_seconds: float | None = None,
        per_page_default: int = 30,
        verbose: bool = False,
        rate_limit_unauthenticated: int = 60,
        rate_limit_authenticated: int = 5000,
        stall_seconds: float = 2.0,
        slow_first_byte_seconds: float = 2.0,
    ) -> None:
        if host == "localhost":
            host = "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the upstream simulator listens on loopback only; host {host!r} is not 127.0.0.1 or ::1")
        try:
            chosen = PROFILES[ProfileName(profile)]
        except ValueError:
            known = ", ".join(PROFILES)
            raise ValueError(f"unknown simulator profile {profile!r}; known: {known}") from None
        if first_byte_delay is not None and not (isinstance(first_byte_delay, (int, float)) and first_byte_delay >= 0):
            raise ValueError(f"first_byte_delay must be a number of seconds >= 0, got {first_byte_delay!r}")
        if build_slots is not None and (not isinstance(build_slots, int) or build_slots < 1):
            raise ValueError(f"build_slots must be a positive integer, got {build_slots!r}")
        self.host = host
        self.port = port
        self.profile = chosen.name
        self.disk_size, self.scale, sizes = _sizes(chosen.name, disk_size, scale)
        self.verbose = verbose
        self._stopping = threading.Event()
        self._history = ReleaseHistory(chosen.releases if releases is None else releases)
        self._limiter = RateLimiter(unauthenticated=rate_limit_unauthenticated, authenticated=rate_limit_authenticated)
        self._github = GitHubAPI(
            self._history,
            self._limiter,
            per_page_default=per_page_default,
            download_tick_seconds=chosen.download_tick_seconds
            if download_tick_seconds is None
            else download_tick_seconds,
        )
        self._images = ImageCache(cache_dir, chosen.recipe)
        self._builds = BuildQueue(
            seconds=chosen.build_seconds if first_byte_delay is None else first_byte_delay,
            slots=chosen.build_slots if build_slots is None else build_slots,
            stopping=self._stopping,
        )
        self._factory = ImageFactory(
            self._history,
            self._images,
            sizes,
            self._builds,
            redirect=chosen.redirect if redirect is None else _redirect(redirect),
        )
        self._faults = FaultBoard(stall_seconds=stall_seconds, slow_first_byte_seconds=slow_first_byte_seconds)
        self._log = RequestLog()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> UpstreamSimulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        parts = _Parts(self._github, self._factory, self._faults, self._limiter, self._log, self._stopping, self)
        self._server = _Server((self.host, self.port), parts, family)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="upstream-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self._stopping.set()  # wakes handlers paused by faults or cold builds
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._thread = None
        self._images.close()

    def __enter__(self) -> UpstreamSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def redirect(self) -> Redirect:
        """Which image GETs answer 302 to ``/cdn/...``; assign a bool or a `Redirect`."""
        return self._factory.redirect

    @redirect.setter
    def redirect(self, value: bool | str) -> None:
        self._factory.redirect = _redirect(value)

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
        return self._images.cache_dir

    def image_url(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> str:
        return f"{self.factory_url}/image/{schematic}/{normalize_version(version)}/{platform}-{arch}.qcow2"

    # ------------------------------------------------------------------ releases
    @property
    def releases(self) -> list[SimulatedRelease]:
        """All releases (drafts included), newest first as GitHub orders them."""
        return self._history.newest_first()

    def versions(self) -> list[str]:
        """What the factory's ``GET /versions`` currently answers."""
        return self._history.factory_versions()

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
            published_at=published_at or format_timestamp(datetime.now(UTC)),
            prerelease=("-" in tag) if prerelease is None else prerelease,
            draft=draft,
        )
        self._history.put(release)
        return release

    def tick_downloads(self, count: int = 1) -> None:
        """The release assets are downloaded a few more times: the listing's ETag changes, the releases do not."""
        self._github.tick_downloads(count)

    # ------------------------------------------------------------------ images
    def downloads(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> int:
        """GET bodies started for that image (factory or CDN; HEAD and 302s not counted)."""
        return self._factory.downloads(_key(version, arch, platform, schematic))

    def total_downloads(self) -> int:
        return self._factory.total_downloads()

    def downloads_by_image(self) -> dict[ImageKey, int]:
        """GET bodies started per image, for images downloaded at least once."""
        return self._factory.downloads_by_image()

    def build_stats(self) -> BuildStats:
        """Cold builds so far: started, most at once, how many queued for a slot."""
        return self._builds.stats()

    def drift(self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC) -> int:
        """Later requests for that image get different bytes (a factory rebuild); returns the generation."""
        return self._images.drift(_key(version, arch, platform, schematic))

    def image_path(
        self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC
    ) -> Path:
        """The file the factory currently serves for that image (generated if needed)."""
        return self._factory.image_file(_key(version, arch, platform, schematic)).path

    def image_sha256(
        self, version: str, arch: str, platform: str = "nocloud", schematic: str = VANILLA_SCHEMATIC
    ) -> str:
        """sha256 of the bytes the factory currently serves for that image."""
        digest = hashlib.sha256()
        with open(self.image_path(version, arch, platform, schematic), "rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                digest.update(chunk)
        return digest.hexdigest()

    # ------------------------------------------------------------------ faults
    def set_fault(
        self, path_prefix: str, fault: str, count: int | None = None, *, seconds: float | None = None
    ) -> InjectedFault:
        """Inject ``fault`` into requests whose path starts with ``path_prefix`` (kinds: `faults.py`).

        ``count=None``: every matching request until `clear_faults`; else the next ``count``.
        ``seconds`` sets this fault's pause (``stall``, ``slow_first_byte``); by default
        `stall_seconds` / `slow_first_byte_seconds`. The returned handle counts how often the
        fault was applied, and ``handle.wait(timeout)`` blocks until it first was.
        """
        return self._faults.inject(path_prefix, fault, count, seconds=seconds)

    def clear_faults(self) -> None:
        self._faults.clear()

    # ------------------------------------------------------------------ GitHub rate limit
    def rate_limit(self, remaining: int | None, *, reset_in: float = 60.0) -> None:
        """After ``remaining`` more GitHub API requests, answer 403 until ``reset_in`` seconds pass.

        ``None`` lifts the override (the normal 60/5000 per hour budgets still apply).
        """
        self._limiter.force(remaining, reset_in=reset_in)

    def rate_limit_status(self, token: str | None = None) -> dict[str, int]:
        """The budget GitHub would report for anonymous callers (or ``token``), without spending it."""
        return self._limiter.status(token)

    # ------------------------------------------------------------------ observation
    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path with query, status)`` of recent requests, oldest first."""
        return self._log.recent()

    def github_requests(self, path: str | None = None) -> int:
        """Requests the GitHub API answered (304s and refusals included), all or for one path (no query)."""
        counts = self.github_requests_by_path()
        return counts.get(path, 0) if path is not None else sum(counts.values())

    def github_requests_by_path(self) -> dict[str, int]:
        return {path: n for path, n in self._log.per_path().items() if is_github_path(path)}

    def reset_counters(self) -> None:
        """Zero request, download and build counters (built images stay built, budgets stay spent)."""
        self._log.reset()
        self._factory.reset_downloads()
        self._builds.reset_stats()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        size = f"disk_size={self.disk_size}" if self.scale is None else f"scale={self.scale}"
        return f"<UpstreamSimulator {self.profile} {where} releases={len(self._history)} {size}>"


def _key(version: str, arch: str, platform: str, schematic: str) -> ImageKey:
    return ImageKey(schematic, normalize_version(version), platform, arch)


def _sizes(
    profile: ProfileName, disk_size: int | None, scale: float | None
) -> tuple[int | None, float | None, ImageSizes]:
    """``(disk_size, scale, sizes)``: the default profile has one size, the production one a scale."""
    if profile is ProfileName.PRODUCTION:
        if disk_size is not None:
            raise ValueError(
                "disk_size applies to the default profile; the production profile sizes images per arch: use scale"
            )
        scale = 1.0 if scale is None else scale
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number (0.01: about 2 MiB per amd64 image), got {scale!r}")
        return None, float(scale), RealisticSizes(float(scale))
    if scale is not None:
        raise ValueError("scale applies to the production profile; the default profile's images hold disk_size bytes")
    disk_size = DEFAULT_DISK_SIZE if disk_size is None else disk_size
    if not isinstance(disk_size, int) or disk_size <= 0:
        raise ValueError(f"disk_size must be a positive number of bytes, got {disk_size!r}")
    return disk_size, None, FixedSize(disk_size)


def _redirect(value: bool | str) -> Redirect:
    if isinstance(value, bool):
        return Redirect.ALWAYS if value else Redirect.NEVER
    try:
        return Redirect(value)
    except ValueError:
        raise ValueError(f"redirect must be true, false or one of {', '.join(Redirect)}; got {value!r}") from None


# ====================================================================== HTTP wiring
@dataclass(frozen=True)
class _Parts:
    """What the request handler may use: the parts' public methods, nothing of the facade's state."""

    github: GitHubAPI
    factory: ImageFactory
    faults: FaultBoard
    limiter: RateLimiter
    log: RequestLog
    stopping: threading.Event
    settings: UpstreamSimulator  # read-only here: `verbose`, `url`


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], parts: _Parts, family: int) -> None:
        self.address_family = family
        self.parts = parts
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
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

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if self.parts.settings.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "talos-upstream-simulator/1"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.parts.settings.verbose:
            super().log_message(format, *args)

    # ---------------------------------------------------------------- routing
    def _dispatch(self) -> None:
        parts = self.server.parts
        split = urlsplit(self.path)
        path = split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        body = b""
        if self.command in ("POST", "PUT", "PATCH"):
            read = self._read_body()
            if isinstance(read, Response):
                self._send(read, path)
                return
            body = read
        delay = parts.faults.take(path, DELAY_FAULTS)
        if delay is not None:
            parts.stopping.wait(parts.faults.seconds(delay))
        fault = parts.faults.take(path, STATUS_FAULTS)
        if fault is not None:
            answer = parts.faults.status_answer(
                fault, client_host=self.client_address[0], limit=parts.limiter.unauthenticated
            )
            self._send(answer, path)
            return
        hop = dict(query).get("hop", "")
        hops = int(hop) if hop.isdigit() else 0
        if (
            self.command == "GET"
            and (hops or parts.faults.take(path, REDIRECT_FAULTS))
            and hops < parts.faults.redirect_hops
        ):
            location = f"{self._base_url()}{path}?hop={hops + 1}"
            self._send(Response(302, content_type=None, headers={"Location": location}), path)
            return
        request = Request(self.command, path, query, self.headers, body, self.client_address[0], self._base_url())
        handler = parts.github if is_github_path(path) else parts.factory
        self._send(handler.handle(request), path)

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.server.parts.settings.url

    def _read_body(self) -> bytes | Response:
        """The request body (Content-Length or chunked), or the answer refusing it."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
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
                    return text(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return text(400, "invalid Content-Length")
        if length > MAX_REQUEST_BODY:
            self.close_connection = True
            return text(413, "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    # ---------------------------------------------------------------- writing
    def _send(self, response: Response, path: str) -> None:
        parts = self.server.parts
        head = self.command == "HEAD"
        status, length = response.status, response.length
        body_fault = None
        if status == 200 and not head and length:
            body_fault = parts.faults.take(path, BODY_FAULTS)
        file = open(response.file, "rb") if response.file is not None and not head else None  # noqa: SIM115
        try:
            parts.log.record(self.command, self.path, status)
            self.send_response(status)
            if response.content_type and status != 304:
                self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if status != 304:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            if head or status == 304 or not length:
                return
            if response.on_body_start is not None:
                response.on_body_start()
            self._send_body(response.body, file, body_fault, length)
        finally:
            if file is not None:
                file.close()

    def _send_body(self, body: bytes, file: BinaryIO | None, fault: InjectedFault | None, length: int) -> None:
        kind = fault.kind if fault is not None else None
        if kind == "truncate":
            self._send_range(body, file, 0, length // 2)
            self.close_connection = True
        elif kind == "reset":
            self._send_range(body, file, 0, length // 4)
            self._reset_connection()
        elif kind == "overlong":
            self._send_range(body, file, 0, length)
            self.wfile.write(b"\0JUNK AFTER CONTENT-LENGTH\0" * 64)
            self.close_connection = True
        elif kind == "stall" and fault is not None:
            self._send_range(body, file, 0, length // 2)
            parts = self.server.parts
            if parts.stopping.wait(parts.faults.seconds(fault)):
                self.close_connection = True
                return
            self._send_range(body, file, length // 2, length)
        else:
            self._send_range(body, file, 0, length)

    def _send_range(self, body: bytes, file: BinaryIO | None, start: int, end: int) -> None:
        if end <= start:
            return
        if file is None:
            self.wfile.write(body[start:end])
        else:
            self.connection.sendfile(file, start, end - start)

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
