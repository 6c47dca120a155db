"""Incus image metadata: metadata.yaml, the split-image `incus.tar.xz`, the unified tarball.

Everything here is deterministic: the same image facts give byte-identical output, so a
rebuild publishes the same fingerprint. Fixed tar header fields (mtime from the release date,
uid/gid 0, no user names) and a fixed xz preset make that so. What Incus requires of both tarballs:
docs/incus-simplestreams.md.
"""

from __future__ import annotations

import io
import lzma
import tarfile
from dataclasses import dataclass

from .images import ImageRef
from .releases import ReleaseFacts
from .variants import INCUS_ARCHITECTURE
from .versions import parse_timestamp

BLOCK = 512
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]


def metadata_yaml(image: ImageRef, release: ReleaseFacts) -> bytes:
    """metadata.yaml for both tarballs; Incus needs `architecture` and a non-zero `creation_date`."""
    serial = release.serial
    created = int(parse_timestamp(release.published_at).timestamp())
    description = f"Talos {image.version} {image.arch} ({image.variant.name}) ({serial})"
    lines = [
        f"architecture: {INCUS_ARCHITECTURE[image.arch]}",
        f"creation_date: {created}",
        "properties:",
        f"  architecture: {image.arch}",
        "  os: Talos",
        f"  release: {image.version}",
        f"  variant: {image.variant.name}",
        f'  serial: "{serial}"',
        f'  description: "{description}"',
        '  requirements.secureboot: "false"',
        "templates: {}",
    ]
    return ("\n".join(lines) + "\n").encode()


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def metadata_tarball(image: ImageRef, release: ReleaseFacts) -> bytes:
    """The split image's `incus.tar.xz` (a few hundred bytes, so built in memory)."""
    yaml = metadata_yaml(image, release)
    mtime = int(parse_timestamp(release.published_at).timestamp())
    tar = _tar_header("metadata.yaml", len(yaml), mtime) + yaml + _padding(len(yaml)) + b"\0" * (2 * BLOCK)
    return lzma.compress(tar, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=_XZ_FILTERS)


@dataclass(frozen=True)
class UnifiedLayout:
    """A plain tar of `metadata.yaml` + `rootfs.img` (the qcow2), for Incus's direct URL import.

    Header, disk bytes and trailer are fixed once the disk size is known, so its sha256 can be
    computed in the same pass that hashes the disk, and `serve/` can stream it without storing it.
    """

    prefix: bytes
    disk_size: int

    @property
    def suffix(self) -> bytes:
        return _padding(self.disk_size) + b"\0" * (2 * BLOCK)

    @property
    def size(self) -> int:
        return len(self.prefix) + self.disk_size + len(self.suffix)


def unified_layout(image: ImageRef, release: ReleaseFacts, disk_size: int) -> UnifiedLayout:
    mtime = int(parse_timestamp(release.published_at).timestamp())
    return layout_for(metadata_yaml(image, release), mtime, disk_size)


def layout_for(yaml: bytes, mtime: int, disk_size: int) -> UnifiedLayout:
    prefix = (
        _tar_header("metadata.yaml", len(yaml), mtime)
        + yaml
        + _padding(len(yaml))
        + _tar_header("rootfs.img", disk_size, mtime)
    )
    return UnifiedLayout(prefix=prefix, disk_size=disk_size)


def read_metadata_yaml(tarball: bytes) -> tuple[bytes, int]:
    """metadata.yaml and its mtime from an `incus.tar.xz` (to rebuild the unified layout)."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:xz") as tar:
        member = tar.getmember("metadata.yaml")
        content = tar.extractfile(member)
        if content is None:
            raise ValueError(f"metadata.yaml in the metadata tarball is a {member.type!r} entry, not a regular file")
        return content.read(), int(member.mtime)
