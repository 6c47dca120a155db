"""The product records: written once every object and bundle is in the store, they make each
image eligible for the catalog."""

import dagster as dg

from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.publish import check_record, expected_metadata, load_disk_facts, load_release, write_record

from ..failures import step_failure
from ..metadata import bullets, column, short, table
from ..partitions import image_partitions
from ..resources import TalosImages, TalosSigning, TalosStore
from .assets import GROUP, ImageSelection, selected_images
from .signatures import talos_signatures

PUBLISHED_CHECK = "published_objects_match_record"

PRODUCT_COLUMNS = [
    column("variant"),
    column("product", description="simplestreams product key"),
    column("serial", description="version key: the release's publication time (UTC)"),
    column("fingerprint", description="Incus fingerprint, first 12 hex digits; full values in `fingerprints`"),
    column("disk_bytes", "int"),
    column("signing", description="sigstore, key or none"),
    column("record", description="object key of the product record"),
]


@dg.asset(
    partitions_def=image_partitions,
    group_name=GROUP,
    deps=[talos_signatures],
    kinds={"python"},
    check_specs=[
        dg.AssetCheckSpec(
            PUBLISHED_CHECK,
            asset="talos_image",
            blocking=True,
            description="Every object the product records name is in the store with the recorded size and hash.",
        )
    ],
)
def talos_image(
    context: dg.AssetExecutionContext,
    config: ImageSelection,
    talos_images: TalosImages,
    talos_store: TalosStore,
    talos_signing: TalosSigning,
) -> dg.MaterializeResult:
    """Writes each variant's product record (after checking its bundles are there when signing is
    on), which makes the image eligible for the catalog."""
    store = talos_store.open()
    records, problems = {}, []
    try:
        for image in selected_images(context, talos_images, config, store):
            release = load_release(store, image.version, image.arch)
            disk = load_disk_facts(store, image)
            record = write_record(store, talos_signing.mode, image, release, expected_metadata(image, release), disk)
            problems += [f"{image.label}: {p}" for p in check_record(store, record)]
            records[image.variant.name] = record
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    rows = [
        {
            "variant": variant,
            "product": r.product_key,
            "serial": r.serial,
            "fingerprint": short(r.fingerprint),
            "disk_bytes": r.disk.size,
            "signing": r.signing,
            "record": r.image.record_key,
        }
        for variant, r in records.items()
    ]
    return dg.MaterializeResult(
        metadata={
            "products": table(PRODUCT_COLUMNS, rows),
            "fingerprints": dg.MetadataValue.json({r.product_key: r.fingerprint for r in records.values()}),
            "signing": str(talos_signing.mode),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=PUBLISHED_CHECK,
                passed=not problems,
                metadata={"problems": bullets(problems)},
            )
        ],
        data_version=dg.DataVersion(sha256_hex("".join(r.fingerprint for r in records.values()).encode())),
    )
