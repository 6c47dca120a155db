"""Schematics of the variants: their ids, the system extensions they ask for, and whether a Talos
version has them.

A variant names its schematic by id (`NAME=PLATFORM:ID`, a schematic the factory already knows)
or by file (`NAME=PLATFORM:@schematic.yaml`, registered here with `POST /schematics`; the factory
names it by the sha256 of its canonical form, so registering again is harmless). Either way the
extensions it asks for are read from the document (for an id, `GET /schematics/<id>`) and checked
against the factory's `/version/<v>/extensions/official` for each version, so an extension a
version lacks fails that image with a message naming both, before any download. The factory's
rules behind this (canonical ids, per-version extension lists, renamed extensions still accepted
under their old names) are in docs/talos-upstream.md, "Schematics" and "Official extensions per
version".

`talos_release` saves the ids it registered for a partition (`state/<version>/<arch>/variants.json`)
so the later steps of that partition download and record exactly the schematic that was checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, InputError, PipelineError
from .stores import ObjectMissing, Store
from .upstream import FactoryClient
from .variants import Variant

# Old names the factory still accepts for renamed official extensions (docs/talos-upstream.md).
RENAMED = {
    "siderolabs/nvidia-container-toolkit": "siderolabs/nvidia-container-toolkit-lts",
    "siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",
    "siderolabs/nonfree-kmod-nvidia": "siderolabs/nonfree-kmod-nvidia-lts",
    "siderolabs/nvidia-fabricmanager": "siderolabs/nvidia-fabric-manager-lts",
}
MAX_SCHEMATIC_BYTES = 64 * 1024


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant with its schematic id, and the official extensions that schematic asks for."""

    variant: Variant
    extensions: tuple[str, ...] = ()

    def describe(self) -> str:
        v = self.variant
        where = f"{v.schematic_file}, schematic {v.schematic}" if v.schematic_file else f"schematic {v.schematic}"
        return f"variant {v.name!r} ({where})"


def schematic_extensions(document: str | bytes, where: str) -> tuple[str, ...]:
    """`customization.systemExtensions.officialExtensions` of a schematic document (YAML or JSON)."""
    try:
        body = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("customization", {}), dict):
        raise ConfigError(f"{where} is not a schematic: expected a mapping with `customization:`")
    extensions = _field(body, "customization", "systemExtensions", "officialExtensions") or []
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise ConfigError(f"{where}: customization.systemExtensions.officialExtensions must be a list of names")
    return tuple(extensions)


def _field(body: Any, *path: str) -> Any:
    for name in path:
        body = body.get(name) if isinstance(body, dict) else None
    return body


def read_schematic_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SCHEMATIC_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"schematic file {path} cannot be read ({exc.strerror}); fix TALOS_VARIANTS") from None
    if len(data) > MAX_SCHEMATIC_BYTES:
        raise ConfigError(f"schematic file {path} is larger than {MAX_SCHEMATIC_BYTES} bytes: is it a schematic?")
    return data


def resolve_variant(factory: FactoryClient, variant: Variant) -> ResolvedVariant:
    """The variant's schematic id (registering a schematic file) and the extensions it asks for.
    The vanilla schematic asks for nothing and costs no request."""
    if variant.schematic_file is not None:
        data = read_schematic_file(variant.schematic_file)
        extensions = schematic_extensions(data, f"schematic file {variant.schematic_file}")
        try:
            schematic_id = factory.register_schematic(data)
        except InputError as exc:
            raise ConfigError(f"variant {variant.name!r} ({variant.schematic_file}): {exc}") from None
        return ResolvedVariant(variant.with_schematic(schematic_id), extensions)
    if variant.is_vanilla:
        return ResolvedVariant(variant)
    document = factory.schematic(variant.schematic)
    return ResolvedVariant(variant, schematic_extensions(document, f"schematic {variant.schematic}"))


def unavailable_extensions(requested: Iterable[str], offered: Iterable[str]) -> list[str]:
    """The requested extensions not in `offered` (an old name counts as its new one)."""
    names = set(offered)
    return [name for name in requested if name not in names and RENAMED.get(name) not in names]


@dataclass
class VariantResolver:
    """Resolves each variant once and reads each version's extension list once: one per CLI run,
    one per partition run."""

    factory: FactoryClient
    _resolved: dict[str, ResolvedVariant] = field(default_factory=dict)
    _offered: dict[str, list[str]] = field(default_factory=dict)

    def resolve(self, variant: Variant) -> ResolvedVariant:
        if variant.name not in self._resolved:
            self._resolved[variant.name] = resolve_variant(self.factory, variant)
        return self._resolved[variant.name]

    def offered(self, version: str) -> list[str]:
        if version not in self._offered:
            self._offered[version] = [e.name for e in self.factory.official_extensions(version)]
        return self._offered[version]

    def for_version(self, variants: Iterable[Variant], version: str) -> list[ResolvedVariant]:
        """Every variant resolved and checked for `version`; one error naming every extension the
        version lacks, per variant, before anything is downloaded."""
        resolved = [self.resolve(variant) for variant in variants]
        problems = []
        for item in resolved:
            if not item.extensions:
                continue
            missing = unavailable_extensions(item.extensions, self.offered(version))
            if missing:
                names = ", ".join(f'"{name}"' for name in missing)
                problems.append(
                    f"{item.describe()} asks for official extension {names}, which the Image Factory does not "
                    f"offer for Talos {version}"
                )
        if problems:
            raise InputError(
                "; ".join(problems) + ". Publish that variant only for versions that have the extension "
                "(--variant, TALOS_MIN_VERSION), or take the extension out of the schematic"
            )
        return resolved


def schematic_facts_key(schematic_id: str) -> str:
    """Where the extensions of a schematic are kept for readers that must not ask the factory
    (`serve/`'s page). Keyed by id, which is a content hash: written once, never changed."""
    return f"state/schematics/{schematic_id}.json"


def save_schematic_facts(store: Store, schematic_id: str, extensions: Iterable[str]) -> None:
    body = {"id": schematic_id, "extensions": sorted(set(extensions))}
    store.put_bytes(schematic_facts_key(schematic_id), (json.dumps(body, sort_keys=True) + "\n").encode())


def read_schematic_extensions(store: Store, schematic_id: str) -> tuple[str, ...] | None:
    """The extensions saved for `schematic_id` (None: nothing saved, or unreadable)."""
    try:
        body = json.loads(store.read_bytes(schematic_facts_key(schematic_id)))
        return tuple(str(name) for name in body["extensions"])
    except (ObjectMissing, ValueError, KeyError, TypeError):
        return None


def variants_state_key(version: str, arch: str) -> str:
    return f"state/{version}/{arch}/variants.json"


def save_variant_ids(store: Store, version: str, arch: str, resolved: Iterable[ResolvedVariant]) -> None:
    """Remember the schematic ids of this partition's file variants (others keep theirs), and the
    extensions of every custom schematic."""
    resolved = list(resolved)
    for item in resolved:
        if not item.variant.is_vanilla:
            save_schematic_facts(store, item.variant.schematic, item.extensions)
    registered = {r.variant.name: r.variant.schematic for r in resolved if r.variant.schematic_file is not None}
    if not registered:
        return
    ids = {**_variant_ids(store, version, arch), **registered}
    store.put_bytes(variants_state_key(version, arch), (json.dumps(ids, indent=2, sort_keys=True) + "\n").encode())


def _variant_ids(store: Store, version: str, arch: str) -> dict[str, str]:
    try:
        body = json.loads(store.read_bytes(variants_state_key(version, arch)))
    except ObjectMissing:
        return {}
    return {str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {}


def registered_variants(store: Store, version: str, arch: str, variants: list[Variant]) -> list[Variant]:
    """`variants` with the schematic ids `talos_release` registered for this partition."""
    if all(v.schematic_file is None for v in variants):
        return variants
    ids = _variant_ids(store, version, arch)
    registered = []
    for variant in variants:
        if variant.schematic_file is not None:
            if variant.name not in ids:
                raise PipelineError(
                    f"Talos {version} {arch}: the schematic of variant {variant.name!r} ({variant.schematic_file}) "
                    "is not registered for this partition; materialize talos_release for it first"
                )
            variant = variant.with_schematic(ids[variant.name])
        registered.append(variant)
    return registered
