"""`talos-pipeline publish VERSION... [--arch A]... [--variant V]... [--new]`."""

from __future__ import annotations

import argparse

from talos_pipeline.core.errors import InputError
from talos_pipeline.core.settings import Settings
from talos_pipeline.launch import publish

from .base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish Talos versions (all configured arches and variants)",
        description="Materialize the per-image assets of each version × arch, up to TALOS_PUBLISH_JOBS at once, "
        "with the Definitions of the code location (on $DAGSTER_HOME's instance when set); the catalog is "
        "rebuilt as versions complete. SIGINT or SIGTERM stops it: running partitions finish (or, after 60 s "
        "or a second signal, are aborted without publishing anything partial), the catalog is rebuilt from "
        "what completed, and it exits 130.",
    )
    parser.add_argument("versions", nargs="*", metavar="VERSION", help="release tags, e.g. v1.12.0")
    parser.add_argument(
        "--new",
        action="store_true",
        help="also every eligible upstream release not yet published here (the sensor's policy)",
    )
    parser.add_argument("--arch", action="append", help="amd64 or arm64 (repeatable) [TALOS_ARCHES]")
    parser.add_argument("--variant", action="append", help="a configured variant name (repeatable) [all]")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.versions and not args.new:
        raise InputError("name at least one Talos version (e.g. v1.12.0), or pass --new")
    outcome = publish(args.versions, args.arch, args.variant, settings=Settings.from_env(), new=args.new)
    if not outcome.versions:
        say("nothing new: every eligible release is published for every configured arch and variant")
        return EXIT_OK
    for label in outcome.succeeded:
        say(f"published Talos {label}")
    for label, message in outcome.failed.items():
        say(f"FAILED {label}: {message}")
    if outcome.not_started:
        say(f"not started (interrupted): {', '.join(outcome.not_started)}")
    if outcome.catalog_products is None:
        say("catalog unchanged (nothing new was published)")
    else:
        say(f"catalog: {outcome.catalog_products} products")
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome.ok else EXIT_FAILED
