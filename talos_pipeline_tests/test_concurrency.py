"""Publication under concurrent and killed runs, and retention, on both stores (dir and S3).

* the store's compare-and-swap, and catalog rebuilds racing each other (threads, and a forced
  interleaving) never lose a record;
* N parallel `talos-pipeline publish` processes of different versions all end up in the catalog;
* a publish SIGKILLed mid-download, and at each object write (mid multipart upload, before the
  server-side copy, before the record, between the two catalog documents), leaves a valid
  catalog, and a rerun converges; prune then collects what the killed runs left;
* retention drops old versions from the catalog at once but deletes their files only after the
  grace period, and never a file that is back in the catalog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from talos_pipeline.cli import main
from talos_pipeline.core.catalog import rebuild_catalog
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY, ImageRef
from talos_pipeline.core.prune import (
    RetentionPolicy,
    plan_retention,
    prune_store,
    read_ledger,
)
from talos_pipeline.core.records import ProductRecord, PublishedFile
from talos_pipeline.core.stores import DirectoryStore, Store, open_store
from talos_pipeline.core.variants import Variant
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.launch import publish
from talos_pipeline.simulator import UpstreamSimulator

from .serve_fixtures import publish_images

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "talos_pipeline.cli"]
NOCLOUD = Variant("nocloud", "nocloud")
ORDER = ["nocloud", "metal"]
PUBLISH_ONE = ["--arch", "amd64", "--variant", "nocloud"]


@pytest.fixture
def any_store(store_kind, tmp_path, request) -> Store:
    location = request.getfixturevalue("s3_store_url") if store_kind == "s3" else str(tmp_path / "store")
    store = open_store(location)
    store.check_ready()
    return store


def _products(store: Store) -> set[str]:
    images = json.loads(store.read_bytes(IMAGES_KEY))
    index = json.loads(store.read_bytes(INDEX_KEY))
    assert set(index["index"]["images"]["products"]) == set(images["products"]), "index and images disagree"
    return set(images["products"])


def _verified(store: Store) -> None:
    report = verify_store(store, VerifyPolicy())
    assert report.ok, report.summary()


def _fake_record(store: Store, version: str, arch: str = "amd64") -> ProductRecord:
    """A record whose objects exist (small stand-ins): enough for catalog rebuilds."""
    image = ImageRef(version, arch, NOCLOUD)
    sha = f"{abs(hash((version, arch))):064x}"[-64:]
    meta, disk = image.metadata_key(sha), image.disk_key(sha)
    store.put_bytes(meta, b"metadata")
    store.put_bytes(disk, b"disk")
    return ProductRecord(
        version=version,
        arch=arch,
        variant="nocloud",
        platform="nocloud",
        schematic=NOCLOUD.schematic,
        serial="20251222_18:05",
        published_at="2025-12-22T18:05:12Z",
        prerelease="-" in version,
        fingerprint=sha,
        metadata=PublishedFile(meta, sha, 8),
        disk=PublishedFile(disk, sha, 4),
        unified_sha256=sha,
        unified_size=9,
        disk_mode="mirror",
        upstream_path=image.factory_path(),
        signing="none",
    )


# -- compare-and-swap and racing rebuilds ----------------------------------------------------
def test_compare_and_swap(any_store):
    assert any_store.read_with_etag("streams/v1/x.json") is None
    assert any_store.put_if("streams/v1/x.json", b"1", None)
    assert not any_store.put_if("streams/v1/x.json", b"2", None)
    data, etag = any_store.read_with_etag("streams/v1/x.json")
    assert data == b"1"
    assert any_store.put_if("streams/v1/x.json", b"2", etag)
    assert not any_store.put_if("streams/v1/x.json", b"3", etag)
    assert any_store.read_bytes("streams/v1/x.json") == b"2"


def test_racing_rebuilds_lose_no_record(any_store):
    versions = [f"v1.{minor}.{patch}" for minor in (10, 11) for patch in range(4)]
    records = {v: _fake_record(any_store, v) for v in versions}
    start = threading.Barrier(len(versions))
    errors = []

    def run(version: str) -> None:
        try:
            start.wait()
            any_store.put_bytes(records[version].image.record_key, records[version].to_json())
            rebuild_catalog(any_store, ORDER)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert _products(any_store) == {f"talos:{v}:amd64:nocloud" for v in versions}


class _Interleaved:
    """A store on which another run publishes its catalog right before our first images.json write."""

    def __init__(self, store: Store, competitor) -> None:
        self._store, self._competitor, self.fired = store, competitor, False

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_if(self, key, data, etag):
        if key == IMAGES_KEY and not self.fired:
            self.fired = True
            self._competitor()
        return self._store.put_if(key, data, etag)


def test_a_stale_rendering_never_overwrites_a_newer_catalog(any_store):
    ours, theirs = _fake_record(any_store, "v1.12.0"), _fake_record(any_store, "v1.12.1")
    any_store.put_bytes(ours.image.record_key, ours.to_json())

    def competitor():  # publishes v1.12.1 after we listed the records, before we write
        any_store.put_bytes(theirs.image.record_key, theirs.to_json())
        rebuild_catalog(any_store, ORDER)

    racing = _Interleaved(any_store, competitor)
    result = rebuild_catalog(racing, ORDER)
    assert racing.fired and result.attempts == 2, "our first write lost the compare-and-swap"
    assert _products(any_store) == {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    again = rebuild_catalog(any_store, ORDER)
    assert not again.written, "an unchanged catalog is not rewritten"


# -- parallel and killed publish processes ---------------------------------------------------
def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


COLLIDER = """
import os, sys, time
from pathlib import Path
from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.stores import directory, s3

gate, expected = Path(os.environ["TALOS_TEST_GATE"]), int(os.environ["TALOS_TEST_PARTIES"])

def meet_then_write(cls):
    original = cls.put_if
    def patched(self, key, data, etag):
        if key == IMAGES_KEY and not (gate / f"{os.getpid()}.waited").exists():
            (gate / f"{os.getpid()}.waited").touch()  # every run has read the catalog it will replace
            deadline = time.monotonic() + 60
            while len(list(gate.glob("*.waited"))) < expected and time.monotonic() < deadline:
                time.sleep(0.02)
        written = original(self, key, data, etag)
        if key == IMAGES_KEY:
            with open(gate / "attempts", "a") as log:
                log.write(f"{os.getpid()} {'won' if written else 'lost'}\\n")
        return written
    cls.put_if = patched

for cls in (directory.DirectoryStore, s3.S3Store):
    meet_then_write(cls)

from talos_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_parallel_publishes_of_different_versions_collide_and_all_reach_the_catalog(pipeline_env, tmp_path):
    """Four runs write the catalog at the same moment (each waits, after reading images.json, until
    all have read it): all but one lose the compare-and-swap, start over, and the final catalog
    names every version."""
    versions = ["v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1"]
    gate = tmp_path / "gate"
    gate.mkdir()
    env = _env(TALOS_TEST_GATE=str(gate), TALOS_TEST_PARTIES=str(len(versions)))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", COLLIDER, "publish", v, *PUBLISH_ONE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for v in versions
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * len(versions), "\n".join(outputs)
    attempts = (gate / "attempts").read_text().split()
    assert attempts.count("lost") >= len(versions) - 1, f"the runs did not collide: {attempts}"
    store = pipeline_env.open()
    assert _products(store) == {f"talos:{v}:amd64:nocloud" for v in versions}
    _verified(store)


def test_publish_killed_mid_download_leaves_a_valid_catalog_and_a_rerun_converges(pipeline_env, simulator):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok
    store = pipeline_env.open()
    before = store.read_bytes(IMAGES_KEY), store.read_bytes(INDEX_KEY)
    downloading = simulator.set_fault("/image/", "slow_first_byte", seconds=60)
    proc = subprocess.Popen(
        [*CLI, "publish", "v1.12.1", *PUBLISH_ONE], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert downloading.wait(90), "the publish never asked the factory for the disk"
        assert store.list_keys("images/v1.12.1/"), "the metadata tarball was stored before"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (store.read_bytes(IMAGES_KEY), store.read_bytes(INDEX_KEY)) == before
    _verified(store)
    simulator.clear_faults()
    assert publish(["v1.12.1"], ["amd64"], ["nocloud"]).ok
    assert _products(store) == {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    _verified(store)
    report = prune_store(store, RetentionPolicy(grace_seconds=0), ORDER)
    assert report.ok and not report.dropped
    assert pipeline_env.leftovers() == []
    _verified(store)


KILLER = """
import os, signal, sys
from talos_pipeline.core.stores import directory, s3, s3_uploads

kind, _, arg = os.environ["TALOS_TEST_KILL_AT"].partition(":")

def kill_before(cls, name, match):
    original = getattr(cls, name)
    def patched(self, *args, **kwargs):
        if match(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    setattr(cls, name, patched)

if kind == "commit":      # the whole disk is written (or on its way), not yet named
    for cls in (directory._DirectoryUpload, s3_uploads.S3StreamUpload):
        kill_before(cls, "commit", lambda *a: True)
elif kind == "copy":      # multipart upload completed to the staging key, not yet copied
    kill_before(s3.S3Store, "copy_within", lambda *a: True)
elif kind == "put":
    for cls in (directory.DirectoryStore, s3.S3Store):
        kill_before(cls, "put_bytes", lambda key, *a: key.startswith(arg))
elif kind == "putif":
    for cls in (directory.DirectoryStore, s3.S3Store):
        kill_before(cls, "put_if", lambda key, *a: key == arg)

from talos_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""
KILL_POINTS = {
    "s3": ["commit", "copy", "put:records/", f"putif:{IMAGES_KEY}", f"putif:{INDEX_KEY}"],
    "dir": ["commit", "put:records/", f"putif:{INDEX_KEY}"],
}


@pytest.fixture
def big_simulator(qcow2_cache, monkeypatch):
    """Disks of 12 MiB: with 5 MiB parts, a multipart upload of three parts."""
    with UpstreamSimulator(disk_size=12 * 1024 * 1024, cache_dir=qcow2_cache) as sim:
        monkeypatch.setenv("TALOS_RELEASES_URL", sim.releases_url)
        monkeypatch.setenv("TALOS_FACTORY_URL", sim.factory_url)
        monkeypatch.setenv("TALOS_S3_PART_SIZE", "5")
        yield sim


def test_publish_killed_at_each_object_write_leaves_a_valid_catalog(pipeline_env, big_simulator):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok
    store = pipeline_env.open()
    for point in KILL_POINTS[pipeline_env.kind]:
        before = store.read_bytes(IMAGES_KEY), store.read_bytes(INDEX_KEY)
        killed = subprocess.run(
            [sys.executable, "-c", KILLER, "publish", "v1.12.1", *PUBLISH_ONE],
            env=_env(TALOS_TEST_KILL_AT=point),
            capture_output=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, f"{point}: not killed\n{killed.stderr.decode()[-2000:]}"
        if point == f"putif:{INDEX_KEY}":
            # the documented window: images.json is the complete new catalog, index.json lags
            assert set(json.loads(store.read_bytes(IMAGES_KEY))["products"]) == {
                "talos:v1.12.0:amd64:nocloud",
                "talos:v1.12.1:amd64:nocloud",
            }
            assert store.read_bytes(INDEX_KEY) == before[1]
            rebuild_catalog(store, ORDER)  # any later rebuild repairs it; the next kill starts clean
        else:
            assert (store.read_bytes(IMAGES_KEY), store.read_bytes(INDEX_KEY)) == before, point
            _verified(store)
        if point == "commit" and pipeline_env.kind == "s3":
            assert store.temporaries(), "the killed run left its multipart upload behind"
        if point == "copy":
            assert any(t.name.startswith(".staging/") for t in store.temporaries())
    assert publish(["v1.12.1"], ["amd64"], ["nocloud"]).ok
    assert _products(store) == {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    _verified(store)
    prune_store(store, RetentionPolicy(grace_seconds=0), ORDER)
    assert pipeline_env.leftovers() == []
    _verified(store)


# -- retention -------------------------------------------------------------------------------
def _record(version: str, arch: str = "amd64", variant: str = "nocloud") -> ProductRecord:
    return ProductRecord(
        version=version,
        arch=arch,
        variant=variant,
        platform=variant,
        schematic=NOCLOUD.schematic,
        serial="20250101_00:00",
        published_at="2025-01-01T00:00:00Z",
        prerelease="-" in version,
        fingerprint="f",
        metadata=PublishedFile("m", "s", 1),
        disk=PublishedFile("d", "s", 1),
        unified_sha256="u",
        unified_size=1,
        disk_mode="mirror",
        upstream_path="p",
        signing="none",
    )


def _versions(records) -> list[str]:
    return sorted(
        {r.version for r in records},
        key=lambda v: [int(x) if x.isdigit() else x for x in v[1:].replace("-", ".").split(".")],
    )


@pytest.mark.parametrize(
    "policy,kept",
    [
        (RetentionPolicy(), ["v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1", "v1.13.0-beta.1"]),
        (RetentionPolicy(keep=2), ["v1.12.1", "v1.13.0-beta.1"]),
        (RetentionPolicy(keep=1), ["v1.12.1", "v1.13.0-beta.1"]),  # the newest stable stays: talos/latest
        (RetentionPolicy(keep_per_minor=1), ["v1.11.6", "v1.12.1", "v1.13.0-beta.1"]),
        (RetentionPolicy(keep=3, keep_per_minor=1), ["v1.11.6", "v1.12.0", "v1.12.1", "v1.13.0-beta.1"]),
    ],
)
def test_retention_plan(policy, kept):
    versions = ["v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1", "v1.13.0-beta.1"]
    records = [_record(v, arch) for v in versions for arch in ("amd64", "arm64")]
    keep, drop = plan_retention(records, policy)
    assert _versions(keep) == kept
    assert len(keep) == 2 * len(kept) and len(keep) + len(drop) == len(records)


def test_retention_policy_is_validated():
    with pytest.raises(Exception, match="keep at least 1"):
        RetentionPolicy(keep=0).validated()


@pytest.fixture
def four_versions(any_store, simulator) -> Store:
    publish_images(
        any_store,
        simulator,
        versions=("v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1"),
        arches=("amd64",),
        variants=(NOCLOUD,),
    )
    return any_store


def _keys(store: Store, version: str) -> list[str]:
    return store.list_keys(f"images/{version}/") + store.list_keys(f"state/{version}/")


def _digest(store: Store) -> dict[str, bytes]:
    return {k: store.read_bytes(k) for k in store.list_keys("")}


def test_prune_drops_from_the_catalog_now_and_deletes_files_after_the_grace_period(four_versions):
    store, t0 = four_versions, time.time()
    everything = _digest(store)
    dry = prune_store(store, RetentionPolicy(keep=2), ORDER, dry_run=True, now=t0)
    assert dry.dropped == ["talos:v1.11.5:amd64:nocloud", "talos:v1.11.6:amd64:nocloud"]
    assert dry.deleted == [] and len(dry.waiting) == 6, "tarball, disk and disk facts of two versions"
    assert _digest(store) == everything, "a dry run changes nothing"

    report = prune_store(store, RetentionPolicy(keep=2), ORDER, now=t0)
    assert report.dropped == dry.dropped and report.catalog_products == 2
    assert _products(store) == {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    assert not store.list_keys("records/v1.11")
    assert _keys(store, "v1.11.5") and _keys(store, "v1.11.6"), "files stay for clients with a cached index"
    assert set(read_ledger(store)[0]) == set(report.waiting)
    _verified(store)

    assert prune_store(store, RetentionPolicy(keep=2), ORDER, now=t0 + 1800).deleted == []
    late = prune_store(store, RetentionPolicy(keep=2), ORDER, now=t0 + 3601)
    assert sorted(late.deleted) == sorted(report.waiting)
    assert _keys(store, "v1.11.5") == [] and _keys(store, "v1.11.6") == []
    assert read_ledger(store)[0] == {}
    assert _keys(store, "v1.12.0") and _keys(store, "v1.12.1")
    _verified(store)


def test_files_back_in_the_catalog_get_a_new_grace_period(four_versions, simulator):
    store, t0 = four_versions, time.time()
    prune_store(store, RetentionPolicy(keep=3), ORDER, now=t0)  # v1.11.5 leaves the catalog
    assert any(k.startswith("images/v1.11.5/") for k in read_ledger(store)[0])
    publish_images(store, simulator, versions=("v1.11.5",), arches=("amd64",), variants=(NOCLOUD,))  # back again
    assert "talos:v1.11.5:amd64:nocloud" in _products(store)
    assert not any(k.startswith("images/v1.11.5/") for k in read_ledger(store)[0]), "the rebuild took them off"
    # dropped again long after the first sighting: the hour starts now, not at t0
    report = prune_store(store, RetentionPolicy(keep=3), ORDER, now=t0 + 7200)
    assert report.dropped == ["talos:v1.11.5:amd64:nocloud"] and report.deleted == []
    assert _keys(store, "v1.11.5")


def test_leftovers_of_killed_runs_are_collected_after_the_grace_period(four_versions):
    store = four_versions
    store.put_bytes("images/v1.13.0/amd64/nocloud/disk-dead.qcow2", b"half a run")
    store.put_bytes("state/v1.13.0/amd64/release.json", b"{}")
    if isinstance(store, DirectoryStore):  # a disk upload whose process died
        upload = store.upload()
        upload.write(b"a killed upload")
        upload._file.flush()
    else:  # a staging object whose copy never happened
        store.s3.put_object(Bucket=store.bucket, Key=f"{store.prefix}.staging/{int(time.time())}-dead", Body=b"x")
    now = time.time() + 1
    first = prune_store(store, RetentionPolicy(), ORDER, now=now)
    assert first.dropped == [] and first.deleted == []
    assert set(first.waiting) == {"images/v1.13.0/amd64/nocloud/disk-dead.qcow2", "state/v1.13.0/amd64/release.json"}
    assert len(first.temporaries_waiting) == 1 and not first.temporaries_removed
    later = prune_store(store, RetentionPolicy(), ORDER, now=now + 3600)
    assert sorted(later.deleted) == sorted(first.waiting)
    assert len(later.temporaries_removed) == 1 and store.temporaries() == []
    assert _products(store) == {f"talos:{v}:amd64:nocloud" for v in ("v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1")}
    _verified(store)


def test_an_unreadable_record_protects_its_image_directory(four_versions):
    store = four_versions
    store.put_bytes("records/v1.13.0/amd64/nocloud.json", b'{"schema": 99}')
    store.put_bytes("images/v1.13.0/amd64/nocloud/disk-x.qcow2", b"?")
    report = prune_store(store, RetentionPolicy(grace_seconds=0), ORDER)
    assert "images/v1.13.0/amd64/nocloud/disk-x.qcow2" not in report.deleted + list(report.waiting)
    assert store.exists("images/v1.13.0/amd64/nocloud/disk-x.qcow2")
    assert not report.ok and "unreadable" in report.problems[0]


def test_prune_cli_and_dagster_job(pipeline_env, simulator, capsys, monkeypatch):
    publish_images(
        pipeline_env.open(),
        simulator,
        versions=("v1.11.6", "v1.12.0", "v1.12.1"),
        arches=("amd64",),
        variants=(NOCLOUD,),
    )
    assert main(["prune", "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "2 would be dropped" in out and "talos:v1.11.6:amd64:nocloud" in out
    assert len(_products(pipeline_env.open())) == 3

    defs = load_definitions()
    run_config = {"ops": {"prune_talos_store": {"config": {"keep": 2}}}}
    result = defs.resolve_job_def("prune_store").execute_in_process(run_config=run_config, raise_on_error=False)
    assert result.success
    assert _products(pipeline_env.open()) == {"talos:v1.12.0:amd64:nocloud", "talos:v1.12.1:amd64:nocloud"}
    assert [m.asset_key.path for m in result.asset_materializations_for_node("prune_talos_store")] == [
        ["talos_catalog"]
    ]

    assert main(["prune", "--keep", "1", "--grace-seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 dropped" in out and "delete  images/v1.11.6/" in out
    assert not [k for k in pipeline_env.keys("images/") if not k.startswith("images/v1.12.1/")]
    _verified(pipeline_env.open())

    schedule = defs.resolve_schedule_def("daily_prune_schedule")
    assert schedule.default_status.value == "STOPPED"
    monkeypatch.setenv("TALOS_PRUNE_KEEP", "3")
    monkeypatch.setenv("TALOS_PRUNE_KEEP_PER_MINOR", "1")
    import dagster as dg

    requests = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    config = {"keep": 3, "keep_per_minor": 1, "grace_seconds": 3600.0}
    assert requests[0].run_config == {"ops": {"prune_talos_store": {"config": config}}}
    monkeypatch.setenv("TALOS_PRUNE_KEEP", "zero")
    assert main(["prune"]) == 2
    assert "TALOS_PRUNE_KEEP='zero'" in capsys.readouterr().err
