"""Publishing one image, step by step, and rebuilding the catalog from what is published.

The steps match the Dagster assets (release facts → metadata tarball → disk → signatures →
product record) and hand facts to each other through the store: small JSON objects under
`state/`, and the bundles themselves (`<file>.sigstore.json`), so they can run in different
processes or machines and signing can be re-run alone. Order keeps the invariant: immutable
objects first, then their bundles, then the product record, then (elsewhere) the catalog.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial

import requests

from .errors import PipelineError, UpstreamError
from .hashing import ImageDigester, sha256_hex
from .images import (
    ImageRef,
    release_state_key,
)
from .media import attestation_key, bundle_key
from .metadata import metadata_tarball, unified_layout
from .provenance import Builder, Evidence, image_provenance, statement
from .records import ProductRecord, PublishedFile
from .releases import ReleaseFacts
from .settings import SigningMode
from .signed_files import Bundle, is_signature, kept_or_signed, named_bundle, states
from .signing import Signer
from .stores import CHUNK, ObjectMissing, Store
from .upstream import FactoryClient

Log = Callable[[str], None]
PROGRESS_INTERVAL = 5.0


def offered_by_factory(factory: FactoryClient, facts: ReleaseFacts) -> ReleaseFacts:
    """A release's facts once the factory is seen to offer it (checked before any download), with
    the factory's `/versions` answer, which the provenance attestations record."""
    offered = factory.require_version(facts.version)
    return replace(facts, factory_versions_url=f"{factory.url}/versions", factory_versions=tuple(offered))


def save_release(store: Store, arch: str, facts: ReleaseFacts) -> None:
    store.put_bytes(release_state_key(facts.version, arch), _json(asdict(facts)))


def load_release(store: Store, version: str, arch: str) -> ReleaseFacts:
    try:
        return ReleaseFacts(**json.loads(store.read_bytes(release_state_key(version, arch))))
    except ObjectMissing:
        raise PipelineError(
            f"Talos {version} {arch}: release facts are missing; materialize talos_release for this partition first"
        ) from None


def _json(body: dict) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def expected_metadata(image: ImageRef, release: ReleaseFacts) -> PublishedFile:
    """Where the (deterministic) metadata tarball of `image` is stored, without touching the store."""
    data = metadata_tarball(image, release)
    sha = sha256_hex(data)
    return PublishedFile(path=image.metadata_key(sha), sha256=sha, size=len(data))


def store_metadata_tarball(store: Store, image: ImageRef, release: ReleaseFacts) -> PublishedFile:
    file = expected_metadata(image, release)
    store.put_bytes(file.path, metadata_tarball(image, release))
    return file


@dataclass(frozen=True)
class DiskFacts:
    """What the single pass over the factory download established."""

    path: str
    sha256: str
    size: int
    fingerprint: str
    unified_sha256: str
    unified_size: int
    metadata_sha256: str
    upstream_url: str
    mode: str
    seconds: float = 0.0
    schematic_document: str | None = None
    """The factory's canonical YAML of a custom schematic (the provenance names it); None for vanilla."""

    @property
    def bytes_per_second(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> bytes:
        """Without the timing, so republishing unchanged bytes rewrites nothing."""
        facts = asdict(self)
        del facts["seconds"]
        if facts["schematic_document"] is None:
            del facts["schematic_document"]
        return _json(facts)

    @classmethod
    def from_json(cls, data: bytes) -> DiskFacts:
        return cls(**json.loads(data))


class _Progress:
    def __init__(self, image: ImageRef, total: int, log: Log | None) -> None:
        self.image, self.total, self.log = image, total, log
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.log and now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            rate = done / (now - self.started) / 1e6
            self.log(
                f"{self.image.label}: {done / 2**20:.0f} of {self.total / 2**20:.0f} MiB "
                f"({100 * done / max(self.total, 1):.0f}%), {rate:.0f} MB/s"
            )


def _content_length(image: ImageRef, url: str, response: requests.Response) -> int:
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise UpstreamError(
            f"{image.label}: {url} sent no Content-Length; the factory always does, so check TALOS_FACTORY_URL"
        )
    return int(length)


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """Headers arrived (a cold build is over): from now on a silent connection is a dead one."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def hash_disk(
    store: Store,
    factory: FactoryClient,
    image: ImageRef,
    release: ReleaseFacts,
    metadata: PublishedFile,
    *,
    mode: str = "mirror",
    log: Log | None = None,
) -> DiskFacts:
    """Stream the qcow2 once: hash it three ways and (in mirror mode) store the same bytes."""
    tarball = store.read_bytes(metadata.path)
    url = factory.image_url(image)
    schematic = None if image.variant.is_vanilla else factory.schematic(image.variant.schematic)
    started = time.monotonic()
    response = factory.open_image(image)
    with response:
        expected = _content_length(image, url, response)
        layout = unified_layout(image, release, expected)
        digester = ImageDigester(tarball, layout.prefix, lambda size: layout.suffix)
        upload = store.upload() if mode == "mirror" else None
        try:
            _set_read_timeout(response, factory.timeouts.read)
            progress = _Progress(image, expected, log)
            for chunk in response.raw.stream(CHUNK, decode_content=False):
                digester.update(chunk)
                if upload:
                    upload.write(chunk)
                progress.update(digester.size)
            if digester.size != expected:
                raise UpstreamError(
                    f"{image.label}: {url} ended after {digester.size} of {expected} bytes (truncated download); "
                    "nothing was published; retry",
                    transient=True,
                )
            digests = digester.finish()
        except BaseException as exc:
            digester.abandon()
            if upload:
                upload.abort()
            if isinstance(exc, requests.RequestException) or _is_transport_error(exc):
                raise UpstreamError(
                    f"{image.label}: download from {url} broke off after {digester.size} of {expected} bytes "
                    f"({_transport_problem(exc, factory.timeouts.read)}); nothing was published; retry",
                    transient=True,
                ) from exc
            raise
        key = image.disk_key(digests.sha256)
        if upload:
            existing = store.stat(key)
            if existing is not None and existing.size == digests.size:
                upload.abort()
            else:
                upload.commit(key, sha256=digests.sha256)
    elapsed = time.monotonic() - started
    facts = DiskFacts(
        path=key,
        sha256=digests.sha256,
        size=digests.size,
        fingerprint=digests.fingerprint,
        unified_sha256=digests.unified_sha256,
        unified_size=digests.unified_size,
        metadata_sha256=metadata.sha256,
        upstream_url=url,
        mode=mode,
        seconds=round(elapsed, 3),
        schematic_document=schematic,
    )
    store.put_bytes(image.state_key, facts.to_json())
    return facts


def _transport_problem(exc: BaseException, read_timeout: float) -> str:
    names = set()
    while exc is not None:
        names.add(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    if "IncompleteRead" in names:
        return "the connection closed early: truncated body"
    if names & {"ReadTimeoutError", "ReadTimeout", "TimeoutError", "timeout"}:
        return f"no data for {read_timeout:g} s: the connection looks dead (TALOS_UPSTREAM_READ_TIMEOUT)"
    if names & {"ConnectionResetError", "ProtocolError", "ChunkedEncodingError"}:
        return "the connection was reset"
    return ", ".join(sorted(names))


def _is_transport_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith("urllib3") or isinstance(exc, (ConnectionError, TimeoutError))


def load_disk_facts(store: Store, image: ImageRef) -> DiskFacts:
    try:
        return DiskFacts.from_json(store.read_bytes(image.state_key))
    except ObjectMissing:
        raise PipelineError(
            f"{image.label}: disk facts are missing; materialize talos_disk_image for this partition first"
        ) from None


def _check_same_tarball(image: ImageRef, metadata: PublishedFile, disk: DiskFacts) -> None:
    if disk.metadata_sha256 != metadata.sha256:
        raise PipelineError(
            f"{image.label}: the disk was hashed against another metadata tarball; rematerialize talos_disk_image"
        )


def sign_image(
    store: Store,
    signer: Signer,
    image: ImageRef,
    release: ReleaseFacts,
    metadata: PublishedFile,
    disk: DiskFacts,
    builder: Builder | None = None,
) -> list[Bundle]:
    """Bundles of the metadata tarball (by content, a few hundred bytes) and of the disk (by its
    sha256: the disk is never read again), each with its provenance attestation. A bundle still
    valid for this signer (an attestation: that still states the same facts) stays as it is, so
    republishing rewrites nothing; another mode or key replaces it. None in mode none."""
    _check_same_tarball(image, metadata, disk)
    if signer.mode == SigningMode.NONE:
        return []
    builder = builder or Builder.current()
    evidence = Evidence(release.factory_versions_url, release.factory_versions, disk.schematic_document)
    files = (
        ("metadata", metadata.path, metadata.sha256, lambda: signer.sign_bytes(store.read_bytes(metadata.path))),
        ("disk", disk.path, disk.sha256, lambda: signer.sign_digest(disk.sha256)),
    )
    bundles = []
    for file, path, sha256, sign in files:
        facts = image_provenance(
            image, release, file, path, sha256,
            disk_sha256=disk.sha256, upstream_url=disk.upstream_url, disk_mode=disk.mode,
            schematic_document=disk.schematic_document,
        )  # fmt: skip
        attest = partial(signer.sign_statement, statement(facts, evidence, release, builder))
        bundles.append(kept_or_signed(store, signer, (file, "signature", path), bundle_key(path), is_signature, sign))
        bundles.append(
            kept_or_signed(store, signer, (file, "provenance", path), attestation_key(path), states(facts), attest)
        )
    return bundles


def _published(store: Store, image: ImageRef, signing: SigningMode, path: str, sha256: str, size: int) -> PublishedFile:
    """A file as the record names it: with its signature and attestation when signing is on."""
    signature = named_bundle(store, image, signing, bundle_key(path), "message")
    attestation = named_bundle(store, image, signing, attestation_key(path), "dsse")
    return PublishedFile(path, sha256, size, signature, attestation)


def write_record(
    store: Store,
    signing: SigningMode,
    image: ImageRef,
    release: ReleaseFacts,
    metadata: PublishedFile,
    disk: DiskFacts,
) -> ProductRecord:
    """Write the product record once every object it names is stored (and, when signing is on,
    its bundle and attestation are there in the configured mode): the image becomes eligible for
    the catalog."""
    _check_same_tarball(image, metadata, disk)
    record = ProductRecord(
        version=image.version,
        arch=image.arch,
        variant=image.variant.name,
        platform=image.variant.platform,
        schematic=image.variant.schematic,
        serial=release.serial,
        published_at=release.published_at,
        prerelease=release.prerelease,
        fingerprint=disk.fingerprint,
        metadata=_published(store, image, signing, metadata.path, metadata.sha256, metadata.size),
        disk=_published(store, image, signing, disk.path, disk.sha256, disk.size),
        unified_sha256=disk.unified_sha256,
        unified_size=disk.unified_size,
        disk_mode=disk.mode,
        upstream_path=image.factory_path(),
        signing=signing,
    )
    missing = [key for key in record.object_keys() if not store.exists(key)]
    if missing:
        raise PipelineError(f"{image.label}: not publishing, objects missing from the store: {', '.join(missing)}")
    store.put_bytes(image.record_key, record.to_json())
    return record


def publish_record(
    store: Store, signer: Signer, image: ImageRef, release: ReleaseFacts, metadata: PublishedFile, disk: DiskFacts
) -> ProductRecord:
    """Both last steps at once (scripts and test fixtures): sign, then write the record."""
    sign_image(store, signer, image, release, metadata, disk)
    return write_record(store, signer.mode, image, release, metadata, disk)


def check_record(store: Store, record: ProductRecord) -> list[str]:
    """Re-read what a record names (sizes of all, the bytes of the small ones); problems found."""
    problems = []
    for file in (record.metadata, record.disk):
        if file is record.disk and record.disk_mode != "mirror":
            continue
        info = store.stat(file.path)
        if info is None:
            problems.append(f"{file.path} is missing")
        elif info.size != file.size:
            problems.append(f"{file.path} has {info.size} bytes, the record says {file.size}")
    try:
        if sha256_hex(store.read_bytes(record.metadata.path)) != record.metadata.sha256:
            problems.append(f"{record.metadata.path} does not match its sha256")
    except ObjectMissing:
        pass
    for file in (record.metadata, record.disk):
        if file.signature and not store.exists(file.signature):
            problems.append(f"{file.signature} is missing")
    return problems
