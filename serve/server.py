"""Running the app under uvicorn: production options, logging, a blocking server and a test thread.

uvicorn options set here (and why):

| option | value | why |
|---|---|---|
| `http` | `BoundedHttpTools` | uvicorn's httptools parser (about twice h11's requests/s), with the request-head |
|  |  | cap it lacks: a head over 16 KiB is answered `400` and the connection closed, however it arrives |
| `limit_concurrency` | 1024 | beyond that many connections/tasks new requests get `503` instead of piling up |
| `timeout_keep_alive` | 5 s | idle keep-alive connections are closed |
| `timeout_graceful_shutdown` | 20 s | on SIGTERM, downloads in flight get this long; idle TLS connections |
|  |  | whose client never answers the close_notify would otherwise hold the shutdown up |
| `backlog` | 2048 | uvicorn's default, explicit |
| `server_header` | off | no version banner |
| `access_log` | off | `serve.access` already logs each request once (with bytes and duration) |
| `ssl_context_factory` | `tls13_context_factory` | TLS 1.3 only when a certificate is given |
| `proxy_headers` | uvicorn default | `X-Forwarded-Proto/For` trusted only from `FORWARDED_ALLOW_IPS` (127.0.0.1) |

llhttp (under httptools) rejects malformed request lines, methods that are not tokens, and control
characters in the target (400). Methods other than GET and HEAD are refused by the app (405 + `Allow`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.stores import Store

from .app import create_app
from .bodies import StreamAborted
from .guard import MAX_REQUEST_HEAD
from .tls import tls13_context_factory

LIMIT_CONCURRENCY = 1024
KEEP_ALIVE_SECONDS = 5
GRACEFUL_SHUTDOWN_SECONDS = 20


class DropDeliberateAborts(logging.Filter):
    """uvicorn logs a traceback for every exception out of an app, including the `StreamAborted`
    we raise on purpose to cut a response off (after logging the reason ourselves): drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return not isinstance(exc, StreamAborted)


def install_abort_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropDeliberateAborts) for f in logger.filters):
        logger.addFilter(DropDeliberateAborts())


def logging_config(level: str = "info") -> dict[str, Any]:
    """Plain one-line logs on stderr: `serve` (incl. `serve.access`) and uvicorn's own messages."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"drop_aborts": {"()": "serve.server.DropDeliberateAborts"}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level, "filters": ["drop_aborts"]},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "serve": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }


def check_tls_files(cert: str | None, key: str | None) -> None:
    if bool(cert) != bool(key):
        raise ConfigError("give both --tls-cert and --tls-key (or neither, for plain HTTP)")


class RequestHeadTooLarge(Exception):
    """Raised inside the parser's callbacks; uvicorn answers 400 and closes the connection."""


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on the request head, counted as it is parsed."""

    _head_size = 0

    def on_message_begin(self) -> None:
        self._head_size = 0
        super().on_message_begin()

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_REQUEST_HEAD:
            raise RequestHeadTooLarge(f"request head over {MAX_REQUEST_HEAD} bytes")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)


def uvicorn_options(
    host: str,
    port: int,
    cert: str | None = None,
    key: str | None = None,
    *,
    log_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` / `uvicorn.run` (see the table above)."""
    check_tls_files(cert, key)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": BoundedHttpTools,
        "limit_concurrency": LIMIT_CONCURRENCY,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "backlog": 2048,
        "server_header": False,
        "access_log": False,
        "lifespan": "on",
        "log_config": log_config,
    }
    if cert:
        options.update(ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_context_factory=tls13_context_factory)
    options.update(overrides)
    return options


def serve_app(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8443,
    cert: str | None = None,
    key: str | None = None,
    *,
    log_level: str = "info",
    uvicorn_overrides: dict[str, Any] | None = None,
) -> None:
    """Serve `app` in the foreground until SIGINT/SIGTERM."""
    options = uvicorn_options(host, port, cert, key, log_config=logging_config(log_level), **(uvicorn_overrides or {}))
    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run()
    if not server.started:
        raise ConfigError(f"the server could not start on {host}:{port} (see the log above)")


def serve_workers(host: str, port: int, cert: str | None, key: str | None, *, workers: int, log_level: str) -> None:
    """`workers` processes, each building the app from the settings table (`app_from_settings`)."""
    options = uvicorn_options(host, port, cert, key, log_config=logging_config(log_level))
    uvicorn.run("serve.app:app_from_settings", factory=True, workers=workers, **options)


def serve_forever(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 8443,
    cert: str | None = None,
    key: str | None = None,
    *,
    log_level: str = "info",
    uvicorn_overrides: dict[str, Any] | None = None,
    **app_kwargs: Any,
) -> None:
    """Serve `store` in the foreground until SIGINT/SIGTERM (`app_kwargs` go to `create_app`)."""
    serve_app(
        create_app(store, **app_kwargs), host, port, cert, key, log_level=log_level, uvicorn_overrides=uvicorn_overrides
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_in_thread(
    app,
    host: str = "127.0.0.1",
    port: int = 0,
    cert: str | None = None,
    key: str | None = None,
    *,
    timeout: float = 10.0,
    grace: float = 0.5,
    **overrides: Any,
) -> tuple[str, Callable[[], None]]:
    """Run `app` on a background thread; return its base URL and a function that stops it.

    `port=0` picks a free port. `stop()` gives requests in flight `grace` seconds, then closes
    every connection. Logging is left to the caller (pytest's caplog sees `serve.*`).
    """
    install_abort_filter()
    options = uvicorn_options(host, port, cert, key, log_config=None, **overrides)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"serve-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError(f"the server did not start on {host}:{bound_port}")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=grace)
        if thread.is_alive():
            # Idle keep-alive connections (a client still holding its socket) would otherwise keep
            # a TLS server waiting for close_notify answers until the graceful timeout.
            server.force_exit = True
            thread.join(timeout=10)
        sock.close()

    scheme = "https" if cert else "http"
    return f"{scheme}://{_url_host(host)}:{bound_port}", stop
