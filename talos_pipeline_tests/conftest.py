"""Shared fixtures: the upstream simulator and an environment pointing the pipeline at it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from talos_pipeline.simulator import UpstreamSimulator

pytest_plugins = ["talos_pipeline_tests.fake_sigstore.fixtures"]

SMALL_DISK = 1024 * 1024


@pytest.fixture(scope="session")
def qcow2_cache(tmp_path_factory) -> str:
    """Generated images are deterministic; sharing them keeps the suite fast."""
    return str(tmp_path_factory.mktemp("qcow2-cache"))


@pytest.fixture
def simulator(qcow2_cache):
    with UpstreamSimulator(disk_size=SMALL_DISK, cache_dir=qcow2_cache) as sim:
        yield sim


@pytest.fixture
def pipeline_env(tmp_path, simulator, monkeypatch) -> Path:
    """TALOS_* variables for a run against the simulator into a fresh directory store."""
    for name in list(os.environ):
        if name.startswith(("TALOS_", "DAGSTER_HOME", "GITHUB_TOKEN", "ACTIONS_ID_TOKEN")):
            monkeypatch.delenv(name)
    store = tmp_path / "store"
    monkeypatch.setenv("TALOS_STORE", str(store))
    monkeypatch.setenv("TALOS_RELEASES_URL", simulator.releases_url)
    monkeypatch.setenv("TALOS_FACTORY_URL", simulator.factory_url)
    monkeypatch.setenv("TALOS_SIGNING", "none")
    return store


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden temp areas excluded)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
