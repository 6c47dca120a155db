"""A first publication: `talos-pipeline publish --new` against the simulator's production profile
(32 stable releases × 2 arches × 2 variants = 128 images, sized like the factory's times
`--scale`, cold builds of `--build-seconds`, at most 6 at once), from a cold factory into an
empty store, without a GitHub token.

Two ratios, both against figures measured in the same run:

* against an ideal: the time no publisher can beat with this upstream, the larger of
  (bytes of all images ÷ the upstream's measured bandwidth: the same images fetched again with
  `--jobs` parallel `curl`s once built) and (cold builds × build time ÷ the factory's 6 build
  slots). Reported as ideal ÷ actual (1.0 would be perfect);
* against a serial run (TALOS_PUBLISH_JOBS=1) of the same partitions: measured on a subset of
  versions on its own cold simulator and extrapolated (time to the first published partition,
  plus the time per partition after it for every other partition).

    .venv/bin/python bench/first_publication.py [--jobs 4,6] [--scale 0.02] [--build-seconds 3]
        [--versions 32] [--repeat 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import VENV_BIN, Row, append_output, print_table
from bench.stats import Sample
from talos_pipeline.core.versions import TalosVersion
from talos_pipeline.simulator import UpstreamSimulator

FACTORY_BUILD_SLOTS = 6
OLDEST = TalosVersion.parse("v1.10.0")


def eligible(sim: UpstreamSimulator) -> list[str]:
    """What `publish --new` takes by default: published stable releases from v1.10.0 on, oldest first."""
    tags = [
        r.tag
        for r in sim.releases
        if TalosVersion.is_valid(r.tag) and not r.draft and not TalosVersion.parse(r.tag).is_prerelease
    ]
    return sorted((t for t in tags if TalosVersion.parse(t) >= OLDEST), key=TalosVersion.parse)


def simulator(args: argparse.Namespace, cache: Path) -> UpstreamSimulator:
    """A cold production-profile factory (images generated once into `cache`, built per simulator)."""
    return UpstreamSimulator(
        profile="production", scale=args.scale, first_byte_delay=args.build_seconds, download_tick_seconds=0,
        cache_dir=cache,
    )  # fmt: skip


def publish(
    sim: UpstreamSimulator, store: Path, jobs: int, args: list[str], min_version: str
) -> list[tuple[float, str]]:
    """Run `talos-pipeline publish ARGS`; its output lines, each with the seconds since the start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_", "GITHUB_TOKEN"))}
    env.update(
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=sim.releases_url,
        TALOS_FACTORY_URL=sim.factory_url,
        TALOS_PUBLISH_JOBS=str(jobs),
        TALOS_MIN_VERSION=min_version,
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(VENV_BIN / "talos-pipeline"), "publish", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic() - started, line.rstrip("\n")))
    if proc.wait() != 0:
        tail = "\n".join(line for _, line in lines[-40:])
        raise SystemExit(f"talos-pipeline publish {' '.join(args)} failed:\n{tail}")
    lines.append((time.monotonic() - started, "(exit 0)"))
    return lines


def published_times(lines: list[tuple[float, str]]) -> list[float]:
    """When each partition was reported published (its progress line, not the final summary)."""
    first: dict[str, float] = {}
    for t, line in lines:
        if line.startswith("published Talos "):
            first.setdefault(line, t)
    return sorted(first.values())


def upstream_bandwidth(sim: UpstreamSimulator, urls: list[str], parallel: int) -> float:
    """Bytes per second of `parallel` curls fetching `urls` (built images: no build wait)."""

    def fetch(url: str) -> int:
        done = subprocess.run(
            ["curl", "-sSL", "-o", "/dev/null", "-w", "%{size_download}", url],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout)

    started = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        total = sum(pool.map(fetch, urls))
    return total / (time.monotonic() - started)


def first_publication(args: argparse.Namespace, jobs: int, workdir: Path, cache: Path) -> dict[str, float]:
    with simulator(args, cache) as sim:
        versions = eligible(sim)[-args.versions :]
        store = Path(tempfile.mkdtemp(dir=workdir, prefix="store-"))
        lines = publish(sim, store, jobs, ["--new"], versions[0])
        wall = lines[-1][0]
        downloads = sim.downloads_by_image()
        if len(downloads) != len(versions) * 4 or set(downloads.values()) != {1}:
            raise SystemExit(f"expected each of {len(versions) * 4} images downloaded once: {downloads}")
        sizes = {
            key: sim.image_path(key.version, key.arch, key.platform, key.schematic).stat().st_size for key in downloads
        }
        urls = [sim.image_url(k.version, k.arch, k.platform, k.schematic) for k in downloads]
        bandwidth = upstream_bandwidth(sim, urls, jobs)
        github = sim.github_requests()
        builds = sim.build_stats()
        shutil.rmtree(store)
    total = sum(sizes.values())
    ideal = max(total / bandwidth, len(downloads) * args.build_seconds / FACTORY_BUILD_SLOTS)
    return {
        "wall": wall,
        "ideal": ideal,
        "bytes": total,
        "bandwidth": bandwidth,
        "images": len(downloads),
        "partitions": len(versions) * 2,
        "github": github,
        "builds_at_once": builds.max_concurrent,
    }


def serial(args: argparse.Namespace, workdir: Path, cache: Path) -> tuple[float, float]:
    """(time to the first published partition, seconds per partition after it), serially."""
    with simulator(args, cache) as sim:
        subset = eligible(sim)[-args.serial_versions :]
        store = Path(tempfile.mkdtemp(dir=workdir, prefix="serial-"))
        times = published_times(publish(sim, store, 1, subset, "v1.10.0"))
        shutil.rmtree(store)
    return times[0], (times[-1] - times[0]) / (len(times) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="4,6", help="TALOS_PUBLISH_JOBS values to measure")
    parser.add_argument("--scale", type=float, default=0.02, help="image sizes × this (1.0: the factory's)")
    parser.add_argument("--build-seconds", type=float, default=3.0, help="cold build time")
    parser.add_argument("--versions", type=int, default=32, help="the newest N eligible releases")
    parser.add_argument("--serial-versions", type=int, default=2, help="versions of the serial subset")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed to measure the upstream bandwidth; apt-get install curl")
    workdir = Path(tempfile.mkdtemp(prefix="talos-first-publication-"))
    cache = workdir / "images"
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    rows = []
    try:
        first_times, per_partition = zip(*(serial(args, workdir, cache) for _ in range(args.repeat)), strict=True)
        first, per = Sample.of(first_times), Sample.of(per_partition)
        for jobs in [int(j) for j in args.jobs.split(",")]:
            runs = [first_publication(args, jobs, workdir, cache) for _ in range(args.repeat)]
            wall, ideal = Sample.of([r["wall"] for r in runs]), Sample.of([r["ideal"] for r in runs])
            run = runs[0]
            serial_wall = first.median + (run["partitions"] - 1) * per.median
            rows += [
                Row(
                    f"publish --new, TALOS_PUBLISH_JOBS={jobs}: {run['partitions']:.0f} partitions, "
                    f"{run['images']:.0f} images, {run['bytes'] / 2**20:.0f} MiB, "
                    f"{run['github']:.0f} GitHub request(s), "
                    f"{run['builds_at_once']:.0f} builds at once",
                    wall.show("{:.1f}", " s"),
                    f"ideal {ideal.show('{:.1f}', ' s')} (bytes ÷ {run['bandwidth'] / 1e6:.0f} MB/s, "
                    f"{run['images']:.0f} builds × {args.build_seconds:g} s ÷ {FACTORY_BUILD_SLOTS} slots)",
                    f"{ideal.median / wall.median:.2f}× of ideal",
                ),
                Row(
                    "… against a serial run of the same partitions (TALOS_PUBLISH_JOBS=1, extrapolated)",
                    wall.show("{:.1f}", " s"),
                    f"serial {serial_wall:.1f} s (first partition {first.show('{:.1f}', ' s')}, "
                    f"then {per.show('{:.2f}', ' s')} each)",
                    f"{wall.median / serial_wall:.2f}×",
                ),
            ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    title = (
        f"First publication (production profile, scale {args.scale:g}, cold builds {args.build_seconds:g} s, "
        f"median of {args.repeat}; load average at start {' '.join(loadavg)})"
    )
    append_output(args.output, print_table(title, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
