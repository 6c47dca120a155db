"""``talos-pipeline simulate-upstream`` and ``python -m talos_pipeline.simulator``.

Runs the upstream simulator alone, on loopback, until Ctrl-C. The CLI adds `add_arguments` to its
subcommand's parser and calls `run`.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import sys
import threading

from .profiles import ProfileName
from .releases import load_releases
from .server import UpstreamSimulator

__all__ = ["add_arguments", "main", "parse_size", "run"]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "KB": 1000, "M": 1024**2, "MIB": 1024**2, "MB": 1000**2,
          "G": 1024**3, "GIB": 1024**3, "GB": 1000**3, "T": 1024**4, "TIB": 1024**4, "TB": 1000**4}  # fmt: skip
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_size(text: str) -> int:
    """``2MiB``, ``512MiB``, ``1G`` (binary), ``500MB`` (decimal), ``4096`` (bytes)."""
    m = _SIZE_RE.match(text)
    unit = (m.group(2) or "").upper() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use a number of bytes or e.g. 2MiB, 512MiB, 1GiB")
    size = int(m.group(1)) * _UNITS[unit]
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be more than 0 bytes")
    return size


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("--port", type=int, default=8089, help="TCP port (0 picks a free one) [8089]")
    add("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS, help="loopback address [127.0.0.1]")
    add(
        "--profile",
        choices=[p.value for p in ProfileName],
        default=ProfileName.DEFAULT.value,
        help="default: a few releases, small images, instant builds; production: the release history since "
        "v1.10, factory-size images, cold builds, CDN redirects [default]",
    )
    add("--releases", metavar="FILE", help="JSON list of releases (tag, published_at, prerelease, draft)")
    add(
        "--disk-size",
        type=parse_size,
        metavar="SIZE",
        help="default profile: random data per qcow2 image, e.g. 2MiB, 512MiB [2MiB]",
    )
    add(
        "--scale",
        type=_positive_float,
        metavar="FACTOR",
        help="production profile: image sizes times FACTOR, e.g. 0.01 for ~2 MiB amd64 images [1]",
    )
    add("--cache-dir", metavar="DIR", help="keep generated images here across runs [a temp dir]")
    add(
        "--redirect",
        action="store_const",
        const="always",
        help="answer every image GET with 302 to /cdn/... [production: built images only]",
    )
    add(
        "--first-byte-delay",
        type=_non_negative_float,
        metavar="SECONDS",
        help="cold-build time: the first request for each image waits this long [default profile: 0; production: 3]",
    )
    add(
        "--build-slots",
        type=_positive_int,
        metavar="N",
        help="cold builds at once, the rest queue [default profile: no limit; production: 6]",
    )
    add("--verbose", action="store_true", help="log every request to stderr")
    return parser


def run(args: argparse.Namespace, *, stop: threading.Event | None = None) -> int:
    """Serve until Ctrl-C/SIGTERM (or until ``stop`` is set, for tests); return the exit code."""
    try:
        releases = load_releases(args.releases) if args.releases else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sim = UpstreamSimulator(
            releases,
            profile=args.profile,
            scale=args.scale,
            disk_size=args.disk_size,
            cache_dir=args.cache_dir,
            host=args.host,
            port=args.port,
            redirect=args.redirect,
            first_byte_delay=args.first_byte_delay,
            build_slots=args.build_slots,
            verbose=args.verbose,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sim.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
              "pick another --port (0 = any free port)", file=sys.stderr)  # fmt: skip
        return 1
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"GitHub releases API: {sim.releases_url}")
        print(f"Image Factory:       {sim.factory_url}")
        print(f"  TALOS_RELEASES_URL={sim.releases_url} TALOS_FACTORY_URL={sim.factory_url}")
        print(f"  profile: {sim.profile}")
        print(f"  releases: {', '.join(r.tag + (' (draft)' if r.draft else '') for r in sim.releases)}")
        print(f"  factory versions: {', '.join(sim.versions())}")
        print("Serving until Ctrl-C.", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m talos_pipeline.simulator",
        description="Run the offline upstream simulator (GitHub releases API + Talos Image Factory) on loopback.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
