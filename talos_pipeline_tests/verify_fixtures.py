"""What the verification tests share: `talos-pipeline verify` as a subprocess, and an attacker
who can write the bucket (rewrite a file and every catalog claim about it, swap bundles).

The forgeries go through the `Store` API, so they work on directory and S3 stores alike, and
they keep every hash check passing (size, sha256, the Incus fingerprint and the unified-tarball
hash are recomputed for the forged bytes): only a signature, or an attestation, can catch them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from talos_pipeline.core.hashing import ImageDigester
from talos_pipeline.core.metadata import layout_for, read_metadata_yaml
from talos_pipeline.core.stores import Store

CLI = [sys.executable, "-m", "talos_pipeline.cli"]
IMAGES = "streams/v1/images.json"


def talos_pipeline(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as users run it, with the test's environment (TALOS_STORE, trust config…)."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@dataclass
class CatalogFile:
    """One item of images.json, and where it sits in the document."""

    product: str
    serial: str
    name: str  # the item's key: incus.tar.xz or disk.qcow2
    item: dict

    @property
    def path(self) -> str:
        return self.item["path"]


def catalog(store: Store) -> dict:
    return json.loads(store.read_bytes(IMAGES))


def catalog_files(store: Store) -> list[CatalogFile]:
    found = []
    for product, body in catalog(store)["products"].items():
        for serial, version in body["versions"].items():
            for name, item in version["items"].items():
                found.append(CatalogFile(product, serial, name, item))
    return found


def disk_of(store: Store, product: str) -> CatalogFile:
    return next(f for f in catalog_files(store) if f.product == product and f.name == "disk.qcow2")


def edit_catalog(store: Store, product: str, edit: Callable[[dict], None]) -> None:
    """Rewrite images.json with `edit` applied to the product's (only) version."""
    images = catalog(store)
    (version,) = images["products"][product]["versions"].values()
    edit(version["items"])
    store.put_bytes(IMAGES, (json.dumps(images, sort_keys=True, separators=(",", ":")) + "\n").encode())


def forge_disk(store: Store, product: str) -> str:
    """Flip one byte of the product's disk and make every hash claim in the catalog match the
    forged bytes (sha256, fingerprint, unified-tarball sha256); returns the forged sha256."""
    disk = disk_of(store, product)
    data = bytearray(store.read_bytes(disk.path))
    data[len(data) // 2] ^= 0xFF
    forged = bytes(data)
    store.put_bytes(disk.path, forged)

    def edit(items: dict) -> None:
        tarball = store.read_bytes(items["incus.tar.xz"]["path"])
        yaml, mtime = read_metadata_yaml(tarball)
        layout = layout_for(yaml, mtime, len(forged))
        digester = ImageDigester(tarball, layout.prefix, lambda size: layout.suffix)
        digester.update(forged)
        digests = digester.finish()
        items["disk.qcow2"].update(sha256=digests.sha256, size=len(forged), unified_sha256=digests.unified_sha256)
        items["incus.tar.xz"]["combined_disk-kvm-img_sha256"] = digests.fingerprint
        assert digests.fingerprint == hashlib.sha256(tarball + forged).hexdigest()

    edit_catalog(store, product, edit)
    return hashlib.sha256(forged).hexdigest()


def strip_bundle(store: Store, product: str, field: str = "signature") -> str:
    """Delete the disk's bundle (`signature`) or attestation and its catalog field; returns the disk path."""
    disk = disk_of(store, product)
    store.delete(disk.item[field])

    def edit(items: dict) -> None:
        del items["disk.qcow2"][field]

    edit_catalog(store, product, edit)
    return disk.path
