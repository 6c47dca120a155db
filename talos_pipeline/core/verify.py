"""Re-check a published store from its catalog alone, the way a careful client would.

For every product: each file exists with the catalog's size and sha256 (disks re-hashed in one
streamed pass that also recomputes the Incus fingerprint and the unified-tarball hash), and each
Sigstore bundle verifies against the given identity policy or public key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import PipelineError
from .hashing import ImageDigester, sha256_hex
from .images import IMAGES_KEY, INDEX_KEY
from .metadata import layout_for, read_metadata_yaml
from .signing import SigningError, verify_bundle
from .simplestreams import CatalogFormatError, CatalogImage, CatalogReading, read_images, read_index_products
from .stores import ObjectMissing, Store


@dataclass(frozen=True)
class VerifyPolicy:
    identity_regexp: str | None = None
    oidc_issuer: str | None = None
    key_pem: bytes | None = None
    trust_config: str | None = None


@dataclass
class ProductReport:
    product: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    products: list[ProductReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(not p.problems for p in self.products)

    def summary(self) -> str:
        bad = [p for p in self.products if p.problems]
        lines = [f"{len(self.products)} products checked, {len(bad)} with problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        for product in self.products:
            status = "FAIL" if product.problems else "ok"
            lines.append(f"{status:4} {product.product}")
            lines += [f"       problem: {p}" for p in product.problems]
            lines += [f"       {n}" for n in product.notes]
        return "\n".join(lines)


def load_catalog(store: Store) -> CatalogReading:
    """The published catalog read back (both documents, checked against each other)."""
    try:
        index = store.read_bytes(INDEX_KEY)
        images = store.read_bytes(IMAGES_KEY)
    except ObjectMissing as exc:
        raise PipelineError(f"{exc}: nothing is published there yet (run `talos-pipeline publish`)") from None
    try:
        declared = read_index_products(index)
        reading = read_images(images)
    except CatalogFormatError as exc:
        raise PipelineError(f"the catalog in {store.describe()} is unusable: {exc}") from None
    if declared != reading.product_keys:
        raise PipelineError(f"{INDEX_KEY} and {IMAGES_KEY} in {store.describe()} name different products")
    return reading


def verify_store(store: Store, policy: VerifyPolicy, log: Callable[[str], None] | None = None) -> VerifyReport:
    reading = load_catalog(store)
    report = VerifyReport(problems=list(reading.problems))
    entries: dict[str, ProductReport] = {}
    for image in sorted(reading.images, key=lambda i: (i.product, i.serial)):
        entry = entries.setdefault(image.product, ProductReport(image.product))
        if log:
            log(f"checking {image.product} {image.serial}")
        _check_image(store, policy, image, entry)
    report.products = list(entries.values())
    return report


def _check_image(store: Store, policy: VerifyPolicy, image: CatalogImage, entry: ProductReport) -> None:
    meta = image.metadata
    try:
        tarball = store.read_bytes(meta.path)
    except ObjectMissing:
        entry.problems.append(f"{meta.path} is missing")
        return
    if len(tarball) != meta.size or sha256_hex(tarball) != meta.sha256:
        entry.problems.append(f"{meta.path}: size or sha256 differs from the catalog")
        return
    if image.proxied:
        entry.notes.append("disk is proxied from the Image Factory (proxy mode): not re-hashed here")
    else:
        _check_disk(store, tarball, image, entry)
    _check_signatures(store, policy, image, tarball, entry)


def _check_disk(store: Store, tarball: bytes, image: CatalogImage, entry: ProductReport) -> None:
    disk = image.disk
    info = store.stat(disk.path)
    if info is None:
        entry.problems.append(f"{disk.path} is missing")
        return
    if info.size != disk.size:
        entry.problems.append(f"{disk.path}: {info.size} bytes, the catalog says {disk.size}")
        return
    yaml, mtime = read_metadata_yaml(tarball)
    layout = layout_for(yaml, mtime, disk.size)
    digester = ImageDigester(tarball, layout.prefix, lambda size: layout.suffix)
    try:
        for chunk in store.iter_range(disk.path):
            digester.update(chunk)
    except BaseException:
        digester.abandon()
        raise
    digests = digester.finish()
    if digests.sha256 != disk.sha256:
        entry.problems.append(f"{disk.path}: sha256 {digests.sha256} differs from the catalog's {disk.sha256}")
    if digests.fingerprint != image.fingerprint:
        entry.problems.append("the Incus fingerprint sha256(incus.tar.xz || disk) differs from the catalog's")
    if digests.unified_sha256 != image.unified_sha256:
        entry.problems.append("the unified tarball's sha256 differs from the catalog's")
    if not entry.problems:
        entry.notes.append(f"fingerprint {digests.fingerprint}")


def _check_signatures(
    store: Store, policy: VerifyPolicy, image: CatalogImage, tarball: bytes, entry: ProductReport
) -> None:
    if image.signing == "none" and not image.metadata.signature:
        entry.notes.append("unsigned (published with TALOS_SIGNING=none)")
        return
    for item, artifact in ((image.metadata, tarball), (image.disk, image.disk.sha256)):
        if not item.signature:
            entry.problems.append(f"{item.path}: the catalog names no signature although signing was on")
            continue
        try:
            bundle = store.read_bytes(item.signature)
            what = verify_bundle(
                artifact,
                bundle,
                key_pem=policy.key_pem,
                trust_config_path=policy.trust_config,
                identity_regexp=policy.identity_regexp,
                oidc_issuer=policy.oidc_issuer,
            )
            entry.notes.append(f"{item.signature}: {what}")
        except ObjectMissing:
            entry.problems.append(f"{item.signature} is missing")
        except SigningError as exc:
            entry.problems.append(f"{item.signature}: {exc}")
