"""Render product records as the simplestreams catalog the real Incus client reads.

Rules checked against Incus 6.0.4 (see shared/reference/simplestreams-and-incus.md): version
keys start with `YYYYMMDD`; `aliases` is one comma-separated string; sizes are integers; the
metadata item carries `combined_disk-kvm-img_sha256`; each alias has exactly one product per
architecture. Extra fields (`signature`, `unified_*`, `talos_*`) are ignored by Incus.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from .images import IMAGES_KEY
from .records import ProductRecord
from .versions import TalosVersion


def _json(body: dict) -> bytes:
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def _preference(records: Iterable[ProductRecord], variant_order: list[str]):
    rank = {name: i for i, name in enumerate(variant_order)}

    def key(record: ProductRecord):
        return (TalosVersion.parse(record.version), -rank.get(record.variant, len(rank)))

    return key


def assign_aliases(records: list[ProductRecord], variant_order: list[str]) -> dict[str, list[str]]:
    """Alias names per product key; every alias has one owner per arch.

    `talos/<version>[/<variant>]`, `talos/vX.Y[/<variant>]` (newest stable patch of the minor)
    and `talos/latest[/<variant>]` (newest stable). Without a variant suffix the configured
    default variant wins, then the next configured one.
    """
    owners: dict[tuple[str, str], ProductRecord] = {}
    best = _preference(records, variant_order)

    def offer(alias: str, record: ProductRecord) -> None:
        current = owners.get((alias, record.arch))
        if current is None or best(record) > best(current):
            owners[(alias, record.arch)] = record

    for record in records:
        version = TalosVersion.parse(record.version)
        offer(f"talos/{record.version}/{record.variant}", record)
        same_version = [r for r in records if r.version == record.version and r.arch == record.arch]
        if max(same_version, key=best) is record:
            owners[(f"talos/{record.version}", record.arch)] = record
        if not version.is_prerelease:
            for line in (version.minor_line, "latest"):
                offer(f"talos/{line}/{record.variant}", record)
                offer(f"talos/{line}", record)

    aliases: dict[str, list[str]] = defaultdict(list)
    for (alias, _arch), record in owners.items():
        aliases[record.product_key].append(alias)
    return {key: sorted(names, key=_alias_order) for key, names in aliases.items()}


def _alias_order(alias: str) -> tuple[int, str]:
    return (alias.count("/"), alias)


def _item(file, **extra) -> dict:
    item = {"path": file.path, "sha256": file.sha256, "size": int(file.size), **extra}
    if file.signature:
        item["signature"] = file.signature
    return item


def render_product(record: ProductRecord, aliases: list[str]) -> dict:
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
