"""talos-pipeline: publish Talos Linux images for Incus, check them, serve them.

A thin command line over the core, the Dagster jobs and `serve/`.

One module per command (`add_parser(subparsers)`, `run(args) -> int`). Only the module of the
command being run is imported, so `talos-pipeline serve` (and its worker processes) never load
Dagster or sigstore. Exit codes: 0 success; 2 bad input or configuration (`ConfigError`,
`InputError`, bad flags); 1 failures of upstream, store, signing, verification or a run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version
from types import ModuleType

from talos_pipeline.core.errors import ConfigError, InputError, PipelineError

from .base import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE

COMMANDS = (
    "demo",
    "publish",
    "catalog",
    "serve",
    "verify",
    "prune",
    "releases",
    "simulate-upstream",
    "keygen",
)


def command_module(name: str) -> ModuleType:
    """The module of command `name` (`simulate-upstream` → `talos_pipeline.cli.simulate_upstream`)."""
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: every command by name, the full options of the one being run (all
    of them when none is named, for `--help`)."""
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="talos-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('talos-pipeline')}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if named in COMMANDS and name != named:
            subparsers.add_parser(name)
        else:
            command_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigError, InputError) as exc:
        print(f"talos-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:
        print(f"talos-pipeline {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
