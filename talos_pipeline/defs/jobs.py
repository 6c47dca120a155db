"""Jobs the CLI, the sensor and the UI launch."""

from __future__ import annotations

import dagster as dg

from .assets import per_image_assets, talos_catalog

publish_images_job = dg.define_asset_job(
    "publish_images",
    selection=dg.AssetSelection.assets(*per_image_assets),
    description="Release facts, metadata tarballs, disks and product records of one Talos version × arch.",
)

publish_catalog_job = dg.define_asset_job(
    "publish_catalog",
    selection=dg.AssetSelection.assets(talos_catalog),
    description="Rebuild the simplestreams catalog from the product records in the store.",
)
