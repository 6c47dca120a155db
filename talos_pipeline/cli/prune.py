"""`talos-pipeline prune`: retention with a grace period (see `core/prune.py`)."""

from __future__ import annotations

import argparse

from talos_pipeline.core.prune import RetentionPolicy, prune_store
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store

from .base import EXIT_FAILED, EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="retention: drop old versions from the catalog, delete files out of it for over an hour"
    )
    parser.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep the newest N versions of each product line (arch × variant) [TALOS_PRUNE_KEEP; all]",
    )
    parser.add_argument(
        "--keep-per-minor",
        type=int,
        metavar="N",
        help="keep the newest N versions of each minor line, e.g. v1.12 [TALOS_PRUNE_KEEP_PER_MINOR; all]",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        metavar="S",
        help="delete files only after this long out of the catalog [TALOS_PRUNE_GRACE_SECONDS; 3600]",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
    parser.add_argument("--store", help="store to prune [TALOS_STORE]")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    defaults = RetentionPolicy.from_settings(settings)  # TALOS_PRUNE_KEEP, _KEEP_PER_MINOR, _GRACE_SECONDS
    policy = RetentionPolicy(
        args.keep if args.keep is not None else defaults.keep,
        args.keep_per_minor if args.keep_per_minor is not None else defaults.keep_per_minor,
        args.grace_seconds if args.grace_seconds is not None else defaults.grace_seconds,
    ).validated()
    store = open_store(args.store or settings.store, settings)
    store.check_ready()
    report = prune_store(store, policy, [v.name for v in settings.variant_list()], dry_run=args.dry_run)
    say(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED
