"""The simplestreams catalog, rebuilt from the product records in the store, and its check."""

import dagster as dg
import pandas as pd

from talos_pipeline.core.catalog import rebuild_catalog
from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.images import IMAGES_KEY
from talos_pipeline.core.records import ProductRecord
from talos_pipeline.core.simplestreams import CatalogFormatError, read_images
from talos_pipeline.core.stores import ObjectMissing

from ..failures import step_failure
from ..metadata import bullets, column, short, table
from ..resources import TalosImages, TalosStore
from .records import talos_image

PRODUCT_COLUMNS = [
    column("product"),
    column("serial"),
    column("fingerprint", description="first 12 hex digits"),
    column("disk_bytes", "int"),
    column("signing"),
    column("mode", description="mirror or proxy"),
]


def versions_table(records: list[ProductRecord]) -> dg.TableMetadataValue:
    """Products and disk bytes per version and arch: what is published at a glance."""
    frame = pd.DataFrame([{"version": r.version, "arch": r.arch, "bytes": r.disk.size} for r in records])
    summary = frame.pivot_table(index="version", columns="arch", values="bytes", aggfunc=["count", "sum"], fill_value=0)
    arches = sorted(frame["arch"].unique())
    columns = [column("version")]
    columns += [column(f"{arch} images", "int") for arch in arches]
    columns += [column(f"{arch} bytes", "int") for arch in arches]
    rows = [
        {
            "version": version,
            **{f"{arch} images": int(summary.at[version, ("count", arch)]) for arch in arches},
            **{f"{arch} bytes": int(summary.at[version, ("sum", arch)]) for arch in arches},
        }
        for version in summary.index
    ]
    return table(columns, rows)


@dg.asset(
    group_name="catalog",
    deps=[talos_image],
    kinds={"python", "json"},
    automation_condition=dg.AutomationCondition.eager(),
)
def talos_catalog(
    context: dg.AssetExecutionContext, talos_images: TalosImages, talos_store: TalosStore
) -> dg.MaterializeResult:
    """The simplestreams catalog (streams/v1/index.json + images.json), rebuilt from the product
    records actually in the store and written last."""
    store = talos_store.open()
    try:
        result = rebuild_catalog(store, [v.name for v in talos_images.variant_list()], log=context.log.info)
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    for problem in result.problems:
        context.log.warning(problem)
    records = sorted(result.records, key=lambda r: r.product_key)
    rows = [
        {
            "product": r.product_key,
            "serial": r.serial,
            "fingerprint": short(r.fingerprint),
            "disk_bytes": r.disk.size,
            "signing": r.signing,
            "mode": r.disk_mode,
        }
        for r in records
    ]
    return dg.MaterializeResult(
        metadata={
            "products": dg.MetadataValue.int(len(records)),
            "catalog": table(PRODUCT_COLUMNS, rows) if rows else "empty",
            "versions": versions_table(records) if records else "empty",
            "left_out": bullets(result.problems),
            "store": store.describe(),
        },
        data_version=dg.DataVersion(sha256_hex(result.images)),
    )


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
        metadata={"files_checked": dg.MetadataValue.int(checked), "problems": bullets(problems)},
    )
