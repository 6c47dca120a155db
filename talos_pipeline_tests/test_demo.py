"""The README's first quick-start command: `talos-pipeline demo`, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from talos_pipeline_tests.fake_sigstore.fixtures import missing_tool

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "talos_pipeline.cli"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_HOME", "REQUESTS_CA_BUNDLE"))}
    env["INCUS_CONF"] = str(tmp_path / "incus-conf")
    return env


def test_demo_once_publishes_every_release_signed_and_verifiable(tmp_path):
    data = tmp_path / "demo"
    result = subprocess.run(
        [*CLI, "demo", "--once", "--data-dir", str(data), "--disk-size", "1MiB"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "catalog has 20 products" in result.stdout and "0 with problems" in result.stdout
    store = data / "store"
    images = json.loads((store / "streams/v1/images.json").read_text())
    assert len(images["products"]) == 5 * 2 * 2, "5 offered releases × 2 arches × 2 variants"
    assert {p["talos_signing"] for p in images["products"].values()} == {"key"}
    env = dict(_env(tmp_path), TALOS_STORE=str(store))
    verify = subprocess.run(
        [*CLI, "verify", "--key", str(data / "keys/talos-signing.pub")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    if not shutil.which("incus-simplestreams"):
        missing_tool("incus-simplestreams is not installed (apt-get install incus-extra): the peer tool's verify")
    check = subprocess.run(["incus-simplestreams", "verify"], cwd=store, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_demo_serves_over_tls_until_interrupted(tmp_path):
    data = tmp_path / "demo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [*CLI, "demo", "--data-dir", str(data), "--disk-size", "1MiB", "--port", str(port)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  incus image import"):
                break
        served = "".join(lines)
        assert "incus remote add talos-demo" in served, served
        url = f"https://127.0.0.1:{port}"
        assert f"serving {data / 'store'} at {url}" in served
        session = requests.Session()
        session.trust_env = False
        for _ in range(100):
            try:
                index = session.get(f"{url}/streams/v1/index.json", verify=str(data / "tls/server.crt"), timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert index.status_code == 200 and index.json()["index"]["images"]["products"]
        head = session.head(f"{url}/talos/latest/amd64", verify=str(data / "tls/server.crt"), timeout=5)
        assert head.headers["Incus-Image-URL"].startswith(url + "/")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode in (0, -signal.SIGINT, 130)
