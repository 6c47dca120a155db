"""`talos-pipeline catalog`: rebuild the catalog from the product records in the store."""

from __future__ import annotations

import argparse

from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.settings import Settings
from talos_pipeline.launch import Launcher

from .base import EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "catalog",
        help="rebuild the catalog from the product records in the store; print the product count",
        description="Materialize talos_catalog (the publish_catalog job) from the records in TALOS_STORE: "
        "useful after an interrupted run, or to pick up records another process wrote.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    products, error = Launcher(settings).rebuild_catalog()
    if error is not None:
        raise PipelineError(f"the catalog of {settings.store} was not rebuilt: {error}")
    say(f"catalog: {products} products in {settings.store}")
    return EXIT_OK
