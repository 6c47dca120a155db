"""Re-check a published store from its catalog alone, the way a careful client would.

For every product: each file exists with the catalog's size and sha256 (disks re-hashed in one
streamed pass that also recomputes the Incus fingerprint and the unified-tarball hash, unless the
verification ledger vouches for the unchanged object, see `verify_ledger.py`), and each Sigstore
bundle verifies against the given identity policy or public key. With a policy every file must
carry a bundle that satisfies it: unsigned is a failure, not a note. With `provenance`, each
file's attestation (docs/provenance.md) must verify under the same policy, be about that file and
agree with the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import PipelineError
from .hashing import ImageDigester, sha256_hex
from .images import IMAGES_KEY, INDEX_KEY
from .metadata import layout_for, read_metadata_yaml
from .provenance import Statement, external_parameters, read_statement
from .signing import SigningError, verify_attestation, verify_bundle
from .signing.bundles import public_key_hint
from .simplestreams import (
    CatalogFormatError,
    CatalogImage,
    CatalogItem,
    CatalogReading,
    read_images,
    read_index_products,
)
from .stores import ObjectMissing, Store
from .verify_ledger import HashedDisk, VerificationLedger

PAIR_READS = 3
REBUILD_HINT = "`talos-pipeline catalog` (or the next publish) rewrites it"


@dataclass(frozen=True)
class VerifyPolicy:
    identity_regexp: str | None = None
    oidc_issuer: str | None = None
    key_pem: bytes | None = None
    trust_config: str | None = None

    @property
    def required(self) -> bool:
        """A policy was given: every file must carry a bundle that satisfies it."""
        return self.key_pem is not None or bool(self.identity_regexp and self.oidc_issuer)

    def describe(self) -> str:
        if self.key_pem is not None:
            return f"--key (public key {_hint(self.key_pem)})"
        return f"--certificate-identity-regexp {self.identity_regexp!r} --certificate-oidc-issuer {self.oidc_issuer!r}"


def _hint(key_pem: bytes) -> str:
    try:
        return public_key_hint(key_pem)
    except SigningError:
        return "unreadable"


@dataclass
class ProductReport:
    product: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    products: list[ProductReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Store-level findings that do not change what a client gets (they do not fail the run)."""
    disks_hashed: int = 0
    disks_unchanged: int = 0
    """Disks the ledger vouched for: not re-read this run."""

    @property
    def ok(self) -> bool:
        return not self.problems and all(not p.problems for p in self.products)

    def summary(self) -> str:
        bad = [p for p in self.products if p.problems]
        lines = [
            f"{len(self.products)} products checked, {len(bad)} with problems; disks re-hashed: "
            f"{self.disks_hashed}, unchanged since the last successful verification: {self.disks_unchanged}"
        ]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        for product in self.products:
            status = "FAIL" if product.problems else "ok"
            lines.append(f"{status:4} {product.product}")
            lines += [f"       problem: {p}" for p in product.problems]
            lines += [f"       {n}" for n in product.notes]
        return "\n".join(lines)


def load_catalog(store: Store) -> tuple[set[str], CatalogReading]:
    """The product keys index.json announces and images.json read back, as one pair.

    A rebuild writes images.json, then index.json; images.json is looked at again after
    index.json is read, and the pair read again if a rebuild replaced it in between.
    """
    for _attempt in range(PAIR_READS):
        images, etag = _read_document(store, IMAGES_KEY)
        index, _ = _read_document(store, INDEX_KEY)
        again = store.stat(IMAGES_KEY)
        if again is not None and again.etag == etag:
            break
    try:
        return read_index_products(index), read_images(images)
    except CatalogFormatError as exc:
        raise PipelineError(f"the catalog in {store.describe()} is unusable: {exc}") from None


def _read_document(store: Store, key: str) -> tuple[bytes, str]:
    found = store.read_with_etag(key)
    if found is None:
        raise PipelineError(
            f"{key} is missing in {store.describe()}: nothing is published there yet (run `talos-pipeline publish`)"
        )
    return found


def _index_findings(store: Store, declared: set[str], reading: CatalogReading) -> tuple[list[str], list[str]]:
    """(problems, notes) about index.json's product list.

    Incus reads products from images.json and only requires index.json to name some, so a list
    that lags images.json (a rebuild killed between its two writes, or running right now) is a
    note with its remedy; an empty list in front of products hides them all and is a problem.
    """
    if declared == reading.product_keys:
        return [], []
    if not declared and reading.product_keys:
        return [f"{INDEX_KEY} names no products, so Incus shows none; {REBUILD_HINT}"], []
    missing, extra = reading.product_keys - declared, declared - reading.product_keys
    parts = [
        f"does not name {len(missing)} product(s) that {IMAGES_KEY} has ({_some(missing)})" if missing else "",
        f"names {len(extra)} product(s) that {IMAGES_KEY} does not have ({_some(extra)})" if extra else "",
    ]
    said = " and ".join(part for part in parts if part)
    return [], [
        f"{INDEX_KEY} in {store.describe()} {said}: a catalog rebuild was interrupted or is running; Incus reads "
        f"the products from {IMAGES_KEY}, so clients are not affected; {REBUILD_HINT}"
    ]


def _some(keys: set[str]) -> str:
    named = sorted(keys)
    return ", ".join(named[:3]) + (", …" if len(named) > 3 else "")


@dataclass
class _Run:
    """One verification: what it checks against, and what it found."""

    store: Store
    policy: VerifyPolicy
    provenance: bool
    ledger: VerificationLedger | None
    report: VerifyReport


def verify_store(
    store: Store,
    policy: VerifyPolicy,
    log: Callable[[str], None] | None = None,
    *,
    provenance: bool = False,
    ledger: VerificationLedger | None = None,
) -> VerifyReport:
    """Check everything the catalog names. Disks are re-hashed unless `ledger` vouches for them;
    the ledger is written back only when nothing was wrong."""
    declared, reading = load_catalog(store)
    problems, notes = _index_findings(store, declared, reading)
    report = VerifyReport(problems=problems + reading.problems, notes=notes)
    run = _Run(store, policy, provenance, ledger, report)
    entries: dict[str, ProductReport] = {}
    for image in sorted(reading.images, key=lambda i: (i.product, i.serial)):
        entry = entries.setdefault(image.product, ProductReport(image.product))
        if log:
            log(f"checking {image.product} {image.serial}")
        _check_image(run, image, entry)
    run.report.products = list(entries.values())
    if ledger is not None and run.report.ok:
        ledger.save()
    return run.report


def _check_image(run: _Run, image: CatalogImage, entry: ProductReport) -> None:
    meta = image.metadata
    try:
        tarball = run.store.read_bytes(meta.path)
    except ObjectMissing:
        entry.problems.append(f"{meta.path} is missing")
        return
    if len(tarball) != meta.size or sha256_hex(tarball) != meta.sha256:
        entry.problems.append(f"{meta.path}: size or sha256 differs from the catalog")
        return
    if image.proxied:
        entry.notes.append("disk is proxied from the Image Factory (proxy mode): not re-hashed here")
    else:
        _check_disk(run, tarball, image, entry)
    _check_signatures(run, image, tarball, entry)
    if run.provenance:
        _check_attestations(run, image, entry)


def _check_disk(run: _Run, tarball: bytes, image: CatalogImage, entry: ProductReport) -> None:
    disk = image.disk
    info = run.store.stat(disk.path)
    if info is None:
        entry.problems.append(f"{disk.path} is missing")
        return
    if info.size != disk.size:
        entry.problems.append(f"{disk.path}: {info.size} bytes, the catalog says {disk.size}")
        return
    claims = HashedDisk(
        info.etag, info.size, disk.sha256, image.fingerprint, image.unified_sha256, image.metadata.sha256
    )
    if run.ledger is not None and run.ledger.vouches_for(disk.path, info, claims):
        run.report.disks_unchanged += 1
        entry.notes.append(
            f"{disk.path}: unchanged since the last successful verification (ETag {info.etag}): not re-hashed"
        )
        return
    yaml, mtime = read_metadata_yaml(tarball)
    layout = layout_for(yaml, mtime, disk.size)
    digester = ImageDigester(tarball, layout.prefix, lambda size: layout.suffix)
    try:
        for chunk in run.store.iter_range(disk.path):
            digester.update(chunk)
    except BaseException:
        digester.abandon()
        raise
    digests = digester.finish()
    run.report.disks_hashed += 1
    problems = []
    if digests.sha256 != disk.sha256:
        problems.append(f"{disk.path}: sha256 {digests.sha256} differs from the catalog's {disk.sha256}")
    if digests.fingerprint != image.fingerprint:
        problems.append("the Incus fingerprint sha256(incus.tar.xz || disk) differs from the catalog's")
    if digests.unified_sha256 != image.unified_sha256:
        problems.append("the unified tarball's sha256 differs from the catalog's")
    entry.problems += problems
    if problems:
        return
    entry.notes.append(f"fingerprint {digests.fingerprint}")
    if run.ledger is not None and run.store.stat(disk.path) == info:
        run.ledger.confirm(disk.path, claims)


def _check_signatures(run: _Run, image: CatalogImage, tarball: bytes, entry: ProductReport) -> None:
    policy = run.policy
    items = ((image.metadata, tarball), (image.disk, image.disk.sha256))
    if not policy.required and image.signing == "none" and not any(item.signature for item, _ in items):
        entry.notes.append("unsigned (published with TALOS_SIGNING=none)")
        return
    for item, artifact in items:
        if not item.signature:
            why = (
                f"{policy.describe()} requires every file to be signed"
                if policy.required
                else "signing was on (talos_signing is not none)"
            )
            entry.problems.append(f"{item.path}: the catalog names no signature bundle, but {why}")
            continue
        try:
            bundle = run.store.read_bytes(item.signature)
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


def _check_attestations(run: _Run, image: CatalogImage, entry: ProductReport) -> None:
    policy = run.policy
    items = (("metadata", image.metadata), ("disk", image.disk))
    if not policy.required and image.signing == "none" and not any(item.attestation for _, item in items):
        entry.notes.append("no provenance attestations (unsigned)")
        return
    for file, item in items:
        if not item.attestation:
            entry.problems.append(
                f"{item.path}: the catalog names no provenance attestation, but --provenance "
                + (f"with {policy.describe()} " if policy.required else "")
                + "requires one for every file"
            )
            continue
        try:
            payload, what = verify_attestation(
                run.store.read_bytes(item.attestation),
                key_pem=policy.key_pem,
                trust_config_path=policy.trust_config,
                identity_regexp=policy.identity_regexp,
                oidc_issuer=policy.oidc_issuer,
            )
            disagreements = _disagreements(read_statement(payload), image, file, item)
        except ObjectMissing:
            entry.problems.append(f"{item.attestation} is missing")
            continue
        except SigningError as exc:
            entry.problems.append(f"{item.attestation}: {exc}")
            continue
        if disagreements:
            entry.problems.append(f"{item.attestation}: " + "; ".join(disagreements))
        else:
            entry.notes.append(f"{item.attestation}: {what}; it is about {item.path} and agrees with the catalog")


def _disagreements(statement: Statement, image: CatalogImage, file: str, item: CatalogItem) -> list[str]:
    """Where the statement and the catalog disagree about this file (empty: they agree)."""
    facts, evidence = statement.facts, statement.evidence
    found = []
    if facts.sha256 != item.sha256:
        found.append(f"its subject is sha256 {facts.sha256}, but {item.path} has sha256 {item.sha256}")
    expected = {
        "file": file,
        "path": item.path,
        "talosVersion": image.version,
        "arch": image.arch,
        "variant": image.variant,
        "platform": image.platform,
        "schematic": image.schematic,
        "diskMode": image.disk_mode,
        "disk sha256": image.disk.sha256,
    }
    stated = external_parameters(facts) | {"disk sha256": facts.disk_sha256}
    for name, value in expected.items():
        if value is not None and stated[name] != value:
            found.append(f"it states {name} {stated[name]!r}, the catalog {value!r}")
    if evidence.factory_versions and facts.version not in evidence.factory_versions:
        found.append(f"the factory's /versions answer it records does not list {facts.version}")
    if image.factory_path and not facts.upstream_url.endswith("/" + image.factory_path):
        found.append(f"its upstream URL {facts.upstream_url} is not the factory's {image.factory_path}")
    return found
