"""A publishing run killed at random points (SIGKILL, several seeds) never breaks the store:
the catalog stays the previous valid one or becomes the new valid one, and a rerun converges
to exactly the bytes of an undisturbed run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.core.verify import VerifyPolicy, verify_store

from .conftest import tree_digest

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "talos_pipeline.cli", "publish"]
FIRST, NEXT = ["v1.11.6"], ["v1.12.0", "v1.12.1"]


def _env(store: Path, simulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_HOME"))}
    env.update(
        TALOS_STORE=str(store),
        TALOS_RELEASES_URL=simulator.releases_url,
        TALOS_FACTORY_URL=simulator.factory_url,
        TALOS_SIGNING="none",
        TALOS_ARCHES="amd64",
    )
    return env


def _publish(store: Path, simulator, versions: list[str]) -> float:
    start = time.monotonic()
    result = subprocess.run([*CLI, *versions], env=_env(store, simulator), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - start


def _products(store: Path) -> set[str]:
    return set(json.loads((store / "streams/v1/images.json").read_text())["products"])


def test_sigkill_at_random_points_keeps_a_valid_catalog_and_reruns_converge(tmp_path, simulator):
    reference = tmp_path / "reference"
    _publish(reference, simulator, FIRST)
    duration = _publish(reference, simulator, NEXT)
    expected = tree_digest(reference)
    for seed in (1, 2, 3, 4):
        rng = random.Random(seed)
        store = tmp_path / f"seed-{seed}"
        _publish(store, simulator, FIRST)
        before = _products(store)
        proc = subprocess.Popen(
            [*CLI, *NEXT],
            env=_env(store, simulator),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.2, duration))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        after = _products(store)
        assert before <= after, f"seed {seed}: the previous catalog lost products"
        report = verify_store(DirectoryStore(store), VerifyPolicy())
        assert report.ok, f"seed {seed}: {report.summary()}"
        _publish(store, simulator, NEXT)
        assert tree_digest(store) == expected, f"seed {seed}: the rerun did not converge to the reference bytes"
