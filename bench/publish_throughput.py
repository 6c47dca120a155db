"""Publishing throughput and memory: `talos-pipeline publish` of one large simulated image.

The headline is the whole command (`talos-pipeline publish`, Dagster start-up included) against
the standard-tool pipeline `curl -s URL | tee FILE | openssl dgst -sha256` (download + write +
hash) of the same simulator URL, in the same run. Also: the pure hashing limit (`openssl dgst
-sha256 FILE`), the fixed cost (a 1 MiB publish: Dagster's start-up), the marginal throughput
(large-image median minus 1 MiB-publish median), and peak RSS for a 16 MiB and the large image,
which must stay flat (the disk is streamed, never held in memory).

Every figure is taken in interleaved rounds (one of each per round), so load from elsewhere on
the machine hits the pipeline and the baseline alike; each is a median with its spread.

    .venv/bin/python bench/publish_throughput.py [--size-mib 512] [--repeat 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIB, VENV_BIN, Row, append_output, print_table, run_timed
from bench.stats import Sample, medians_of, rate, times
from talos_pipeline.simulator import UpstreamSimulator

VERSION = "v1.12.0"
TARGET = (VERSION, "amd64", "nocloud")
MID_MIB = 16
# Peak RSS counts as flat when the large image adds less than this share of its extra bytes.
FLAT_SHARE = 1 / 8


def publish_once(sim: UpstreamSimulator, workdir: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one `talos-pipeline publish` into a fresh directory store."""
    store = Path(tempfile.mkdtemp(dir=workdir, prefix="store-"))
    env = dict(
        os.environ,
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=sim.releases_url,
        TALOS_FACTORY_URL=sim.factory_url,
        TALOS_SIGNING="none",
    )
    env.pop("DAGSTER_HOME", None)
    cmd = [str(VENV_BIN / "talos-pipeline"), "publish", VERSION, "--arch", TARGET[1], "--variant", TARGET[2]]
    seconds, rss = run_timed(cmd, env=env)
    shutil.rmtree(store)
    return seconds, rss


def curl_tee_openssl(url: str, workdir: Path) -> float:
    target = workdir / "curl.qcow2"
    seconds, _ = run_timed(f"curl -sf '{url}' | tee '{target}' | openssl dgst -sha256", shell=True)
    target.unlink()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="data in the large image [512]")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (medians) [5]")
    parser.add_argument("--output", help="also append the table to this file")
    args = parser.parse_args()
    for tool in ("curl", "openssl", "tee"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed for the baseline; apt-get install {tool}")
    workdir = Path(tempfile.mkdtemp(prefix="talos-bench-"))
    runs: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    sims: list[UpstreamSimulator] = []
    try:
        small, mid, big = (
            UpstreamSimulator(disk_size=size * MIB, cache_dir=str(workdir / f"cache-{size}")).start()
            for size in (1, MID_MIB, args.size_mib)
        )
        sims += [small, mid, big]
        url = big.image_url(*TARGET)
        curl_tee_openssl(url, workdir)  # warm: generates the image once
        publish_once(small, workdir)  # warm: generates the small image, loads Dagster's code once
        big_bytes = big.image_path(*TARGET).stat().st_size
        small_bytes = small.image_path(*TARGET).stat().st_size
        for round_ in range(args.repeat):
            record("curl", curl_tee_openssl(url, workdir))
            record("hash", run_timed(["openssl", "dgst", "-sha256", str(big.image_path(*TARGET))])[0])
            seconds, rss = publish_once(big, workdir)
            record("big", seconds)
            record("big_rss", rss)
            record("small", publish_once(small, workdir)[0])
            record("mid_rss", publish_once(mid, workdir)[1])
            print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    finally:
        for sim in sims:
            sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    s = {name: Sample.of(values) for name, values in runs.items()}
    mb = big_bytes / 1e6
    publish_rate, curl_rate = rate(mb, s["big"]), rate(mb, s["curl"])
    marginal_s = s["big"].minus(s["small"])
    marginal_mb = (big_bytes - small_bytes) / 1e6
    if marginal_s > 0:
        marginal = f"{marginal_mb / marginal_s:,.0f} MB/s ({marginal_s:.2f} s)"
        marginal_ratio = times(marginal_mb / marginal_s / curl_rate.median)
    else:
        marginal, marginal_ratio = f"not measurable ({marginal_s:+.2f} s)", "-"
    big_rss, mid_rss = s["big_rss"].map(lambda kib: kib / 1024), s["mid_rss"].map(lambda kib: kib / 1024)
    growth = big_rss.minus(mid_rss)
    allowed = (args.size_mib - MID_MIB) * FLAT_SHARE
    size = f"{big_bytes / MIB:.0f} MiB"
    curl_shown = f"curl \\| tee \\| openssl {curl_rate.show('{:,.0f}', ' MB/s')}"
    rows = [
        Row(
            f"whole command: `talos-pipeline publish` of a {size} image (Dagster start-up included)",
            f"{publish_rate.show('{:,.0f}', ' MB/s')}; {s['big'].show('{:.2f}', ' s')}",
            f"{curl_shown}; {s['curl'].show('{:.2f}', ' s')}",
            times(publish_rate.ratio_to(curl_rate)),
        ),
        Row("fixed cost: publish of a 1 MiB image (Dagster start-up)", s["small"].show("{:.2f}", " s"), "-", "-"),
        Row(
            f"marginal: {size} median minus 1 MiB median, over the {marginal_mb:,.0f} MB in between",
            marginal,
            f"curl \\| tee \\| openssl {curl_rate.median:,.0f} MB/s (median)",
            marginal_ratio,
        ),
        Row(
            "pure hashing limit: openssl dgst -sha256 of the file",
            rate(mb, s["hash"]).show("{:,.0f}", " MB/s"),
            "-",
            "-",
        ),
        Row(
            f"peak RSS of the publish command, {size} image",
            big_rss.show("{:.0f}", " MiB"),
            f"{MID_MIB} MiB image {mid_rss.show('{:.0f}', ' MiB')}",
            f"{times(big_rss.ratio_to(mid_rss))}; {growth:+.0f} MiB: "
            + ("flat" if growth < allowed else f"GROWS (more than {allowed:.0f} MiB)"),
        ),
    ]
    title = f"Publishing throughput ({size} image; {medians_of(args.repeat)})"
    append_output(args.output, print_table(title, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
