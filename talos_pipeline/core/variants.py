"""Variants: which Talos platform and Image Factory schematic an image is built from.

`TALOS_VARIANTS` is a comma-separated list; the first entry is the default variant (the one
`talos/<version>` points at). Each entry is either a known platform name (`nocloud`, `metal`,
built from the vanilla schematic), `NAME=PLATFORM:SCHEMATIC_ID` for a schematic the factory
already has, e.g. `qga=nocloud:<64 hex chars from POST /schematics>`, or
`NAME=PLATFORM:@path/to/schematic.yaml` for a schematic document the pipeline registers with the
factory itself (its id is known only then: see `core/schematics.py`). A relative path is taken
from the working directory of the process that reads the setting; deployments use absolute paths.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

VANILLA_SCHEMATIC = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
PLATFORMS = ("nocloud", "metal")
ARCHES = ("amd64", "arm64")
INCUS_ARCHITECTURE = {"amd64": "x86_64", "arm64": "aarch64"}

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_SCHEMATIC = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Variant:
    name: str
    platform: str
    schematic: str = VANILLA_SCHEMATIC
    """The factory's schematic id; "" for a `schematic_file` variant not registered yet."""
    schematic_file: str | None = dataclasses.field(default=None, compare=False)
    """`@path` variants: the schematic YAML the factory registers (absolute path)."""

    @property
    def is_vanilla(self) -> bool:
        return self.schematic == VANILLA_SCHEMATIC and self.schematic_file is None

    def spec(self) -> str:
        """The `TALOS_VARIANTS` entry that reproduces this variant."""
        if self.schematic_file is not None:
            return f"{self.name}={self.platform}:@{self.schematic_file}"
        if self.is_vanilla and self.name == self.platform:
            return self.name
        return f"{self.name}={self.platform}:{self.schematic}"

    def with_schematic(self, schematic_id: str) -> Variant:
        """This variant with the id the factory gave its schematic."""
        return dataclasses.replace(self, schematic=schematic_id)


def parse_variant(entry: str) -> Variant:
    entry = entry.strip()
    name, _, rest = entry.partition("=")
    if not _NAME.match(name):
        raise ConfigError(
            f"variant {entry!r}: the name must be lowercase letters, digits and '-' "
            f"(for example 'nocloud', 'metal' or 'qga=nocloud:<schematic id>')"
        )
    if not rest:
        if name not in PLATFORMS:
            raise ConfigError(
                f"unknown variant {name!r}: use one of {', '.join(PLATFORMS)}, or define a custom "
                f"one as NAME=PLATFORM:SCHEMATIC_ID (e.g. qga=nocloud:<id from POST /schematics>)"
            )
        return Variant(name=name, platform=name)
    platform, _, schematic = rest.partition(":")
    if platform not in PLATFORMS:
        raise ConfigError(f"variant {entry!r}: unknown platform {platform!r}; use one of {', '.join(PLATFORMS)}")
    if schematic.startswith("@"):
        path = schematic[1:].strip()
        if not path:
            raise ConfigError(
                f"variant {entry!r}: name the schematic file after '@', e.g. {name}={platform}:@storage.yaml"
            )
        return Variant(
            name=name, platform=platform, schematic="", schematic_file=str(Path(path).expanduser().resolve())
        )
    schematic = schematic or VANILLA_SCHEMATIC
    if not _SCHEMATIC.match(schematic):
        raise ConfigError(
            f"variant {entry!r}: schematic id {schematic!r} is not 64 lowercase hex characters; "
            "use the id returned by the Image Factory's POST /schematics, or @path/to/schematic.yaml"
        )
    return Variant(name=name, platform=platform, schematic=schematic)


def parse_variants(value: str | list[str]) -> list[Variant]:
    """Parse `TALOS_VARIANTS`; the first variant is the default one."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    variants = [parse_variant(e) for e in entries if e.strip()]
    if not variants:
        raise ConfigError("TALOS_VARIANTS is empty: name at least one variant, e.g. 'nocloud,metal'")
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"TALOS_VARIANTS names {', '.join(duplicates)} more than once")
    return variants


def select_variants(configured: list[Variant], names: list[str] | None) -> list[Variant]:
    """The configured variants named in `names` (all when None), in configured order."""
    if not names:
        return configured
    known = {v.name: v for v in configured}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown variant {', '.join(map(repr, unknown))}: configured variants are "
            f"{', '.join(known)} (set TALOS_VARIANTS to add one)"
        )
    return [v for v in configured if v.name in names]


def parse_arches(value: str | list[str]) -> list[str]:
    entries = value.split(",") if isinstance(value, str) else list(value)
    arches = [a.strip() for a in entries if a.strip()]
    unknown = [a for a in arches if a not in ARCHES]
    if unknown:
        raise ConfigError(f"unknown architecture {', '.join(map(repr, unknown))}: use {' or '.join(ARCHES)}")
    if not arches:
        raise ConfigError("TALOS_ARCHES is empty: use amd64, arm64 or both")
    return list(dict.fromkeys(arches))
