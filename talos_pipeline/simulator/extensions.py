"""The official system extensions the simulated factory offers per Talos version.

What the real endpoint answers and how the factory refuses an image whose schematic asks for an
extension the version lacks is in docs/talos-upstream.md ("Official extensions per version").
The catalog below is a plausible subset, not a copy of the real one: names are real, image tags,
digests, sizes and which version added what are made up, so that tests can meet an extension that
only newer versions have (the NVIDIA ``-production`` ones appear with v1.12.0 here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .releases import parse_semver, semver_key

__all__ = ["CATALOG", "OfficialExtension", "extension_bytes", "missing_extensions", "offered_extensions"]

MIB = 1024 * 1024
REGISTRY = "ghcr.io"
AUTHOR = "Sidero Labs"
# Old names the factory still accepts for renamed extensions.
ALIASES = {
    "siderolabs/nvidia-container-toolkit": "siderolabs/nvidia-container-toolkit-lts",
    "siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",
    "siderolabs/nonfree-kmod-nvidia": "siderolabs/nonfree-kmod-nvidia-lts",
    "siderolabs/nvidia-fabricmanager": "siderolabs/nvidia-fabric-manager-lts",
}


@dataclass(frozen=True)
class OfficialExtension:
    name: str  # repository path, e.g. siderolabs/iscsi-tools
    tag: str  # image tag; "{talos}" stands for the Talos version (kernel modules are rebuilt per release)
    size: int  # bytes it adds to a disk image
    description: str
    since: str = "v1.2.0"  # first Talos version that offers it

    def ref(self, version: str) -> str:
        return f"{REGISTRY}/{self.name}:{self.tag.replace('{talos}', version)}"

    def offered_for(self, version: str) -> bool:
        return semver_key(version) >= semver_key(self.since)

    def as_json(self, version: str) -> dict[str, Any]:
        ref = self.ref(version)
        return {
            "name": self.name,
            "ref": ref,
            "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
            "author": AUTHOR,
            "description": self.description,
        }


CATALOG: tuple[OfficialExtension, ...] = (
    OfficialExtension("siderolabs/amd-ucode", "20250708", 2 * MIB, "AMD CPU microcode updates."),
    OfficialExtension("siderolabs/drbd", "9.2.14-{talos}", 3 * MIB, "DRBD kernel module for replicated block devices."),
    OfficialExtension("siderolabs/intel-ucode", "20250512", 9 * MIB, "Intel CPU microcode updates."),
    OfficialExtension("siderolabs/iscsi-tools", "v0.2.0", 3 * MIB, "open-iscsi tools and the iscsid service."),
    OfficialExtension(
        "siderolabs/nonfree-kmod-nvidia-lts",
        "570.172.08-{talos}",
        58 * MIB,
        "Proprietary NVIDIA GPU kernel modules (LTS).",
    ),
    OfficialExtension(
        "siderolabs/nvidia-container-toolkit-lts", "570.172.08-v1.17.8", 24 * MIB, "NVIDIA container toolkit (LTS)."
    ),
    OfficialExtension(
        "siderolabs/nvidia-container-toolkit-production",
        "575.64.05-v1.17.8",
        24 * MIB,
        "NVIDIA container toolkit (production branch).",
        since="v1.12.0",
    ),
    OfficialExtension(
        "siderolabs/nvidia-fabric-manager-lts", "570.172.08", 12 * MIB, "NVIDIA fabric manager for NVSwitch systems."
    ),
    OfficialExtension(
        "siderolabs/nvidia-open-gpu-kernel-modules-lts",
        "570.172.08-{talos}",
        41 * MIB,
        "Open NVIDIA GPU kernel modules (LTS).",
    ),
    OfficialExtension(
        "siderolabs/nvidia-open-gpu-kernel-modules-production",
        "575.64.05-{talos}",
        43 * MIB,
        "Open NVIDIA GPU kernel modules (production branch).",
        since="v1.12.0",
    ),
    OfficialExtension("siderolabs/qemu-guest-agent", "10.0.2", 4 * MIB, "QEMU guest agent for VMs."),
    OfficialExtension("siderolabs/tailscale", "1.86.2", 31 * MIB, "Tailscale mesh VPN client and daemon."),
    OfficialExtension("siderolabs/util-linux-tools", "2.41.1", 1 * MIB, "util-linux tools (fstrim and others)."),
    OfficialExtension("siderolabs/zfs", "2.3.3-{talos}", 11 * MIB, "OpenZFS kernel module and tools."),
)
_BY_NAME = {extension.name: extension for extension in CATALOG}


def offered_extensions(version: str) -> list[OfficialExtension]:
    """The catalog for one Talos version (``vX.Y.Z``), by name."""
    if parse_semver(version) is None:
        raise ValueError(f"{version!r} is not a Talos version")
    return [extension for extension in CATALOG if extension.offered_for(version)]


def _resolve(name: str, version: str) -> OfficialExtension | None:
    for candidate in (name, ALIASES.get(name)):
        extension = _BY_NAME.get(candidate) if candidate else None
        if extension is not None and extension.offered_for(version):
            return extension
    return None


def missing_extensions(names: Iterable[str], version: str) -> list[str]:
    """The requested extensions ``version`` does not offer (old names of renamed ones count as offered)."""
    return [name for name in names if _resolve(name, version) is None]


def extension_bytes(names: Iterable[str], version: str) -> int:
    """How much the offered ones among ``names`` add to an image."""
    return sum(extension.size for name in names if (extension := _resolve(name, version)) is not None)
