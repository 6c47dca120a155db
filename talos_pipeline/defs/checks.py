"""Checks on the published catalog itself."""

import json

import dagster as dg

from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.store import ObjectMissing

from .assets import talos_catalog
from .resources import TalosStore


@dg.asset_check(
    asset=talos_catalog, blocking=True, description="Every file images.json names is in the store with its size."
)
def catalog_files_exist(talos_store: TalosStore) -> dg.AssetCheckResult:
    store = talos_store.open()
    try:
        images = json.loads(store.read_bytes(IMAGES_KEY))
    except ObjectMissing as exc:
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    problems, checked = [], 0
    for product_key, product in images["products"].items():
        for version in product["versions"].values():
            for item in version["items"].values():
                if "talos_upstream_path" in item:
                    continue
                checked += 1
                info = store.stat(item["path"])
                if info is None or info.size != item["size"]:
                    problems.append(f"{product_key}: {item['path']} missing or wrong size")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files_checked": checked,
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )
