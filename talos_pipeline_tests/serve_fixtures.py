"""Fixtures for `test_serve.py`: a real store published from the upstream simulator, without Dagster.

The store is built with the same core steps the Dagster assets call (`store_metadata_tarball`,
`hash_disk`, `publish_record`, `rebuild_catalog`) against the simulator's factory, so the served
bytes are real qcow2 images and the catalog is the one the pipeline writes.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from talos_pipeline.core.catalog import rebuild_catalog
from talos_pipeline.core.images import ImageRef
from talos_pipeline.core.publish import hash_disk, publish_record, store_metadata_tarball
from talos_pipeline.core.records import ProductRecord
from talos_pipeline.core.releases import ReleaseFacts
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import Variant

VERSIONS = ("v1.11.6", "v1.12.0")
ARCHES = ("amd64", "arm64")
VARIANTS = (Variant("nocloud", "nocloud"), Variant("metal", "metal"))
VARIANT_ORDER = [v.name for v in VARIANTS]


class NoSigner:
    """`TALOS_SIGNING=none`: nothing is signed, no bundles are written."""

    mode = "none"

    def sign_bytes(self, data: bytes) -> None:
        return None

    def sign_digest(self, sha256: str) -> None:
        return None


@dataclass
class PublishedStore:
    root: Path
    store: DirectoryStore
    mode: str
    records: dict[tuple[str, str, str], ProductRecord] = field(default_factory=dict)
    releases: dict[str, ReleaseFacts] = field(default_factory=dict)

    def record(self, version: str, arch: str, variant: str = "nocloud") -> ProductRecord:
        return self.records[(version, arch, variant)]


def publish_images(
    store: DirectoryStore,
    sim,
    *,
    versions=VERSIONS,
    arches=ARCHES,
    variants=VARIANTS,
    mode: str = "mirror",
    rebuild: bool = True,
) -> dict[tuple[str, str, str], ProductRecord]:
    factory = FactoryClient(sim.factory_url)
    releases = ReleasesClient(sim.releases_url)
    records = {}
    for version in versions:
        facts = releases.release(version)
        for arch in arches:
            for variant in variants:
                image = ImageRef(version, arch, variant)
                metadata = store_metadata_tarball(store, image, facts)
                disk = hash_disk(store, factory, image, facts, metadata, mode=mode)
                records[(version, arch, variant.name)] = publish_record(store, NoSigner(), image, facts, metadata, disk)
    if rebuild:
        rebuild_catalog(store, VARIANT_ORDER)
    return records


def build_store(root: Path, sim, *, mode: str = "mirror", **kwargs) -> PublishedStore:
    store = DirectoryStore(root)
    store.check_ready()
    published = PublishedStore(root=root, store=store, mode=mode)
    published.records = publish_images(store, sim, mode=mode, **kwargs)
    releases = ReleasesClient(sim.releases_url)
    published.releases = {v: releases.release(v) for v in kwargs.get("versions", VERSIONS)}
    return published


# --------------------------------------------------------------------------- the serve command as a process
SERVE_COMMAND = (sys.executable, "-m", "serve")


def raise_fd_limit() -> None:
    """Tests that hold a thousand sockets need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class ServeProcess:
    """`python -m serve` (or another front) on 127.0.0.1 with an ephemeral port, read back from its log."""

    proc: subprocess.Popen
    base: str
    log_path: Path
    cert: str | None

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *texts: str, timeout: float = 10) -> str:
        """The log once it holds every text (the server logs a response after sending it)."""
        deadline = time.monotonic() + timeout
        while not all(text in (log := self.log()) for text in texts):
            assert time.monotonic() < deadline, f"{texts} not in the log:\n{log}"
            time.sleep(0.05)
        return log

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = self.cert or True
        return session

    def get(self, path: str, **kwargs) -> requests.Response:
        with self.session() as session:
            return session.get(self.base + path, timeout=kwargs.pop("timeout", 10), **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        deadline = time.monotonic() + 10
        while (page := self.get("/metrics")).status_code != 200:  # e.g. 503 while a test holds every slot
            assert time.monotonic() < deadline, f"/metrics: HTTP {page.status_code}"
            time.sleep(0.1)
        for line in page.text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if _normalise(sample) == wanted:
                return float(value)
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def _normalise(sample: str) -> str:
    if "{" not in sample:
        return sample
    name, _, rest = sample.partition("{")
    labels = sorted(part for part in rest.rstrip("}").split(",") if part)
    return name + "{" + ",".join(labels) + "}"


def start_serve(
    store: Path | str,
    tmp_path: Path,
    *,
    tls: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    command: tuple[str, ...] = SERVE_COMMAND,
    timeout: float = 30.0,
) -> ServeProcess:
    """Start the serve command on the store; return once it answers /healthz."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "PROMETHEUS_", "DAGSTER_HOME"))}
    environ.update({"TALOS_STORE": str(store), **(env or {})})
    cmd = [*command, "--host", "127.0.0.1", "--port", "0", *args]
    if tls:
        cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    log_path = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*.log')))}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=environ, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(r"listening on (https?://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
        if match:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"serve did not start ({proc.poll()}):\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    running = ServeProcess(proc, match.group(1), log_path, tls[0] if tls else None)
    while True:
        try:
            if running.get("/healthz", timeout=2).status_code == 200:
                return running
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise AssertionError(f"serve did not answer /healthz:\n{running.log()}")
        time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
