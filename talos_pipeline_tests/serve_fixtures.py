"""Fixtures for `test_serve.py`: a real store published from the upstream simulator, without Dagster.

The store is built with the same core steps the Dagster assets call (`store_metadata_tarball`,
`hash_disk`, `publish_record`, `rebuild_catalog`) against the simulator's factory, so the served
bytes are real qcow2 images and the catalog is the one the pipeline writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
