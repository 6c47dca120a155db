"""What signing adds to a publication, for a small and a large disk: none vs key vs keyless
(keyless against the loopback fake Sigstore of the test suite: real sigstore-python, real
Fulcio/Rekor round trips on loopback). The disk is signed by its digest, so the cost should not
grow with the disk size.

    .venv/bin/python bench/signing_overhead.py [--sizes-mib 16,256] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIB, Row, append_output, print_table
from talos_pipeline.core.signing import generate_key_pair
from talos_pipeline.launch import publish
from talos_pipeline.simulator import UpstreamSimulator
from talos_pipeline_tests.fake_sigstore import FakeSigstore, ambient_env


def timed_publish(workdir: Path, sim: UpstreamSimulator, env: dict[str, str]) -> float:
    store = Path(tempfile.mkdtemp(dir=workdir, prefix="store-"))
    saved = dict(os.environ)
    os.environ.update(
        env,
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=sim.releases_url,
        TALOS_FACTORY_URL=sim.factory_url,
        TALOS_VARIANTS="nocloud",
    )
    os.environ.pop("DAGSTER_HOME", None)
    try:
        start = time.perf_counter()
        outcome = publish(["v1.12.0"], ["amd64"], log=lambda _m: None)
        elapsed = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if not outcome.ok:
        raise SystemExit(f"publish failed: {outcome.failed}")
    shutil.rmtree(store)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="16,256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="talos-signing-bench-"))
    rows = []
    try:
        generate_key_pair(workdir / "k.key", workdir / "k.pub")
        with FakeSigstore() as fake:
            modes = {
                "none": {"TALOS_SIGNING": "none"},
                "key": {"TALOS_SIGNING": "key", "TALOS_SIGNING_KEY": str(workdir / "k.key")},
                "sigstore (keyless)": {"TALOS_SIGNING": "sigstore", **ambient_env(fake)},
            }
            for size in (int(s) for s in args.sizes_mib.split(",")):
                with UpstreamSimulator(disk_size=size * MIB, cache_dir=str(workdir / "cache")) as sim:
                    timed_publish(workdir, sim, modes["none"])  # warm: generate the image once
                    times = {
                        m: min(timed_publish(workdir, sim, env) for _ in range(args.repeat)) for m, env in modes.items()
                    }
                for mode in ("key", "sigstore (keyless)"):
                    extra = times[mode] - times["none"]
                    rows.append(
                        Row(
                            f"signing overhead, {mode}, {size} MiB disk",
                            f"{extra:+.2f} s",
                            f"unsigned publish {times['none']:.2f} s",
                            f"{times[mode] / times['none']:.2f}×",
                        )
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = print_table(f"Signing overhead per publication (best of {args.repeat})", rows)
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
