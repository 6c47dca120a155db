"""`talos-pipeline publish` runs several version × arch partitions at once (TALOS_PUBLISH_JOBS),
through the Dagster job and instance, honouring the instance's `talos_factory` pool; the catalog
grows as versions complete; SIGINT stops it cleanly (exit 130, running partitions finish, the
catalog is rebuilt from what completed), a second SIGINT aborts the running partitions without
publishing anything partial.

The simulator's cold builds (a few tenths of a second, 6 at once like the factory) are what
concurrency overlaps: "at once" is read from its build counters, never from timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from talos_pipeline import launch
from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.prune import RetentionPolicy, prune_store
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.launch import PUBLICATION_TAG, publish
from talos_pipeline.simulator import UpstreamSimulator

from .conftest import PipelineStore

STORE_KINDS = ["dir"]
CLI = [sys.executable, "-m", "talos_pipeline.cli"]
VERSIONS = ["v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1"]  # the default history's stable releases
COLD_BUILD = 0.4


@pytest.fixture
def simulator(qcow2_cache, monkeypatch):
    """Cold builds that take a while, at most 6 at once; TALOS_* pointed at it."""
    with UpstreamSimulator(
        disk_size=256 * 1024, cache_dir=qcow2_cache, first_byte_delay=COLD_BUILD, build_slots=6
    ) as sim:
        monkeypatch.setenv("TALOS_RELEASES_URL", sim.releases_url)
        monkeypatch.setenv("TALOS_FACTORY_URL", sim.factory_url)
        yield sim


def dagster_home(tmp_path: Path, monkeypatch, pool_limit: int | None = None) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    yaml = "telemetry:\n  enabled: false\n"
    if pool_limit is not None:
        yaml += f"concurrency:\n  pools:\n    default_limit: {pool_limit}\n"
    (home / "dagster.yaml").write_text(yaml)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def products(store: PipelineStore) -> set[str]:
    return set(json.loads(store.read(IMAGES_KEY))["products"]) if store.exists(IMAGES_KEY) else set()


def versions_in(names: set[str]) -> set[str]:
    return {name.split(":")[1] for name in names}


def complete_versions(store: PipelineStore, variants: int = 2) -> set[str]:
    """Versions whose every record (2 arches × `variants`) is in the store."""
    counts: dict[str, int] = {}
    for key in store.keys("records/"):
        counts[key.split("/")[1]] = counts.get(key.split("/")[1], 0) + 1
    return {version for version, count in counts.items() if count == 2 * variants}


def wait_for(what: str, probe: Callable[[], object], timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def start_publish(*args: str, **env: str) -> subprocess.Popen:
    """`talos-pipeline publish` in its own process group, as a shell or `timeout` runs it."""
    return subprocess.Popen(
        [*CLI, "publish", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_partitions_run_at_once_as_runs_of_the_instance(pipeline_env, simulator, tmp_path, monkeypatch):
    dagster_home(tmp_path, monkeypatch)
    outcome = publish(VERSIONS)
    assert outcome.ok, outcome.failed
    stats = simulator.build_stats()
    assert 2 <= stats.max_concurrent <= 4, f"TALOS_PUBLISH_JOBS=4 partitions at once: {stats}"
    assert set(simulator.downloads_by_image().values()) == {1}, "each image downloaded once"
    with dg.DagsterInstance.get() as instance:  # what the UI shows
        runs = instance.get_runs(dg.RunsFilter(tags={PUBLICATION_TAG: next(iter(tag_values(instance)))}))
        images = [r for r in runs if r.job_name == "publish_images"]
        assert len(images) == len(VERSIONS) * 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in images)
        partitions = {r.tags["dagster/partition"] for r in images}
        assert partitions == {f"{arch}|{v}" for v in VERSIONS for arch in ("amd64", "arm64")}
        assert any(r.job_name == "publish_catalog" for r in runs)
    assert products(pipeline_env) == {
        f"talos:{v}:{a}:{x}" for v in VERSIONS for a in ("amd64", "arm64") for x in ("nocloud", "metal")
    }
    assert verify_store(pipeline_env.open(), VerifyPolicy()).ok


def tag_values(instance: dg.DagsterInstance) -> set[str]:
    return {run.tags[PUBLICATION_TAG] for run in instance.get_runs() if PUBLICATION_TAG in run.tags}


def test_publish_jobs_bounds_the_partitions_at_once(pipeline_env, simulator, monkeypatch):
    monkeypatch.setenv("TALOS_PUBLISH_JOBS", "2")
    assert publish(VERSIONS, variants=["nocloud"]).ok
    assert simulator.build_stats().max_concurrent == 2


def test_the_instance_pool_limits_the_downloads_of_concurrent_runs(pipeline_env, simulator, tmp_path, monkeypatch):
    """`talos_disk_image` claims a slot of the `talos_factory` pool: with a limit of 1 in the
    instance (as a deployment's dagster.yaml may set), 4 concurrent runs download one at a time."""
    dagster_home(tmp_path, monkeypatch, pool_limit=1)
    assert publish(VERSIONS, variants=["nocloud"]).ok
    assert simulator.build_stats().max_concurrent == 1


def test_the_catalog_grows_while_the_publication_runs(pipeline_env, simulator, monkeypatch):
    """Versions enter the catalog as soon as both arches are done, and partial versions at least
    every CATALOG_INTERVAL_SECONDS (shortened here): a version whose arm64 build hangs shows its
    amd64 images long before the run ends."""
    monkeypatch.setattr(launch, "CATALOG_INTERVAL_SECONDS", 0.5)
    simulator.set_fault(
        "/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.12.1/nocloud-arm64",
        "slow_first_byte",
        seconds=8,
    )
    seen: list[set[str]] = []
    original = launch.Launcher.rebuild_catalog

    def watched(self):
        result = original(self)
        seen.append(products(pipeline_env))
        return result

    monkeypatch.setattr(launch.Launcher, "rebuild_catalog", watched)
    outcome = publish(VERSIONS)
    assert outcome.ok, outcome.failed
    assert len(seen) >= len(VERSIONS), "a rebuild per completed version, at least"
    partial = [
        names for names in seen if "talos:v1.12.1:amd64:nocloud" in names and "talos:v1.12.1:arm64:nocloud" not in names
    ]
    assert partial, f"the amd64 images of v1.12.1 were in a catalog before its arm64 ones: {seen}"
    assert [len(names) for names in seen] == sorted(len(names) for names in seen), "the catalog only grows"
    assert len(seen[-1]) == len(VERSIONS) * 4


def test_sigint_stops_cleanly_and_the_catalog_names_what_completed(pipeline_env, simulator):
    """What `timeout --signal=INT` does to the workflow's publish: the whole process group gets
    SIGINT. No new partition starts, the running ones finish, the catalog is rebuilt, exit 130."""
    simulator.first_byte_delay = 1.0
    proc = start_publish(*VERSIONS, TALOS_PUBLISH_JOBS="2")
    wait_for("the first version in the catalog", lambda: products(pipeline_env))
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "interrupted: no new partition starts" in output and "not started (interrupted)" in output
    completed = complete_versions(pipeline_env)
    assert completed and completed != set(VERSIONS), output
    assert versions_in(products(pipeline_env)) == completed, "the catalog names exactly what completed"
    assert verify_store(pipeline_env.open(), VerifyPolicy()).ok
    assert pipeline_env.leftovers() == [], "the running partitions finished"


def test_a_second_sigint_aborts_the_running_partitions(pipeline_env, simulator, tmp_path, monkeypatch):
    dagster_home(tmp_path, monkeypatch)
    simulator.first_byte_delay = 60.0  # builds that would outlast the test: only an abort ends them
    proc = start_publish(*VERSIONS)
    wait_for("the partitions to ask the factory for their disks", lambda: simulator.build_stats().running >= 4)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "aborting the running partitions" in output and "aborted: its worker process was stopped" in output
    assert not pipeline_env.keys("records/") and not pipeline_env.exists(IMAGES_KEY), "nothing was published"
    assert not [k for k in pipeline_env.keys("images/") if "/disk-" in k]
    with dg.DagsterInstance.get() as instance:
        runs = [r for r in instance.get_runs() if r.job_name == "publish_images"]
        assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.CANCELED}, [r.status for r in runs]
    prune_store(pipeline_env.open(), RetentionPolicy(grace_seconds=0), ["nocloud", "metal"])
    assert pipeline_env.leftovers() == []


def test_one_partition_is_interrupted_the_same_way(pipeline_env, simulator, tmp_path, monkeypatch):
    """A single partition runs in the CLI's own process: SIGINT lets it finish (exit 130), a
    second one abandons it: nothing published, its run canceled."""
    simulator.first_byte_delay = 3.0
    finishing = start_publish("v1.12.0", "--arch", "amd64", "--variant", "nocloud")
    wait_for("the disk's cold build", lambda: simulator.build_stats().running)
    os.killpg(finishing.pid, signal.SIGINT)
    output = finishing.communicate(timeout=60)[0]
    assert finishing.returncode == 130 and "published Talos v1.12.0 amd64" in output, output
    assert products(pipeline_env) == {"talos:v1.12.0:amd64:nocloud"}

    dagster_home(tmp_path, monkeypatch)
    simulator.first_byte_delay = 60.0
    abandoned = start_publish("v1.12.1", "--arch", "amd64", "--variant", "nocloud")
    wait_for("the disk's cold build", lambda: simulator.build_stats().running)
    os.killpg(abandoned.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(abandoned.pid, signal.SIGINT)
    output = abandoned.communicate(timeout=60)[0]
    assert abandoned.returncode == 130 and "FAILED v1.12.1 amd64: aborted" in output, output
    assert not pipeline_env.keys("records/v1.12.1/")
    assert products(pipeline_env) == {"talos:v1.12.0:amd64:nocloud"}
    with dg.DagsterInstance.get() as instance:
        (run,) = [r for r in instance.get_runs() if r.job_name == "publish_images"]
        assert run.status == dg.DagsterRunStatus.CANCELED
