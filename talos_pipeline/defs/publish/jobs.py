"""Jobs the CLI, the sensors and the UI launch."""

from typing import Any

import dagster as dg

from talos_pipeline.core.releases import ReleaseFacts

from .assets import ImageSelection, ReleaseInput, talos_disk_image, talos_metadata_tarball, talos_release
from .catalog import talos_catalog
from .records import talos_image
from .signatures import talos_signatures

per_image_assets = [talos_release, talos_metadata_tarball, talos_disk_image, talos_signatures, talos_image]
"""One partition's chain, in order: every one of them runs for one Talos version × arch."""


def publish_run_config(release: ReleaseFacts | None = None, variants: list[str] | None = None) -> dict[str, Any]:
    """`publish_images` config for one partition: the variants to build (all when empty) and the
    release's facts from the caller's releases listing, so `talos_release` asks GitHub nothing."""
    selection = ImageSelection(variants=variants or []).model_dump()
    ops = {asset.op.name: {"config": selection} for asset in per_image_assets}
    ops[talos_release.op.name] = {"config": ReleaseInput.of(release, variants).model_dump()}
    return {"ops": ops}


def variant_selection(names: list[str]) -> dict[str, Any]:
    """Run config of `publish_images` that builds the variants `names` (the assets' `ImageSelection`)."""
    return publish_run_config(None, names)


publish_images_job = dg.define_asset_job(
    "publish_images",
    selection=dg.AssetSelection.assets(*per_image_assets),
    description="Release facts, metadata tarballs, disks, signatures and product records of one Talos version × arch.",
)

sign_images_job = dg.define_asset_job(
    "sign_images",
    selection=dg.AssetSelection.assets(talos_signatures, talos_image),
    description=(
        "Re-sign one Talos version × arch from what is in the store (after a key rotation, or after "
        "turning signing on) and rewrite its product records; downloads nothing."
    ),
)

publish_catalog_job = dg.define_asset_job(
    "publish_catalog",
    selection=dg.AssetSelection.assets(talos_catalog),
    description="Rebuild the simplestreams catalog from the product records in the store.",
)
