"""The server runner: listening sockets, TLS, signals, worker processes, logging, a test thread.

`serve/` runs on its own small HTTP/1.1 server (`connection.py`) over asyncio (uvloop when it is
installed) and llhttp (`httptools`), chosen by measurement against uvicorn, granian and hypercorn
on the same app (docs/serve.md, "The server underneath"): it is the one that keeps answering with
1,100 idle connections open, closes them on time, sheds idle connections instead of refusing new
clients, logs the bytes clients actually received, and renews certificates without a restart.

| what | how |
|---|---|
| workers | `--workers N > 1`: a supervisor binds the socket and starts N spawned worker processes |
|  | sharing it; each builds the app from the settings table; a worker that dies is restarted |
| metrics across workers | `PROMETHEUS_MULTIPROC_DIR` (a private temporary directory) set before they start |
| TLS | `CertificateFiles`: TLS 1.3 only; re-read on SIGHUP and when the files change |
| shutdown | SIGTERM/SIGINT: stop accepting, close idle connections, give responses in flight |
|  | `graceful_seconds`, then close the rest |
| file descriptors | the soft limit is raised to the hard limit at start |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.config
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import multiprocess

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.settings import Settings

from .app import app_from_settings, create_app
from .connection import Connection, FastAnswer, Limits, Shared
from .guard import AccessLog
from .metrics import Metrics
from .tls import CertificateFiles

try:  # uvloop is an optional speed-up (about 1.5× the requests/s of asyncio's own loop)
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps other platforms working
    uvloop = None

log = logging.getLogger("serve")

BACKLOG = 2048
ACCESS_LOG_FLUSH_SECONDS = 0.25
WORKER_RESTART_SECONDS = 1.0


def check_tls_files(cert: str | None, key: str | None) -> None:
    if bool(cert) != bool(key):
        raise ConfigError("give both --tls-cert and --tls-key (or neither, for plain HTTP)")


def limits_from(settings: Settings) -> Limits:
    return Limits(
        head_timeout=settings.serve_head_timeout,
        idle_timeout=settings.serve_idle_timeout,
        send_timeout=settings.serve_send_timeout,
        max_connections=settings.serve_max_connections,
        max_connections_per_client=settings.serve_max_connections_per_client,
    )


def logging_config(level: str = "info", access_format: str = "plain") -> dict[str, Any]:
    """One-line logs on stderr; the access log as JSON lines when `access_format` is json."""
    level = level.upper()
    access_formatter = "message" if access_format == "json" else "plain"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "message": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": access_formatter, "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "serve": {"handlers": ["stderr"], "level": level, "propagate": False},
            "serve.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }


def raise_fd_limit() -> int:
    """Every connection is a file descriptor: use as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


class _PlainSite:
    """The site of an ASGI app that is not `serve/`'s own: no fast path, one route label."""

    def __init__(self) -> None:
        self.metrics = Metrics()

    def fast_answer(
        self,
        method: bytes,
        target: bytes,
        version: str,
        hosts: list[bytes],
        if_none_match: bytes | None,
        accept_encoding: bytes | None,
    ) -> tuple[str, FastAnswer] | None:
        return None

    def route(self, path: str) -> str:
        return "app"


class _Lifespan:
    """The ASGI lifespan protocol: startup before the first connection, shutdown after the last."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.4"}, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self.outbox.put)
        except Exception as exc:
            await self.outbox.put({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            raise ConfigError(f"the application did not start: {answer.get('message', answer['type'])}")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.outbox.get(), 10)


class HttpServer:
    """`app` served on one listening socket by the current event loop."""

    def __init__(
        self,
        app: Any,
        *,
        limits: Limits | None = None,
        access: AccessLog | None = None,
        certificates: CertificateFiles | None = None,
        tls_check_seconds: float = 10.0,
    ) -> None:
        self.app = app
        self.limits = limits or Limits()
        self.certificates = certificates
        self.tls_check_seconds = tls_check_seconds
        site = getattr(getattr(app, "state", None), "site", None) or _PlainSite()
        self.shared = Shared(app, site, self.limits, access or AccessLog(), tls=certificates is not None)
        self.lifespan = _Lifespan(app, self.shared.lifespan_state)
        self.server: asyncio.AbstractServer | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.flusher: asyncio.Task[None] | None = None
        self.started = asyncio.Event()

    async def start(self, sock: socket.socket) -> None:
        await self.lifespan.startup()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.shared),
            sock=sock,
            backlog=BACKLOG,
            ssl=self.certificates.front if self.certificates else None,
            ssl_handshake_timeout=self.limits.head_timeout if self.certificates else None,
        )
        if self.certificates is not None:
            self.watcher = loop.create_task(self._watch_certificates())
        self.flusher = loop.create_task(self._flush_access_log())
        self.started.set()

    async def _flush_access_log(self) -> None:
        """Four times a second: write the buffered access log, fire connection deadlines."""
        while True:
            await asyncio.sleep(ACCESS_LOG_FLUSH_SECONDS)
            self.shared.access.flush()
            self.shared.metrics.flush()
            self.shared.tracker.sweep()

    async def _watch_certificates(self) -> None:
        assert self.certificates is not None
        while True:
            await asyncio.sleep(self.tls_check_seconds)
            self.certificates.reload_if_changed()

    def reload_certificates(self) -> None:
        if self.certificates is not None:
            self.certificates.reload("SIGHUP")

    async def stop(self) -> None:
        """Stop accepting; let responses in flight finish (up to `graceful_seconds`); close the rest."""
        self.shared.stopping = True
        for task in (self.watcher, self.flusher):
            if task is not None:
                task.cancel()
        if self.server is not None:
            self.server.close()
        tracker = self.shared.tracker
        for conn in list(tracker.sheddable):
            conn.abort()
        deadline = time.monotonic() + self.limits.graceful_seconds
        while tracker.open and time.monotonic() < deadline:
            for conn in list(tracker.sheddable):
                conn.abort()
            await asyncio.sleep(0.05)
        for conn in list(tracker.open):
            conn.abort()
        self.shared.access.flush()
        await self.lifespan.shutdown()


async def _serve(server: HttpServer, sock: socket.socket, stop: asyncio.Event, *, signals: bool) -> None:
    loop = asyncio.get_running_loop()
    if signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    await server.start(sock)
    await stop.wait()
    await server.stop()


def run_server(server: HttpServer, sock: socket.socket) -> None:
    """Serve on `sock` in this process until SIGINT/SIGTERM (SIGHUP re-reads the certificate)."""
    raise_fd_limit()
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(server, sock, asyncio.Event(), signals=True))
    finally:
        loop.close()


def serve_app(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8443,
    cert: str | None = None,
    key: str | None = None,
    *,
    limits: Limits | None = None,
    access_format: str = "plain",
    tls_check_seconds: float = 10.0,
    log_level: str = "info",
    configure_logging: bool = True,
) -> None:
    """Serve `app` in the foreground until SIGINT/SIGTERM."""
    check_tls_files(cert, key)
    certificates = CertificateFiles(cert, key) if cert and key else None
    if configure_logging:
        logging.config.dictConfig(logging_config(log_level, access_format))
    sock = bind(host, port)
    log.info("listening on %s://%s:%d", "https" if certificates else "http", _url_host(host), sock.getsockname()[1])
    server = HttpServer(
        app,
        limits=limits,
        access=AccessLog(access_format, sys.stderr.buffer),
        certificates=certificates,
        tls_check_seconds=tls_check_seconds,
    )
    try:
        run_server(server, sock)
    finally:
        sock.close()


# --------------------------------------------------------------------------- worker processes
def _worker(sock: socket.socket, cert: str | None, key: str | None, log_level: str) -> None:
    """One worker process: the app from the settings table, on the shared socket."""
    settings = Settings.from_env()
    logging.config.dictConfig(logging_config(log_level, settings.serve_access_log))
    server = HttpServer(
        app_from_settings(settings),
        limits=limits_from(settings),
        access=AccessLog(settings.serve_access_log, sys.stderr.buffer),
        certificates=CertificateFiles(cert, key) if cert and key else None,
        tls_check_seconds=settings.serve_tls_check_seconds,
    )
    run_server(server, sock)


def serve_workers(
    host: str, port: int, cert: str | None, key: str | None, *, workers: int, log_level: str = "info"
) -> None:
    """`workers` processes sharing one socket, supervised: SIGHUP is passed on, a dead worker restarted."""
    check_tls_files(cert, key)
    if cert and key:
        CertificateFiles(cert, key)  # fail before any worker starts, with the file and the reason
    logging.config.dictConfig(logging_config(log_level))
    sock = bind(host, port)
    log.info("listening on %s://%s:%d", "https" if cert else "http", _url_host(host), sock.getsockname()[1])
    metrics_dir = tempfile.mkdtemp(prefix="talos-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    spawn = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start_worker() -> multiprocessing.process.BaseProcess:
        process = spawn.Process(target=_worker, args=(sock, cert, key, log_level), name="serve-worker")
        process.start()
        return process

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            stopping.set()
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    processes = [start_worker() for _ in range(workers)]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        while not stopping.is_set():
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping.is_set():
                    log.error("worker %s exited with %s; starting a new one", process.pid, process.exitcode)
                    _mark_dead(process.pid)
                    time.sleep(WORKER_RESTART_SECONDS)
                    processes[index] = start_worker()
            stopping.wait(0.5)
        for process in processes:
            process.join(timeout=Limits().graceful_seconds + 5)
            if process.is_alive():
                process.kill()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(pid: int | None) -> None:
    if pid is not None:
        multiprocess.mark_process_dead(pid)


# --------------------------------------------------------------------------- tests and the demo
def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    cert: str | None = None,
    key: str | None = None,
    *,
    timeout: float = 10.0,
    grace: float = 0.5,
    limits: Limits | None = None,
    access_format: str = "plain",
    tls_check_seconds: float = 10.0,
) -> tuple[str, Callable[[], None]]:
    """Run `app` on a background thread; return its base URL and a function that stops it.

    `port=0` picks a free port. `stop()` gives requests in flight `grace` seconds, then closes
    every connection. Logging is left to the caller (pytest's caplog sees `serve.*`).
    """
    check_tls_files(cert, key)
    certificates = CertificateFiles(cert, key) if cert and key else None
    limits = limits or Limits()
    limits = Limits(**{**limits.__dict__, "graceful_seconds": grace})
    server = HttpServer(
        app,
        limits=limits,
        access=AccessLog(access_format),
        certificates=certificates,
        tls_check_seconds=tls_check_seconds,
    )
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    loop = new_event_loop()
    stop_event: asyncio.Event | None = None
    failure: list[BaseException] = []

    def run() -> None:
        nonlocal stop_event
        asyncio.set_event_loop(loop)
        stop_event = asyncio.Event()
        try:
            loop.run_until_complete(_serve(server, sock, stop_event, signals=False))
        except BaseException as exc:
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"serve-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started.is_set():
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the server did not start on {host}:{bound_port}: {failure[0] if failure else ''}")
        time.sleep(0.01)

    def stop() -> None:
        if thread.is_alive() and stop_event is not None:
            loop.call_soon_threadsafe(stop_event.set)
            thread.join(timeout=grace + 10)
        sock.close()

    scheme = "https" if cert else "http"
    return f"{scheme}://{_url_host(host)}:{bound_port}", stop


def serve_forever(
    store: Any,
    host: str = "127.0.0.1",
    port: int = 8443,
    cert: str | None = None,
    key: str | None = None,
    *,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serve `store` in the foreground until SIGINT/SIGTERM (`app_kwargs` go to `create_app`)."""
    serve_app(create_app(store, **app_kwargs), host, port, cert, key, log_level=log_level)
