"""`talos-pipeline publish` killed with SIGKILL right after each kind of write it makes, on a
directory store and on S3: the store stays valid (the previous catalog, or the complete new one)
and a rerun converges to the bytes of an undisturbed run.

Kills are triggered by observed progress, not by a clock: a watcher polls the store (and the
simulator, for a download in flight) and kills the process group as soon as the awaited write
shows up, so every kill lands at a known stage of the run. Precise windows inside a single
write (mid multipart upload, between the two catalog documents) are covered by
`test_concurrency.py`, which intercepts the store's methods.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from talos_pipeline.core.catalog import RECORD_CACHE_KEY, rebuild_catalog
from talos_pipeline.core.images import IMAGES_KEY, INDEX_KEY
from talos_pipeline.core.media import BUNDLE_SUFFIX
from talos_pipeline.core.signing import generate_key_pair
from talos_pipeline.core.stores import Store
from talos_pipeline.core.variants import VANILLA_SCHEMATIC
from talos_pipeline.core.verify import VerifyPolicy, verify_store

from .conftest import PipelineStore

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "talos_pipeline.cli", "publish"]
BASE, NEW = "v1.12.0", "v1.12.1"
VARIANTS = ["nocloud", "metal"]
WAIT_FOR_STAGE = 120.0


@dataclass(frozen=True)
class Stage:
    """A kind of write, and how the watcher recognises that it happened."""

    name: str
    reached: Callable[[list[str], Store], bool]


def _new(prefix: str, suffix: str = "") -> Callable[[list[str], Store], bool]:
    return lambda keys, _store: any(k.startswith(prefix) and k.endswith(suffix) for k in keys)


def _catalog_names_new(_keys: list[str], store: Store) -> bool:
    found = store.read_with_etag(IMAGES_KEY)
    return found is not None and f"talos:{NEW}:amd64:nocloud" in json.loads(found[0])["products"]


STAGES = [
    Stage("release facts (state)", _new(f"state/{NEW}/amd64/release.json")),
    Stage("metadata tarball", _new(f"images/{NEW}/", ".tar.xz")),
    Stage("disk download in flight", lambda _keys, _store: False),  # the simulator says, see below
    Stage("disk object", _new(f"images/{NEW}/", ".qcow2")),
    Stage("disk facts (state)", _new(f"state/{NEW}/amd64/", ".disk.json")),
    Stage("signature bundles", _new(f"images/{NEW}/", BUNDLE_SUFFIX)),
    Stage("product record", _new(f"records/{NEW}/")),
    Stage("catalog (images.json)", _catalog_names_new),
]


@pytest.fixture
def reference(pipeline_env: PipelineStore, tmp_path: Path, request: pytest.FixtureRequest):
    """A second store of the same kind, published without interruption."""
    if pipeline_env.kind == "dir":
        yield PipelineStore("dir", str(tmp_path / "reference"), tmp_path / "reference")
        return
    server = request.getfixturevalue("s3_server")
    location = server.new_location()
    yield PipelineStore("s3", location)
    server.cleanup(location)


@pytest.fixture
def signing_env(pipeline_env: PipelineStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Key-mode signing (bundles are one of the writes) and one arch, for every run of the test."""
    private, public = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    generate_key_pair(private, public)
    monkeypatch.setenv("TALOS_SIGNING", "key")
    monkeypatch.setenv("TALOS_SIGNING_KEY", str(private))
    monkeypatch.setenv("TALOS_ARCHES", "amd64")
    monkeypatch.setenv("TALOS_VARIANTS", ",".join(VARIANTS))
    return public


def _publish(version: str, store_location: str) -> None:
    env = dict(os.environ, TALOS_STORE=store_location)
    result = subprocess.run([*CLI, version], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _kill_at(stage: Stage, store: Store, simulator) -> None:
    """Start a publication of NEW and SIGKILL its process group once `stage` is observed."""
    stall = None
    if stage.name == "disk download in flight":
        stall = simulator.set_fault(f"/image/{VANILLA_SCHEMATIC}/{NEW}/", "stall", count=1, seconds=60)
    proc = subprocess.Popen([*CLI, NEW], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + WAIT_FOR_STAGE
    try:
        while True:
            if stall is not None and stall.wait(0.02):
                time.sleep(0.3)  # bytes are flowing into the store's upload when the kill lands
                break
            if stall is None and stage.reached(store.list_keys(""), store):
                break
            if proc.poll() is not None:
                raise AssertionError(f"{stage.name}: the run ended ({proc.returncode}) before the stage was seen")
            if time.monotonic() > deadline:
                raise AssertionError(f"{stage.name}: not reached within {WAIT_FOR_STAGE:.0f}s")
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        simulator.clear_faults()
    assert proc.returncode == -signal.SIGKILL, f"{stage.name}: the run was not killed by SIGKILL"


def _products(store: Store) -> set[str]:
    return set(json.loads(store.read_bytes(IMAGES_KEY))["products"])


def _assert_valid(store: Store, public_key: Path, stage: str) -> None:
    """The catalog is a complete rendering, every file it names checks out and is signed."""
    if set(json.loads(store.read_bytes(INDEX_KEY))["index"]["images"]["products"]) != _products(store):
        # the one documented window: images.json already complete, index.json not yet rewritten
        assert stage == "catalog (images.json)", f"{stage}: index.json and images.json disagree"
        rebuild_catalog(store, VARIANTS)
    report = verify_store(store, VerifyPolicy(key_pem=public_key.read_bytes()))
    assert report.ok, f"{stage}: {report.summary()}"


def _content(handle: PipelineStore) -> dict[str, str]:
    """The store's objects by sha256, except signatures (ECDSA is not deterministic: only their
    presence is compared) and the catalog's record cache (it holds the store's own ETags)."""
    return {
        key: "(bundle)" if key.endswith(BUNDLE_SUFFIX) else digest
        for key, digest in handle.digest().items()
        if key != RECORD_CACHE_KEY
    }


def test_sigkill_after_each_kind_of_write_keeps_the_store_valid_and_reruns_converge(
    pipeline_env: PipelineStore, reference: PipelineStore, signing_env: Path, simulator
) -> None:
    for version in (BASE, NEW):
        _publish(version, reference.location)
    expected = _content(reference)

    store = pipeline_env.open()
    _publish(BASE, pipeline_env.location)
    before = _products(store)
    for stage in STAGES:
        _kill_at(stage, store, simulator)
        assert before <= _products(store), f"{stage.name}: the previous catalog lost products"
        _assert_valid(store, signing_env, stage.name)

    _publish(NEW, pipeline_env.location)
    assert _content(pipeline_env) == expected, "the rerun did not converge to the bytes of an undisturbed run"
    _assert_valid(store, signing_env, "rerun")
