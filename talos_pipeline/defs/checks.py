"""Checks on the published catalog itself."""

import dagster as dg

from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.simplestreams import CatalogFormatError, read_images
from talos_pipeline.core.stores import ObjectMissing

from .assets import talos_catalog
from .resources import TalosStore


@dg.asset_check(
    asset=talos_catalog, blocking=True, description="Every file images.json names is in the store with its size."
)
def catalog_files_exist(talos_store: TalosStore) -> dg.AssetCheckResult:
    store = talos_store.open()
    try:
        reading = read_images(store.read_bytes(IMAGES_KEY))
    except (ObjectMissing, CatalogFormatError) as exc:
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    problems, checked = list(reading.problems), 0
    for image in reading.images:
        items = [image.metadata] + ([] if image.proxied else [image.disk])
        for item in items:
            checked += 1
            info = store.stat(item.path)
            if info is None or info.size != item.size:
                problems.append(f"{image.product}: {item.path} missing or wrong size")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "files_checked": checked,
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )
