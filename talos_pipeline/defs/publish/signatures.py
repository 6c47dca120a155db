"""Sigstore (cosign-compatible) bundles of each image's files and their provenance
attestations (in-toto statements as DSSE bundles, docs/provenance.md), as a step of their own.

Signing reads only what the earlier steps left in the store (the metadata tarball, a few
hundred bytes, the disk's facts and the release's facts): re-running it after a key rotation or
after turning signing on downloads nothing and re-attests too. Materialize `talos_signatures` and `talos_image`
(the `sign_images` job) for the partitions to re-sign, and the catalog follows.
"""

import dagster as dg

from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.publish import expected_metadata, load_disk_facts, load_release, sign_image

from ..failures import step_failure
from ..metadata import column, table
from ..partitions import image_partitions
from ..resources import TalosImages, TalosSigning, TalosStore
from .assets import GROUP, ImageSelection, selected_images, talos_disk_image

BUNDLE_COLUMNS = [
    column("variant"),
    column("file", description="metadata (the incus.tar.xz, signed by content) or disk (signed by its sha256)"),
    column(
        "content",
        description="signature (<file>.sigstore.json) or provenance (<file>.intoto.sigstore.json, a signed in-toto "
        "SLSA provenance statement)",
    ),
    column("bundle", description="object key of the Sigstore bundle"),
    column("kind", description="keyless (Fulcio certificate, Rekor entry) or key (public-key hint)"),
    column("signer", description="the certificate's identity, or the public key's hint"),
    column(
        "kept",
        "bool",
        description="true: the existing bundle is still valid for this signer (an attestation: still states the "
        "same facts) and stays",
    ),
]


@dg.asset(
    partitions_def=image_partitions,
    group_name=GROUP,
    deps=[talos_disk_image],
    kinds={"sigstore", "python"},
)
def talos_signatures(
    context: dg.AssetExecutionContext,
    config: ImageSelection,
    talos_images: TalosImages,
    talos_store: TalosStore,
    talos_signing: TalosSigning,
) -> dg.MaterializeResult:
    """Sigstore bundles (`cosign verify-blob --bundle`) of each variant's metadata tarball and disk,
    by digest, and their provenance attestations (`cosign verify-blob-attestation`); bundles still
    valid for this signer are kept, so republishing rewrites nothing."""
    store = talos_store.open()
    rows, digests = [], []
    try:
        signer = talos_signing.signer()
        for image in selected_images(context, talos_images, config):
            release = load_release(store, image.version, image.arch)
            disk = load_disk_facts(store, image)
            for bundle in sign_image(store, signer, image, release, expected_metadata(image, release), disk):
                digests.append(bundle.sha256)
                rows.append(
                    {
                        "variant": image.variant.name,
                        "file": bundle.file,
                        "content": bundle.content,
                        "bundle": bundle.key,
                        "kind": bundle.kind,
                        "signer": bundle.signer,
                        "kept": bundle.kept,
                    }
                )
    except PipelineError as exc:
        raise step_failure(context, exc) from None
    written = sum(not row["kept"] for row in rows)
    context.log.info(f"{signer.describe()}: {written} bundle(s) written, {len(rows) - written} kept")
    return dg.MaterializeResult(
        metadata={
            "bundles": table(BUNDLE_COLUMNS, rows) if rows else "signing is off (TALOS_SIGNING=none): no bundles",
            "signing": str(talos_signing.mode),
            "signer": signer.describe(),
            "written": dg.MetadataValue.int(written),
            "kept": dg.MetadataValue.int(len(rows) - written),
        },
        data_version=dg.DataVersion(sha256_hex(f"{talos_signing.mode}:{','.join(digests)}".encode())),
    )
