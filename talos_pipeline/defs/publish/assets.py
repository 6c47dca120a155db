"""The first per-image steps: release facts, metadata tarballs, and the one pass over each disk.

One partition = one Talos version on one arch, every configured variant. The assets hand data
to each other through the store (`state/…`), never through an IO manager, so steps can run
anywhere that can reach the store.
"""

import dagster as dg
from pydantic import Field

from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.images import ImageRef
from talos_pipeline.core.preflight import check_store_writable
from talos_pipeline.core.publish import (
    expected_metadata,
    hash_disk,
    load_release,
    offered_by_factory,
    save_release,
    store_metadata_tarball,
)
from talos_pipeline.core.releases import ReleaseFacts
from talos_pipeline.core.schematics import VariantResolver, registered_variants, save_variant_ids
from talos_pipeline.core.stores import Store
from talos_pipeline.core.versions import parse_timestamp

from ..failures import step_failure
from ..metadata import column, links, short, table
from ..partitions import image_partitions, version_and_arch
from ..resources import TalosImages, TalosSigning, TalosStore, TalosUpstream

GROUP = "talos_images"


class ImageSelection(dg.Config):
    variants: list[str] = Field(
        default_factory=list, description="Variant names to build (empty: every configured variant)."
    )


class ReleaseInput(ImageSelection):
    """`talos_release`'s config: the variants, and the release's facts when the caller (the CLI, the
    release sensor) has them from its one releases listing; launched by hand without them, the
    asset asks GitHub itself (one request)."""

    published_at: str = Field(default="", description="GitHub's published_at of the release (empty: ask GitHub).")
    prerelease: bool = Field(default=False, description="GitHub's prerelease flag, or a -alpha/-beta/-rc tag.")
    html_url: str = Field(default="", description="The release's page on GitHub.")

    @classmethod
    def of(cls, facts: ReleaseFacts | None, variants: list[str] | None = None) -> "ReleaseInput":
        if facts is None:
            return cls(variants=variants or [])
        return cls(
            variants=variants or [],
            published_at=facts.published_at,
            prerelease=facts.prerelease,
            html_url=facts.html_url,
        )

    def facts(self, version: str) -> ReleaseFacts | None:
        if not self.published_at:
            return None
        parse_timestamp(self.published_at)  # a bad value is an error naming it
        return ReleaseFacts(version, self.published_at, self.prerelease, self.html_url)


def selected_images(
    context: dg.AssetExecutionContext, images: TalosImages, config: ImageSelection, store: Store | None = None
) -> list[ImageRef]:
    """The images of this partition: its version and arch, each selected variant. With `store`,
    schematic-file variants carry the id `talos_release` registered (steps that talk to the
    factory or write records need it; signing does not)."""
    version, arch = version_and_arch(context)
    variants = images.select(config.variants)
    if store is not None:
        variants = registered_variants(store, version, arch, variants)
    return [ImageRef(version, arch, v) for v in variants]


VARIANT_COLUMNS = [
    column("variant"),
    column("platform"),
    column("schematic", description="the Image Factory's schematic id, first 12 hex digits"),
    column("extensions", description="official system extensions, checked against this version's list"),
    column("file", description="the schematic file registered with POST /schematics (NAME=PLATFORM:@file)"),
]


@dg.asset(partitions_def=image_partitions, group_name=GROUP, kinds={"github", "python"})
def talos_release(
    context: dg.AssetExecutionContext,
    config: ReleaseInput,
    talos_upstream: TalosUpstream,
    talos_store: TalosStore,
    talos_images: TalosImages,
    talos_signing: TalosSigning,
) -> dg.MaterializeResult:
    """Facts of one Talos release from GitHub (given by the caller's releases listing, else one
    request), cross-checked with the Image Factory: the version is offered, and every variant's
    schematic is registered and asks only for extensions this version has. First, what the end of
    the run needs: the store takes a test write, the signer opens (its key, or keyless its token
    and certificate, kept for the run). All before any download."""
    version, arch = version_and_arch(context)
    factory = talos_upstream.factory(context.log.warning)
    try:
        store = talos_store.open()
        check_store_writable(store)
        talos_signing.signer().open()
        listed = config.facts(version) or talos_upstream.releases(context.log.warning).release(version)
        facts = offered_by_factory(factory, listed)
        variants = talos_images.select(config.variants)
        resolved = VariantResolver(factory).for_version(variants, version)
        save_release(store, arch, facts)
        save_variant_ids(store, version, arch, resolved)
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    context.log.info(f"Talos {version}: published {facts.published_at}, serial {facts.serial}")
    rows = [
        {
            "variant": r.variant.name,
            "platform": r.variant.platform,
            "schematic": short(r.variant.schematic),
            "extensions": ", ".join(r.extensions) or "-",
            "file": r.variant.schematic_file or "-",
        }
        for r in resolved
    ]
    return dg.MaterializeResult(
        metadata={
            "version": facts.version,
            "published_at": dg.MetadataValue.timestamp(parse_timestamp(facts.published_at)),
            "serial": facts.serial,
            "prerelease": dg.MetadataValue.bool(facts.prerelease),
            "variants": table(VARIANT_COLUMNS, rows),
            "schematics": dg.MetadataValue.json({r.variant.name: r.variant.schematic for r in resolved}),
            **links({"release_notes": facts.html_url}),
        },
        data_version=dg.DataVersion(f"{facts.version}@{facts.published_at}"),
    )


TARBALL_COLUMNS = [
    column("variant"),
    column("size", "int", "bytes"),
    column("sha256", description="first 12 hex digits; full values in `sha256`"),
    column("path", description="object key in the store"),
]


@dg.asset(partitions_def=image_partitions, group_name=GROUP, deps=[talos_release], kinds={"python"})
def talos_metadata_tarball(
    context: dg.AssetExecutionContext, config: ImageSelection, talos_images: TalosImages, talos_store: TalosStore
) -> dg.MaterializeResult:
    """The deterministic `incus.tar.xz` of every variant (metadata.yaml only, a few hundred bytes)."""
    store = talos_store.open()
    files = {}
    try:
        for image in selected_images(context, talos_images, config):
            release = load_release(store, image.version, image.arch)
            files[image.variant.name] = store_metadata_tarball(store, image, release)
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    rows = [{"variant": v, "size": f.size, "sha256": short(f.sha256), "path": f.path} for v, f in files.items()]
    return dg.MaterializeResult(
        metadata={
            "tarballs": table(TARBALL_COLUMNS, rows),
            "sha256": dg.MetadataValue.json({v: f.sha256 for v, f in files.items()}),
            "count": dg.MetadataValue.int(len(files)),
        },
        data_version=dg.DataVersion(sha256_hex("".join(f.sha256 for f in files.values()).encode())),
    )


DISK_COLUMNS = [
    column("variant"),
    column("size", "int", "bytes of the qcow2"),
    column("MiB", "float"),
    column("seconds", "float", "download and hashing"),
    column("MB/s", "float"),
    column("sha256", description="first 12 hex digits; full values in `digests`"),
    column("fingerprint", description="Incus fingerprint (sha256 of tarball + disk), first 12 digits"),
    column("mode", description="mirror: bytes in the store; proxy: served from the factory"),
    column("path", description="object key of the disk (its name in proxy mode)"),
]


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
    disks = {}
    try:
        for image in selected_images(context, talos_images, config, store):
            release = load_release(store, image.version, image.arch)
            context.log.info(f"{image.label}: downloading {factory.image_url(image)} ({mode} mode)")
            facts = hash_disk(
                store, factory, image, release, expected_metadata(image, release), mode=mode, log=context.log.info
            )
            context.log.info(
                f"{image.label}: {facts.size / 2**20:.1f} MiB in {facts.seconds:.1f}s "
                f"({facts.bytes_per_second / 1e6:.0f} MB/s), sha256 {facts.sha256}"
            )
            disks[image.variant.name] = facts
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    rows = [
        {
            "variant": variant,
            "size": facts.size,
            "MiB": round(facts.size / 2**20, 1),
            "seconds": facts.seconds,
            "MB/s": round(facts.bytes_per_second / 1e6, 1),
            "sha256": short(facts.sha256),
            "fingerprint": short(facts.fingerprint),
            "mode": facts.mode,
            "path": facts.path,
        }
        for variant, facts in disks.items()
    ]
    total_bytes = sum(f.size for f in disks.values())
    total_seconds = sum(f.seconds for f in disks.values())
    digests = {
        variant: {"sha256": f.sha256, "fingerprint": f.fingerprint, "unified_sha256": f.unified_sha256}
        for variant, f in disks.items()
    }
    return dg.MaterializeResult(
        metadata={
            "disks": table(DISK_COLUMNS, rows),
            "digests": dg.MetadataValue.json(digests),
            "bytes": dg.MetadataValue.int(total_bytes),
            "MB_per_second": dg.MetadataValue.float(
                round(total_bytes / total_seconds / 1e6, 1) if total_seconds else 0.0
            ),
            "disk_mode": str(mode),
            **links({f"upstream/{variant}": f.upstream_url for variant, f in disks.items()}),
        },
        data_version=dg.DataVersion(sha256_hex("".join(f.fingerprint for f in disks.values()).encode())),
    )
