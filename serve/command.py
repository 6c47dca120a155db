"""The `serve` command (`talos-pipeline serve` and `python -m serve`): run the image server.

Settings come from the settings table (`TALOS_STORE`, `TALOS_DISK_MODE`, `TALOS_PUBLIC_URL`,
`TALOS_FACTORY_URL`, `TALOS_VERIFY_READS`, ...), the same for any worker count; flags choose
where to listen, the TLS files, the worker count and the log level. With a certificate the server
speaks TLS 1.3 only; without one it speaks plain HTTP, which the Incus client refuses for
simplestreams remotes (put a TLS-terminating proxy in front, or pass --tls-cert/--tls-key).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys

from talos_pipeline.core.errors import ConfigError, PipelineError
from talos_pipeline.core.settings import Settings

from .app import app_from_settings
from .handlers import check_public_url
from .server import check_tls_files, limits_from, serve_app, serve_workers
from .tls import load_tls_context

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, default=8443, help="port to listen on [8443]")
    parser.add_argument("--tls-cert", help="PEM certificate (chain); enables HTTPS, TLS 1.3 only")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--workers", type=int, default=1, help="worker processes [1]")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log level [info]"
    )
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; `args` has host, port, tls_cert, tls_key, workers (log_level optional).

    Bad input (flags, settings, certificate files) raises `PipelineError` before anything listens."""
    host, port = args.host, args.port
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    workers = getattr(args, "workers", 1) or 1
    log_level = getattr(args, "log_level", None) or "info"
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: use 1 or more")
    check_tls_files(cert, key)
    settings = Settings.from_env()
    check_public_url(settings.public_url)
    if cert and key:
        load_tls_context(cert, key)
    app = app_from_settings(settings)
    if not cert and not _is_loopback(host):
        _say(
            f"warning: serving plain HTTP on {host}:{port}; the Incus client only accepts https:// "
            "simplestreams remotes, so put a TLS proxy in front or pass --tls-cert/--tls-key"
        )
    scheme = "https" if cert else "http"
    shown = f"[{host}]" if ":" in host else host
    _say(
        f"serving {app.state.store.describe()} on {scheme}://{shown}:{port} (disk mode {settings.disk_mode}"
        f"{', TLS 1.3 only' if cert else ''}, {workers} worker{'s' if workers > 1 else ''})"
    )
    try:
        if workers > 1:
            serve_workers(host, port, cert, key, workers=workers, log_level=log_level)
        else:
            serve_app(
                app,
                host,
                port,
                cert,
                key,
                limits=limits_from(settings),
                access_format=settings.serve_access_log,
                tls_check_seconds=settings.serve_tls_check_seconds,
                log_level=log_level,
            )
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m serve", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PipelineError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
