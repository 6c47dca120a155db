"""The Sigstore bundles next to a published file: keep a still-valid one or write a new one,
and check that one is there before a product record names it.

A file `X` has its signature `X.sigstore.json` and its provenance attestation
`X.intoto.sigstore.json` (`core/media.py`). Signatures are not deterministic, so an existing
bundle stays when it is still valid for the signer (and an attestation when it still states the
same facts, `core/provenance.py`): republishing an unchanged image rewrites nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from .errors import SigningError
from .hashing import sha256_hex
from .images import ImageRef
from .provenance import Provenance, read_statement
from .settings import SigningMode
from .signing import Signer, bundle_kind
from .signing.bundles import bundle_content, dsse_envelope, parse_bundle
from .signing.verification import certificate_identities
from .stores import ObjectMissing, Store


@dataclass(frozen=True)
class Bundle:
    """One Sigstore bundle the signing step left next to a published file."""

    file: str
    """Which file of the image: `metadata` (the tarball, signed by content) or `disk` (by digest)."""
    content: str
    """`signature` (`<file>.sigstore.json`) or `provenance` (`<file>.intoto.sigstore.json`, a DSSE
    envelope around the in-toto statement of `core/provenance.py`)."""
    path: str
    key: str
    kind: str
    """`keyless` (a Fulcio certificate) or `key` (a public-key hint)."""
    signer: str
    """The certificate's identities, or the public-key hint."""
    kept: bool
    """An existing bundle still valid for this signer (and, for provenance, still true), left as it was."""
    sha256: str


def bundle_signer(bundle_json: bytes) -> tuple[str, str]:
    """(`keyless` or `key`, who): the certificate's identities or the public-key hint of a bundle."""
    material = parse_bundle(bundle_json).get("verificationMaterial") or {}
    if bundle_kind(bundle_json) == SigningMode.KEY:
        return "key", str((material.get("publicKey") or {}).get("hint", ""))
    chain = (material.get("x509CertificateChain") or {}).get("certificates") or [{}]
    raw = (material.get("certificate") or chain[0]).get("rawBytes", "")
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(raw))
    except ValueError as exc:
        raise SigningError(f"the bundle's certificate cannot be read: {exc}") from None
    return "keyless", ", ".join(certificate_identities(certificate))


def kept_or_signed(
    store: Store,
    signer: Signer,
    what: tuple[str, str, str],
    key: str,
    still_true: Callable[[bytes], bool],
    sign: Callable[[], bytes | None],
) -> Bundle:
    """The bundle at `key`: kept when still valid for this signer and `still_true`, else signed anew.

    `what` is (file, content, path) of the `Bundle` returned."""
    file, content, path = what
    try:
        existing: bytes | None = store.read_bytes(key)
    except ObjectMissing:
        existing = None
    kept = existing is not None and signer.would_keep(existing) and _holds(existing, still_true)
    data = existing if kept else sign()
    if data is None:
        raise SigningError(f"{path}: the {signer.mode} signer produced no bundle")
    if not kept:
        store.put_bytes(key, data)
    kind, who = bundle_signer(data)
    return Bundle(file, content, path, key, kind, who, kept, sha256_hex(data))


def _holds(bundle_json: bytes, still_true: Callable[[bytes], bool]) -> bool:
    try:
        return still_true(bundle_json)
    except SigningError:
        return False


def states(facts: Provenance) -> Callable[[bytes], bool]:
    """Whether an existing attestation states exactly `facts` (its builder and evidence may be older)."""
    return lambda bundle: bundle_content(bundle) == "dsse" and read_statement(dsse_envelope(bundle)[1]).facts == facts


def is_signature(bundle: bytes) -> bool:
    return bundle_content(bundle) == "message"


def named_bundle(store: Store, image: ImageRef, signing: SigningMode, key: str, content: str) -> str | None:
    """`key` for the record to name, once the bundle is there, in the right mode, of the right content."""
    if signing == SigningMode.NONE:
        return None
    try:
        data = store.read_bytes(key)
    except ObjectMissing:
        raise SigningError(
            f"{image.label}: {key} is missing (TALOS_SIGNING={signing}); materialize talos_signatures "
            "for this partition first"
        ) from None
    if bundle_content(data) != content:
        found, expected = (
            ("an attestation", "a signature") if content == "message" else ("a signature", "an attestation")
        )
        raise SigningError(
            f"{image.label}: {key} holds {found}, not {expected}; rematerialize talos_signatures for this partition"
        )
    kind = bundle_kind(data)
    if kind != signing:
        raise SigningError(
            f"{image.label}: {key} is a {kind} bundle but TALOS_SIGNING={signing}; rematerialize "
            "talos_signatures for this partition"
        )
    return key
