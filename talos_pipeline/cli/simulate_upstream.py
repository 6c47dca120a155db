"""`talos-pipeline simulate-upstream`: the offline GitHub releases API + Image Factory alone."""

from __future__ import annotations

import argparse

from talos_pipeline.simulator.command import add_arguments, run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate-upstream", help="run the GitHub + Image Factory simulator alone")
    add_arguments(parser)
    parser.set_defaults(run=run)
