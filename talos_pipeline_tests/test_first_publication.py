"""A first publication at production shape, at a reduced scale (issue 12, "What must be true").

The simulator's production profile: the release history since v1.10 (32 stable releases the
default policy takes, prereleases, drafts, odd tags), images sized like the factory's times
`SCALE`, cold builds of `COLD_BUILD` seconds at most 6 at once, a GitHub listing whose ETag moves
with download counts, no token. `talos-pipeline publish --new` runs as operators run it:

* it completes with each of the 128 images downloaded exactly once, within GitHub's 60
  unauthenticated requests, in at most half the time of a serial run of the same partitions
  (the serial run is measured in the same test, on a small subset, and extrapolated: its time
  to the first published partition plus the time per partition after that, for every partition);
* SIGKILLed halfway (the whole process group, once the catalog holds a third of the versions),
  it leaves a valid catalog that names every version completed by then; run again, it completes
  the rest without downloading those again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest

from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.core.versions import TalosVersion
from talos_pipeline.simulator import UpstreamSimulator

from .conftest import PipelineStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
STORE_KINDS = ["dir"]
CLI = [sys.executable, "-m", "talos_pipeline.cli"]
SCALE = 0.005  # about 1 MiB per amd64 image
COLD_BUILD = 0.5
ARCHES, VARIANTS = ("amd64", "arm64"), ("nocloud", "metal")
SERIAL_SUBSET = ["v1.13.0", "v1.13.1", "v1.13.2", "v1.13.3"]
GITHUB_BUDGET = 60


@pytest.fixture
def production(qcow2_cache, monkeypatch):
    """The production profile, cold, TALOS_* pointed at it (no GITHUB_TOKEN: pipeline_env clears it)."""
    with UpstreamSimulator(
        profile="production", scale=SCALE, first_byte_delay=COLD_BUILD, download_tick_seconds=0, cache_dir=qcow2_cache
    ) as sim:
        monkeypatch.setenv("TALOS_RELEASES_URL", sim.releases_url)
        monkeypatch.setenv("TALOS_FACTORY_URL", sim.factory_url)
        yield sim


def eligible(sim: UpstreamSimulator) -> list[str]:
    """What the default policy publishes: published stable releases from v1.10.0 on."""
    oldest = TalosVersion.parse("v1.10.0")
    return [
        r.tag
        for r in sim.releases
        if TalosVersion.is_valid(r.tag)
        and not r.draft
        and not TalosVersion.parse(r.tag).is_prerelease
        and TalosVersion.parse(r.tag) >= oldest
    ]


@dataclass
class Publication:
    """A `talos-pipeline publish` subprocess in its own process group, its output timestamped."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    lines: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*CLI, "publish", *self.args],
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait(self, timeout: float = 600) -> float:
        """Exit and return its wall time."""
        self.proc.wait(timeout=timeout)
        self._reader.join(10)
        return (self.lines[-1][0] if self.lines else time.monotonic()) - self.started

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def published_at(self) -> list[float]:
        """When each partition was reported published (seconds since the start): the progress line,
        not the summary that repeats it at the end."""
        first: dict[str, float] = {}
        for t, line in self.lines:
            if line.startswith("published Talos "):
                first.setdefault(line, t - self.started)
        return sorted(first.values())


def catalog_versions(store: PipelineStore) -> set[str]:
    if not store.exists(IMAGES_KEY):
        return set()
    return {name.split(":")[1] for name in json.loads(store.read(IMAGES_KEY))["products"]}


def complete_versions(store: PipelineStore) -> set[str]:
    counts: dict[str, int] = {}
    for key in store.keys("records/"):
        counts[key.split("/")[1]] = counts.get(key.split("/")[1], 0) + 1
    return {v for v, n in counts.items() if n == len(ARCHES) * len(VARIANTS)}


def record_key(key: str) -> list[str]:
    return key.split("/")


def serial_seconds(partitions: int, store: PipelineStore, qcow2_cache: str) -> tuple[float, float]:
    """(time to the first published partition, seconds per partition after it) of a serial run
    (TALOS_PUBLISH_JOBS=1) of `SERIAL_SUBSET`, on a cold simulator of its own."""
    with UpstreamSimulator(
        profile="production", scale=SCALE, first_byte_delay=COLD_BUILD, download_tick_seconds=0, cache_dir=qcow2_cache
    ) as sim:
        run = Publication(
            SERIAL_SUBSET,
            {
                "TALOS_PUBLISH_JOBS": "1",
                "TALOS_STORE": f"{store.location}-serial",
                "TALOS_RELEASES_URL": sim.releases_url,
                "TALOS_FACTORY_URL": sim.factory_url,
            },
        )
        run.wait()
        assert run.proc.returncode == 0, run.output()
    times = run.published_at()
    assert len(times) == len(SERIAL_SUBSET) * len(ARCHES)
    return times[0], (times[-1] - times[0]) / (len(times) - 1)


@pytest.mark.timed  # concurrent vs serial seconds: a busy neighbour worker skews the ratio
def test_a_first_publication_is_concurrent_downloads_each_image_once_and_fits_the_github_budget(
    pipeline_env, production, qcow2_cache
):
    versions = eligible(production)
    assert len(versions) >= 16
    run = Publication(["--new"])
    seconds = run.wait()
    assert run.proc.returncode == 0, run.output()[-5000:]

    images = len(versions) * len(ARCHES) * len(VARIANTS)
    downloads = production.downloads_by_image()
    assert len(downloads) == images and set(downloads.values()) == {1}, "each image downloaded exactly once"
    assert production.github_requests() <= GITHUB_BUDGET, production.github_requests_by_path()
    assert catalog_versions(pipeline_env) == set(versions)
    report = verify_store(pipeline_env.open(), VerifyPolicy())
    assert report.ok, report.summary()

    first, per_partition = serial_seconds(len(versions) * len(ARCHES), pipeline_env, qcow2_cache)
    serial = first + (len(versions) * len(ARCHES) - 1) * per_partition
    print(
        f"\nfirst publication: {len(versions)} releases, {images} images, {production.github_requests()} GitHub "
        f"requests, {production.build_stats()}; {seconds:.1f}s concurrent vs {serial:.1f}s serial "
        f"(first partition {first:.1f}s, then {per_partition:.2f}s each): {seconds / serial:.2f}×"
    )
    assert seconds <= 0.5 * serial, f"{seconds:.1f}s concurrent vs {serial:.1f}s serial"


def test_a_first_publication_killed_halfway_leaves_what_completed_and_a_rerun_finishes_it(pipeline_env, production):
    versions = eligible(production)
    run = Publication(["--new"])
    deadline = time.monotonic() + 300
    while True:  # a third of the versions in the catalog, and the catalog caught up with the records
        in_catalog, completed = catalog_versions(pipeline_env), complete_versions(pipeline_env)
        if len(in_catalog) >= len(versions) // 3 and completed <= in_catalog and pipeline_env.exists(INDEX_KEY):
            break
        assert run.proc.poll() is None and time.monotonic() < deadline, run.output()[-3000:]
        time.sleep(0.02)
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.wait()
    assert run.proc.returncode == -signal.SIGKILL

    assert catalog_versions(pipeline_env) >= completed, "every version completed before the kill is in the catalog"
    assert catalog_versions(pipeline_env) != set(versions), "killed halfway"
    report = verify_store(pipeline_env.open(), VerifyPolicy())
    assert report.ok, report.summary()
    recorded = {
        (v, arch, name.removesuffix(".json")) for _, v, arch, name in map(record_key, pipeline_env.keys("records/"))
    }

    rerun = Publication(["--new"])
    rerun.wait()
    assert rerun.proc.returncode == 0, rerun.output()[-3000:]
    assert catalog_versions(pipeline_env) == set(versions)
    report = verify_store(pipeline_env.open(), VerifyPolicy())
    assert report.ok, report.summary()
    downloads = {(k.version, k.arch, k.platform): n for k, n in production.downloads_by_image().items()}
    assert all(downloads[image] == 1 for image in recorded), "what was published is not downloaded again"
    assert len(downloads) == len(versions) * len(ARCHES) * len(VARIANTS)
    print(
        f"\nkilled with {len(completed)} of {len(versions)} versions complete ({len(recorded)} images recorded); "
        f"rerun downloaded {sum(downloads.values()) - len(recorded)} images "
        f"({sum(n > 1 for n in downloads.values())} of them in flight at the kill)"
    )
