"""The product record: everything known about one published image, in one JSON object.

Records are written to the store after every object they name is stored, hashed and signed;
the catalog is rendered from records alone. A record is deterministic (no wall-clock time),
so republishing an unchanged image rewrites nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from .images import ImageRef
from .variants import Variant

RECORD_SCHEMA = 1


@dataclass(frozen=True)
class PublishedFile:
    path: str
    sha256: str
    size: int
    signature: str | None = None
    attestation: str | None = None
    """The provenance attestation `<path>.intoto.sigstore.json` (docs/provenance.md)."""

    def to_dict(self) -> dict[str, Any]:
        """Without an absent attestation: a record of an unsigned image keeps its earlier bytes."""
        body = asdict(self)
        if body["attestation"] is None:
            del body["attestation"]
        return body


@dataclass(frozen=True)
class ProductRecord:
    version: str
    arch: str
    variant: str
    platform: str
    schematic: str
    serial: str
    published_at: str
    prerelease: bool
    fingerprint: str
    metadata: PublishedFile
    disk: PublishedFile
    unified_sha256: str
    unified_size: int
    disk_mode: str
    upstream_path: str
    signing: str

    @cached_property
    def image(self) -> ImageRef:
        return ImageRef(self.version, self.arch, Variant(self.variant, self.platform, self.schematic))

    @property
    def product_key(self) -> str:
        return self.image.product_key

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA,
            **asdict(self),
            "metadata": self.metadata.to_dict(),
            "disk": self.disk.to_dict(),
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> ProductRecord:
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ProductRecord:
        body = dict(body)
        if body.pop("schema", None) != RECORD_SCHEMA:
            raise ValueError("unsupported product record schema")
        body["metadata"] = PublishedFile(**body["metadata"])
        body["disk"] = PublishedFile(**body["disk"])
        return cls(**body)

    def object_keys(self) -> list[str]:
        """Every store object the catalog will name for this image (the disk only when mirrored)."""
        keys = [self.metadata.path]
        if self.disk_mode == "mirror":
            keys.append(self.disk.path)
        keys += [f.signature for f in (self.metadata, self.disk) if f.signature]
        keys += [f.attestation for f in (self.metadata, self.disk) if f.attestation]
        return keys
