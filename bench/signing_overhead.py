"""What signing adds to a publication, for a small and a large disk: none vs key vs keyless
(keyless against the loopback fake Sigstore of the test suite: real sigstore-python, real
Fulcio/Rekor round trips on loopback). The disk is signed by its digest, so the cost should not
grow with the disk size.

Each publication runs in this process (`talos_pipeline.launch.publish`, Dagster loaded once), in
interleaved rounds (one publish per mode per round, the order rotating). The overhead of a mode
is the median of its publishes minus the median of the unsigned ones, stated for every size
measured; the per-round differences give its spread.

    .venv/bin/python bench/signing_overhead.py [--sizes-mib 16,256] [--repeat 5] [--output FILE]
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
from bench.stats import Sample, medians_of, times
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


def overhead_row(mode: str, size: int, signed: Sample, unsigned: Sample) -> Row:
    """Median minus median, with the spread of the per-round differences (the rounds are paired)."""
    per_round = Sample.of([a - b for a, b in zip(signed.values, unsigned.values, strict=True)])
    spread = "" if per_round.n == 1 else f"; per round {per_round.low:+.2f} to {per_round.high:+.2f} s"
    return Row(
        f"{mode} signing overhead, {size} MiB disk (median minus median)",
        f"{signed.minus(unsigned):+.2f} s{spread}; signed publish {signed.show('{:.2f}', ' s')}",
        f"unsigned publish {unsigned.show('{:.2f}', ' s')}",
        times(signed.ratio_to(unsigned)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="16,256", help="disk sizes, comma-separated [16,256]")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds per size (medians) [5]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="talos-signing-bench-"))
    rows = []
    try:
        generate_key_pair(workdir / "k.key", workdir / "k.pub")
        with FakeSigstore() as fake:
            modes = {
                "none": {"TALOS_SIGNING": "none"},
                "key": {"TALOS_SIGNING": "key", "TALOS_SIGNING_KEY": str(workdir / "k.key")},
                "keyless (sigstore)": {"TALOS_SIGNING": "sigstore", **ambient_env(fake)},
            }
            for size in (int(s) for s in args.sizes_mib.split(",")):
                runs: dict[str, list[float]] = {mode: [] for mode in modes}
                with UpstreamSimulator(disk_size=size * MIB, cache_dir=str(workdir / "cache")) as sim:
                    for env in modes.values():  # warm: generate the image once, first signatures
                        timed_publish(workdir, sim, env)
                    for round_ in range(args.repeat):
                        order = list(modes)[round_ % 3 :] + list(modes)[: round_ % 3]
                        for mode in order:
                            runs[mode].append(timed_publish(workdir, sim, modes[mode]))
                unsigned = Sample.of(runs["none"])
                for mode in ("keyless (sigstore)", "key"):
                    rows.append(overhead_row(mode, size, Sample.of(runs[mode]), unsigned))
                print(f"{size} MiB done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    title = f"Signing overhead per publication ({medians_of(args.repeat)})"
    append_output(args.output, print_table(title, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
