"""What identifies one published image, and where its objects live in the store.

The store layout is itself a static simplestreams tree (any HTTPS file server can serve it):

    streams/v1/index.json, streams/v1/images.json      the catalog (written last)
    images/<version>/<arch>/<variant>/incus-<sha256>.tar.xz[.sigstore.json]
    images/<version>/<arch>/<variant>/disk-<sha256>.qcow2[.sigstore.json]
    records/<version>/<arch>/<variant>.json             one product record per published image
    state/<version>/<arch>/...                          facts handed between pipeline steps

Object names carry their own sha256, so a path never changes content: a rebuilt image with
other bytes gets new paths, and the old ones stay readable for clients with a cached index.
"""

from __future__ import annotations

from dataclasses import dataclass

from .variants import INCUS_ARCHITECTURE, Variant
from .versions import TalosVersion

INDEX_KEY = "streams/v1/index.json"
IMAGES_KEY = "streams/v1/images.json"
RECORDS_PREFIX = "records/"


@dataclass(frozen=True)
class ImageRef:
    version: str
    arch: str
    variant: Variant

    def __post_init__(self) -> None:
        TalosVersion.parse(self.version)
        if self.arch not in INCUS_ARCHITECTURE:
            raise ValueError(f"unknown arch {self.arch!r}")

    @property
    def product_key(self) -> str:
        return f"talos:{self.version}:{self.arch}:{self.variant.name}"

    @property
    def label(self) -> str:
        """How logs and errors name this image."""
        return f"Talos {self.version} {self.arch} ({self.variant.name})"

    @property
    def prefix(self) -> str:
        return f"images/{self.version}/{self.arch}/{self.variant.name}/"

    def metadata_key(self, sha256: str) -> str:
        return f"{self.prefix}incus-{sha256}.tar.xz"

    def disk_key(self, sha256: str) -> str:
        return f"{self.prefix}disk-{sha256}.qcow2"

    @property
    def record_key(self) -> str:
        return f"{RECORDS_PREFIX}{self.version}/{self.arch}/{self.variant.name}.json"

    @property
    def state_key(self) -> str:
        """Where the disk step leaves its facts for the publication step."""
        return f"state/{self.version}/{self.arch}/{self.variant.name}.disk.json"

    def factory_path(self) -> str:
        return f"image/{self.variant.schematic}/{self.version}/{self.variant.platform}-{self.arch}.qcow2"


def release_state_key(version: str, arch: str) -> str:
    return f"state/{version}/{arch}/release.json"
