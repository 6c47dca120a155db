"""`talos-pipeline keygen`: an ECDSA P-256 key pair for `TALOS_SIGNING=key`."""

from __future__ import annotations

import argparse
from pathlib import Path

from talos_pipeline.core.errors import InputError
from talos_pipeline.core.signing import generate_key_pair

from .base import EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keygen", help="write an ECDSA P-256 key pair for TALOS_SIGNING=key")
    parser.add_argument("--output", default="talos-signing", help="file name stem [talos-signing] → .key/.pub")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    private, public = Path(args.output + ".key"), Path(args.output + ".pub")
    for path in (private, public):
        if path.exists() and not args.force:
            raise InputError(f"{path} exists; pass --force to overwrite it")
    generate_key_pair(private, public)
    say(f"wrote {private} (keep secret; TALOS_SIGNING_KEY) and {public} (give to users: cosign verify-blob --key)")
    return EXIT_OK
