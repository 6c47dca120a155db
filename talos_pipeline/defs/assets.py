"""The per-image assets (one partition = one Talos version on one arch, every variant) and the catalog.

Each asset calls the domain core and returns the facts an operator looks for in the UI. They
hand data to each other through the store (`state/…`), never through an IO manager, so steps
can run anywhere that can reach the store.
"""

import dagster as dg
import pandas as pd
from pydantic import Field

from talos_pipeline.core.catalog import rebuild_catalog
from talos_pipeline.core.errors import PipelineError, UpstreamError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.images import ImageRef
from talos_pipeline.core.metadata import metadata_tarball
from talos_pipeline.core.publish import (
    check_record,
    discover_release,
    hash_disk,
    load_disk_facts,
    load_release,
    publish_record,
    save_release,
    store_metadata_tarball,
)
from talos_pipeline.core.records import PublishedFile
from talos_pipeline.core.variants import Variant, select_variants

from .partitions import image_partitions, version_and_arch
from .resources import TalosImages, TalosSigning, TalosStore, TalosUpstream

GROUP = "talos_images"
PUBLISHED_CHECK = "published_objects_match_record"


class ImageSelection(dg.Config):
    variants: list[str] = Field(
        default_factory=list, description="Variant names to build (empty: every configured variant)."
    )


def _failure(context: dg.AssetExecutionContext, exc: PipelineError) -> dg.Failure:
    """Transient upstream trouble may be retried by the RetryPolicy; anything else is final."""
    transient = isinstance(exc, UpstreamError) and getattr(exc, "transient", False)
    context.log.error(str(exc))
    return dg.Failure(description=str(exc), allow_retries=transient)


def _images(context, images: TalosImages, config: ImageSelection) -> list[ImageRef]:
    version, arch = version_and_arch(context)
    variants: list[Variant] = select_variants(images.variant_list(), config.variants)
    return [ImageRef(version, arch, v) for v in variants]


def _table(rows: list[dict]) -> dg.MetadataValue:
    frame = pd.DataFrame(rows)
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), "string") for c in frame.columns])
    records = [dg.TableRecord({k: str(v) for k, v in row.items()}) for row in frame.to_dict("records")]
    return dg.MetadataValue.table(records=records, schema=schema)


@dg.asset(partitions_def=image_partitions, group_name=GROUP, kinds={"github", "python"})
def talos_release(
    context: dg.AssetExecutionContext, talos_upstream: TalosUpstream, talos_store: TalosStore
) -> dg.MaterializeResult:
    """Facts of one Talos release from GitHub, cross-checked with the Image Factory's /versions."""
    version, arch = version_and_arch(context)
    try:
        facts = discover_release(
            talos_upstream.releases(context.log.warning), talos_upstream.factory(context.log.warning), version
        )
        save_release(talos_store.open(), arch, facts)
    except PipelineError as exc:
        raise _failure(context, exc) from None
    context.log.info(f"Talos {version}: published {facts.published_at}, serial {facts.serial}")
    return dg.MaterializeResult(
        metadata={
            "version": facts.version,
            "published_at": facts.published_at,
            "serial": facts.serial,
            "prerelease": facts.prerelease,
            "release_notes": dg.MetadataValue.url(facts.html_url) if facts.html_url else "",
        },
        data_version=dg.DataVersion(f"{facts.version}@{facts.published_at}"),
    )


@dg.asset(partitions_def=image_partitions, group_name=GROUP, deps=[talos_release], kinds={"python"})
def talos_metadata_tarball(
    context: dg.AssetExecutionContext, config: ImageSelection, talos_images: TalosImages, talos_store: TalosStore
) -> dg.MaterializeResult:
    """The deterministic `incus.tar.xz` of every variant (metadata.yaml only, a few hundred bytes)."""
    store = talos_store.open()
    rows = []
    try:
        for image in _images(context, talos_images, config):
            release = load_release(store, image.version, image.arch)
            file = store_metadata_tarball(store, image, release)
            rows.append({"variant": image.variant.name, "path": file.path, "sha256": file.sha256, "size": file.size})
    except PipelineError as exc:
        raise _failure(context, exc) from None
    return dg.MaterializeResult(
        metadata={"tarballs": _table(rows), "count": len(rows)},
        data_version=dg.DataVersion(sha256_hex("".join(r["sha256"] for r in rows).encode())),
    )


def expected_metadata(image: ImageRef, release) -> PublishedFile:
    data = metadata_tarball(image, release)
    sha = sha256_hex(data)
    return PublishedFile(path=image.metadata_key(sha), sha256=sha, size=len(data))


@dg.asset(
    partitions_def=image_partitions,
    group_name=GROUP,
    deps=[talos_metadata_tarball],
    kinds={"python"},
    pool="talos_factory",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
)
def talos_disk_image(
    context: dg.AssetExecutionContext,
    config: ImageSelection,
    talos_images: TalosImages,
    talos_store: TalosStore,
    talos_upstream: TalosUpstream,
) -> dg.MaterializeResult:
    """Streams each qcow2 from the Image Factory once: sha256, size, Incus fingerprint, unified-tarball
    hash, and (mirror mode) the same bytes into the store."""
    store = talos_store.open()
    factory = talos_upstream.factory(context.log.warning)
    mode = talos_images.checked_disk_mode()
    rows, total_bytes, total_seconds = [], 0, 0.0
    try:
        for image in _images(context, talos_images, config):
            release = load_release(store, image.version, image.arch)
            context.log.info(f"{image.label}: downloading {factory.image_url(image)} ({mode} mode)")
            facts = hash_disk(
                store, factory, image, release, expected_metadata(image, release), mode=mode, log=context.log.info
            )
            context.log.info(
                f"{image.label}: {facts.size / 2**20:.1f} MiB in {facts.seconds:.1f}s "
                f"({facts.bytes_per_second / 1e6:.0f} MB/s), sha256 {facts.sha256}"
            )
            total_bytes += facts.size
            total_seconds += facts.seconds
            rows.append(
                {
                    "variant": image.variant.name,
                    "sha256": facts.sha256,
                    "size": facts.size,
                    "fingerprint": facts.fingerprint,
                    "MB/s": round(facts.bytes_per_second / 1e6, 1),
                    "path": facts.path,
                    "upstream": facts.upstream_url,
                }
            )
    except PipelineError as exc:
        raise _failure(context, exc) from None
    return dg.MaterializeResult(
        metadata={
            "disks": _table(rows),
            "bytes": dg.MetadataValue.int(total_bytes),
            "MB_per_second": dg.MetadataValue.float(
                round(total_bytes / total_seconds / 1e6, 1) if total_seconds else 0.0
            ),
            "disk_mode": str(mode),
        },
        data_version=dg.DataVersion(sha256_hex("".join(r["fingerprint"] for r in rows).encode())),
    )


@dg.asset(
    partitions_def=image_partitions,
    group_name=GROUP,
    deps=[talos_disk_image],
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
    """Signs each variant's files (when signing is on) and writes its product record, which makes
    the image eligible for the catalog."""
    store = talos_store.open()
    rows, problems = [], []
    try:
        signer = talos_signing.signer()
        for image in _images(context, talos_images, config):
            release = load_release(store, image.version, image.arch)
            disk = load_disk_facts(store, image)
            record = publish_record(store, signer, image, release, expected_metadata(image, release), disk)
            problems += [f"{image.label}: {p}" for p in check_record(store, record)]
            rows.append(
                {
                    "variant": image.variant.name,
                    "product": record.product_key,
                    "fingerprint": record.fingerprint,
                    "serial": record.serial,
                    "signing": record.signing,
                    "record": image.record_key,
                }
            )
    except PipelineError as exc:
        raise _failure(context, exc) from None
    return dg.MaterializeResult(
        metadata={"products": _table(rows), "signing": str(talos_signing.mode)},
        check_results=[
            dg.AssetCheckResult(
                check_name=PUBLISHED_CHECK,
                passed=not problems,
                metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
            )
        ],
        data_version=dg.DataVersion(sha256_hex("".join(r["fingerprint"] for r in rows).encode())),
    )


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
        raise _failure(context, exc) from None
    for problem in result.problems:
        context.log.warning(problem)
    rows = [
        {
            "product": r.product_key,
            "serial": r.serial,
            "fingerprint": r.fingerprint[:12],
            "disk MiB": round(r.disk.size / 2**20, 1),
            "signing": r.signing,
            "mode": r.disk_mode,
        }
        for r in sorted(result.records, key=lambda r: r.product_key)
    ]
    return dg.MaterializeResult(
        metadata={
            "products": dg.MetadataValue.int(len(result.records)),
            "catalog": _table(rows) if rows else "empty",
            "left_out": dg.MetadataValue.md("\n".join(f"- {p}" for p in result.problems) or "none"),
            "store": store.describe(),
        },
        data_version=dg.DataVersion(sha256_hex(result.images)),
    )


per_image_assets = [talos_release, talos_metadata_tarball, talos_disk_image, talos_image]
