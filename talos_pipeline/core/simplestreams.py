"""The simplestreams catalog the real Incus client reads: rendered from product records, and
read back (`read_images`) by `verify`, `prune`, the asset checks and `serve/`.

Rules checked against Incus 6.0.4 (see docs/incus-simplestreams.md): version
keys start with `YYYYMMDD`; `aliases` is one comma-separated string; sizes are integers; the
metadata item carries `combined_disk-kvm-img_sha256`; each alias has exactly one product per
architecture. Extra fields (`signature`, `attestation`, `unified_*`, `talos_*`) are ignored by Incus.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .errors import StoreError
from .images import IMAGES_KEY, INDEX_KEY
from .records import ProductRecord, PublishedFile
from .stores.base import check_key
from .variants import INCUS_ARCHITECTURE
from .versions import TalosVersion


def _json(body: dict[str, Any]) -> bytes:
    """Compact and key-sorted: deterministic, and encoded by the C encoder (an indented dump runs
    the pure-Python one, 4x slower at thousands of products)."""
    return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()


def assign_aliases(records: list[ProductRecord], variant_order: list[str]) -> dict[str, list[str]]:
    """Alias names per product key; every alias has one owner per arch.

    `talos/<version>[/<variant>]`, `talos/vX.Y[/<variant>]` (newest stable patch of the minor)
    and `talos/latest[/<variant>]` (newest stable). Without a variant suffix the configured
    default variant wins, then the next configured one (then the alphabetically first).
    One pass over the records: each offers itself for its aliases and the best offer wins.
    """
    rank = {name: i for i, name in enumerate(variant_order)}
    versions = {tag: TalosVersion.parse(tag) for tag in {record.version for record in records}}
    owners: dict[tuple[str, str], tuple[tuple[tuple[int, ...], int], ProductRecord]] = {}

    def offer(alias: str, record: ProductRecord, preference: tuple[tuple[int, ...], int]) -> None:
        current = owners.get((alias, record.arch))
        if (
            current is None
            or preference > current[0]
            or (preference == current[0] and record.variant < current[1].variant)
        ):
            owners[(alias, record.arch)] = (preference, record)

    for record in records:
        version = versions[record.version]
        preference = (version.sort_key(), -rank.get(record.variant, len(rank)))
        offer(f"talos/{record.version}/{record.variant}", record, preference)
        offer(f"talos/{record.version}", record, preference)
        if not version.is_prerelease:
            for line in (version.minor_line, "latest"):
                offer(f"talos/{line}/{record.variant}", record, preference)
                offer(f"talos/{line}", record, preference)

    aliases: dict[str, list[str]] = defaultdict(list)
    for (alias, _arch), (_preference, record) in owners.items():
        aliases[record.product_key].append(alias)
    return {key: sorted(names, key=_alias_order) for key, names in aliases.items()}


def _alias_order(alias: str) -> tuple[int, str]:
    return (alias.count("/"), alias)


def _item(file: PublishedFile, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"path": file.path, "sha256": file.sha256, "size": int(file.size), **extra}
    if file.signature:
        item["signature"] = file.signature
    if file.attestation:
        item["attestation"] = file.attestation
    return item


def render_product(record: ProductRecord, aliases: list[str]) -> dict[str, Any]:
    metadata = _item(record.metadata, ftype="incus.tar.xz", **{"combined_disk-kvm-img_sha256": record.fingerprint})
    disk = _item(
        record.disk, ftype="disk-kvm.img", unified_sha256=record.unified_sha256, unified_size=record.unified_size
    )
    if record.disk_mode == "proxy":
        disk["talos_upstream_path"] = record.upstream_path
    return {
        "aliases": ",".join(aliases),
        "arch": record.arch,
        "os": "Talos",
        "release": record.version,
        "release_title": record.version,
        "variant": record.variant,
        "requirements": {"secureboot": "false"},
        "talos_platform": record.platform,
        "talos_schematic": record.schematic,
        "talos_prerelease": record.prerelease,
        "talos_signing": record.signing,
        "talos_disk_mode": record.disk_mode,
        "versions": {record.serial: {"items": {"incus.tar.xz": metadata, "disk.qcow2": disk}}},
    }


def render_catalog(records: list[ProductRecord], variant_order: list[str]) -> tuple[bytes, bytes]:
    """(index.json, images.json) bytes; deterministic for the same records."""
    aliases = assign_aliases(records, variant_order)
    products = {r.product_key: render_product(r, aliases.get(r.product_key, [])) for r in records}
    images = {
        "content_id": "images",
        "datatype": "image-downloads",
        "format": "products:1.0",
        "products": products,
    }
    updated = max((r.published_at for r in records), default="1970-01-01T00:00:00Z")
    index = {
        "format": "index:1.0",
        "index": {
            "images": {
                "datatype": "image-downloads",
                "format": "products:1.0",
                "path": IMAGES_KEY,
                "products": sorted(products),
                "updated": updated,
            }
        },
    }
    return _json(index), _json(images)


# --------------------------------------------------------------------------- reading it back
METADATA_FTYPE = "incus.tar.xz"
DISK_FTYPE = "disk-kvm.img"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VARIANT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_PLATFORM_NAME = re.compile(r"^[a-z0-9]+$")
UPSTREAM_PATH = re.compile(r"^image/[0-9a-f]{64}/v[0-9][^/]*/[a-z0-9]+-(amd64|arm64)\.qcow2$")


class CatalogFormatError(ValueError):
    """A catalog document is not JSON, or not a simplestreams document at all."""


@dataclass(frozen=True)
class CatalogItem:
    """One file an image item names: its store key, sha256, size and (when signed) its bundle and
    its provenance attestation."""

    path: str
    sha256: str
    size: int
    signature: str | None
    attestation: str | None = None


@dataclass(frozen=True)
class CatalogImage:
    """One published image (a product at one version key) as images.json describes it."""

    product: str
    version: str
    arch: str
    variant: str
    serial: str
    aliases: tuple[str, ...]
    fingerprint: str
    metadata: CatalogItem
    disk: CatalogItem
    unified_sha256: str
    unified_size: int
    signing: str
    upstream_path: str | None
    """`talos_upstream_path`: the disk is not in the store (proxy mode)."""
    platform: str | None
    schematic: str | None
    disk_mode: str | None
    factory_path: str | None
    """Where the factory serves this disk (from the product's platform and schematic)."""

    @property
    def label(self) -> str:
        return f"Talos {self.version} {self.arch} ({self.variant})"

    @property
    def proxied(self) -> bool:
        return self.upstream_path is not None

    def store_keys(self) -> list[str]:
        """Every store object this image needs: the files (the disk unless proxied), bundles and
        attestations."""
        keys = [self.metadata.path] + ([] if self.proxied else [self.disk.path])
        keys += [item.signature for item in (self.metadata, self.disk) if item.signature]
        return keys + [item.attestation for item in (self.metadata, self.disk) if item.attestation]


@dataclass
class CatalogReading:
    """images.json read back: every well-formed image, and why the others were left out."""

    images: list[CatalogImage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    product_keys: set[str] = field(default_factory=set)
    """Every product the document names, readable or not."""


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogFormatError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise CatalogFormatError(f"{what} is not a JSON object")
    return body


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _hex(value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError(f"{what} is not a sha256: {value!r}")
    return value


def _key(value: object, what: str) -> str:
    try:
        return check_key(value)
    except StoreError:
        raise ValueError(f"{what} is not a plain store path: {value!r}") from None


def _read_item(items: dict[str, Any], ftype: str) -> tuple[dict[str, Any], CatalogItem]:
    item = next((i for i in items.values() if isinstance(i, dict) and i.get("ftype") == ftype), None)
    if item is None:
        raise ValueError(f"needs one {METADATA_FTYPE} and one {DISK_FTYPE} item")
    signature, attestation = item.get("signature"), item.get("attestation")
    return item, CatalogItem(
        path=_key(item.get("path"), f"{ftype} path"),
        sha256=_hex(item.get("sha256"), f"{ftype} sha256"),
        size=_int(item.get("size"), f"{ftype} size"),
        signature=None if signature is None else _key(signature, f"{ftype} signature"),
        attestation=None if attestation is None else _key(attestation, f"{ftype} attestation"),
    )


def _factory_path(product: dict[str, Any], version: str, arch: str, upstream: str | None) -> str | None:
    if upstream is not None:
        return upstream
    schematic, platform = product.get("talos_schematic"), product.get("talos_platform")
    if not isinstance(schematic, str) or not isinstance(platform, str) or not _PLATFORM_NAME.match(platform):
        return None
    candidate = f"image/{schematic}/{version}/{platform}-{arch}.qcow2"
    return candidate if UPSTREAM_PATH.match(candidate) else None


def _image(product_key: str, product: dict[str, Any], serial: str, items: object) -> CatalogImage:
    version, arch, variant = product.get("release"), product.get("arch"), product.get("variant")
    if not isinstance(version, str) or not TalosVersion.is_valid(version):
        raise ValueError(f"release {version!r} is not a Talos version tag")
    if arch not in INCUS_ARCHITECTURE:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(INCUS_ARCHITECTURE)}")
    if not isinstance(variant, str) or not _VARIANT_NAME.match(variant):
        raise ValueError(f"variant {variant!r} is not a variant name")
    if not isinstance(items, dict):
        raise ValueError("items is not an object")
    metadata_raw, metadata = _read_item(items, METADATA_FTYPE)
    disk_raw, disk = _read_item(items, DISK_FTYPE)
    upstream = disk_raw.get("talos_upstream_path")
    if upstream is not None and (not isinstance(upstream, str) or not UPSTREAM_PATH.match(upstream)):
        raise ValueError(f"talos_upstream_path {upstream!r} is not an Image Factory qcow2 path")
    aliases = product.get("aliases", "")
    return CatalogImage(
        product=product_key,
        version=version,
        arch=str(arch),
        variant=variant,
        serial=serial,
        aliases=tuple(a.strip() for a in aliases.split(",") if a.strip()) if isinstance(aliases, str) else (),
        fingerprint=_hex(metadata_raw.get("combined_disk-kvm-img_sha256"), "combined_disk-kvm-img_sha256"),
        metadata=metadata,
        disk=disk,
        unified_sha256=_hex(disk_raw.get("unified_sha256"), "unified_sha256"),
        unified_size=_int(disk_raw.get("unified_size"), "unified_size"),
        signing=str(product.get("talos_signing") or "none"),
        upstream_path=upstream,
        factory_path=_factory_path(product, version, str(arch), upstream),
        platform=_optional_str(product.get("talos_platform")),
        schematic=_optional_str(product.get("talos_schematic")),
        disk_mode=_optional_str(product.get("talos_disk_mode")),
    )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def read_images(data: bytes) -> CatalogReading:
    """Every image of images.json, oldest version key first per product; malformed products and
    versions are left out and named in `problems` (raises `CatalogFormatError` when the document
    itself is unusable)."""
    products = _json_object(data, IMAGES_KEY).get("products")
    if not isinstance(products, dict):
        raise CatalogFormatError(f"{IMAGES_KEY} has no `products` object")
    reading = CatalogReading(product_keys={str(key) for key in products})
    for product_key, product in products.items():
        versions = product.get("versions") if isinstance(product, dict) else None
        if not isinstance(versions, dict):
            reading.problems.append(f"product {product_key!r}: no versions")
            continue
        for serial in sorted(versions):
            try:
                reading.images.append(_image(product_key, product, serial, (versions[serial] or {}).get("items")))
            except (ValueError, AttributeError, TypeError) as exc:
                reading.problems.append(f"product {product_key!r} version {serial!r}: {exc}; left out")
    return reading


def read_index_products(data: bytes) -> set[str]:
    """The product keys index.json announces for images.json."""
    index = _json_object(data, INDEX_KEY).get("index")
    if not isinstance(index, dict):
        raise CatalogFormatError(f"{INDEX_KEY} has no `index` object")
    entry = index.get("images")
    products = entry.get("products") if isinstance(entry, dict) else None
    return {str(p) for p in products} if isinstance(products, list) else set()
