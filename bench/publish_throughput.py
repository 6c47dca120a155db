"""Publishing throughput and memory: `talos-pipeline publish` of one large simulated image.

Baseline, measured in the same run against the same simulator URL: the standard-tool pipeline
`curl -s URL | tee FILE | openssl dgst -sha256` (download + write + hash). Also: the pure
hashing limit (`openssl dgst -sha256 FILE`), the marginal figure (minus a 1 MiB publish, i.e.
Dagster's fixed start-up), and peak RSS for a 16 MiB and a large image.

    .venv/bin/python bench/publish_throughput.py [--size-mib 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIB, VENV_BIN, Row, append_output, median_of, print_table, run_timed
from talos_pipeline.simulator import UpstreamSimulator

VERSION = "v1.12.0"


def publish_once(sim: UpstreamSimulator, workdir: Path) -> tuple[float, int]:
    store = Path(tempfile.mkdtemp(dir=workdir, prefix="store-"))
    env = dict(
        os.environ,
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=sim.releases_url,
        TALOS_FACTORY_URL=sim.factory_url,
        TALOS_SIGNING="none",
    )
    env.pop("DAGSTER_HOME", None)
    cmd = [str(VENV_BIN / "talos-pipeline"), "publish", VERSION, "--arch", "amd64", "--variant", "nocloud"]
    seconds, rss = run_timed(cmd, env=env)
    shutil.rmtree(store)
    return seconds, rss


def curl_tee_openssl(url: str, workdir: Path) -> float:
    target = workdir / "curl.qcow2"
    seconds, _ = run_timed(f"curl -s '{url}' | tee '{target}' | openssl dgst -sha256", shell=True)
    target.unlink()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    for tool in ("curl", "openssl", "tee"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed for the baseline; apt-get install {tool}")
    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-"))
    try:
        sims = {
            size: UpstreamSimulator(disk_size=size * MIB, cache_dir=str(workdir / "cache")).start()
            for size in (1, 16, args.size_mib)
        }
        big = sims[args.size_mib]
        url = big.image_url(VERSION, "amd64", "nocloud")
        curl_tee_openssl(url, workdir)  # warm: generates the image once
        image_bytes = big.image_path(VERSION, "amd64", "nocloud").stat().st_size
        baseline = median_of(args.repeat, lambda: curl_tee_openssl(url, workdir))
        hash_only = median_of(
            args.repeat,
            lambda: run_timed(["openssl", "dgst", "-sha256", str(big.image_path(VERSION, "amd64", "nocloud"))])[0],
        )
        small_s, _ = min(publish_once(sims[1], workdir) for _ in range(args.repeat))
        _, mid_rss = publish_once(sims[16], workdir)
        runs = [publish_once(big, workdir) for _ in range(args.repeat)]
        big_s = sorted(r[0] for r in runs)[len(runs) // 2]
        big_rss = max(r[1] for r in runs)
        for sim in sims.values():
            sim.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    mb = image_bytes / 1e6
    marginal = max(big_s - small_s, 1e-9)
    rows = [
        Row(
            f"publish {image_bytes / MIB:.0f} MiB, whole command",
            f"{mb / big_s:.0f} MB/s ({big_s:.2f} s)",
            f"curl \\| tee \\| openssl {mb / baseline:.0f} MB/s ({baseline:.2f} s)",
            f"{baseline / big_s:.2f}×",
        ),
        Row(
            "publish, marginal (minus a 1 MiB publish: Dagster start-up)",
            f"{mb / marginal:.0f} MB/s ({marginal:.2f} s)",
            f"curl \\| tee \\| openssl {mb / baseline:.0f} MB/s",
            f"{baseline / marginal:.2f}×",
        ),
        Row("pure hashing limit: openssl dgst -sha256 of the file", f"{mb / hash_only:.0f} MB/s", "-", "-"),
        Row("fixed cost: publish of a 1 MiB image", f"{small_s:.2f} s", "-", "-"),
        Row(
            "peak RSS, 16 MiB image",
            f"{mid_rss / 1024:.0f} MiB",
            f"{big_rss / 1024:.0f} MiB at {image_bytes / MIB:.0f} MiB",
            f"{big_rss / max(mid_rss, 1):.2f}×",
        ),
    ]
    text = print_table(f"Publishing throughput ({image_bytes / MIB:.0f} MiB image, median of {args.repeat})", rows)
    append_output(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
