"""`talos-pipeline demo`: the offline end-to-end demo (see `talos_pipeline/demo.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from talos_pipeline.demo import DemoOptions, run_demo
from talos_pipeline.simulator.command import parse_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="offline end-to-end demo: simulator → publish → HTTPS server")
    parser.add_argument("--once", action="store_true", help="exit after publishing (do not serve)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port of the demo server [8443]")
    parser.add_argument("--disk-size", type=parse_size, default="8MiB", help="size of each simulated disk image [8MiB]")
    parser.add_argument("--data-dir", default="data/demo", help="where the demo keeps its store and keys [data/demo]")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(DemoOptions(data_dir=Path(args.data_dir), disk_size=args.disk_size, port=args.port, once=args.once))
