"""`talos-pipeline serve`: the same command as `python -m serve` (options in `serve/command.py`)."""

from __future__ import annotations

import argparse

from serve.command import add_arguments, run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the store to Incus (simplestreams + direct URL import)",
        description=(
            "Serve TALOS_STORE over HTTP(S) with serve/'s own HTTP/1.1 server (uvloop + httptools); "
            "with --tls-cert/--tls-key TLS 1.3 only. Every TALOS_SERVE_* setting applies."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
