"""The Sigstore bundle format as this project reads and writes it.

Keyless bundles come from sigstore-python; key-mode bundles carry a public-key hint instead of
a certificate and no transparency-log entry, exactly what `cosign sign-blob --key k
--new-bundle-format --tlog-upload=false` writes (see `docs/sigstore.md`). A bundle holds either
a `messageSignature` (a file's signature) or a `dsseEnvelope` (a signed in-toto statement, what
`cosign attest-blob` writes; see `docs/provenance.md`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import SigningError
from ..media import BUNDLE_MEDIA_TYPE

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
"""The DSSE payload type of an in-toto statement."""


def public_key_hint(public_key: ec.EllipticCurvePublicKey | bytes | str) -> str:
    """The bundle's ``publicKey.hint``: base64 of sha256 over the DER SubjectPublicKeyInfo."""
    if isinstance(public_key, (bytes, str)):
        public_key = load_public_key(public_key)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def load_public_key(pem: bytes | str) -> ec.EllipticCurvePublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningError(
            f"cannot load the public key: expected a PEM 'PUBLIC KEY' (SubjectPublicKeyInfo): {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningError("the public key must be an ECDSA P-256 key")
    return key


def parse_bundle(bundle_json: bytes | str) -> dict[str, Any]:
    try:
        bundle = json.loads(bundle_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SigningError(f"the bundle is not JSON: {exc}") from exc
    if not isinstance(bundle, dict):
        raise SigningError("the bundle is not a JSON object")
    media_type = str(bundle.get("mediaType", ""))
    if not media_type.startswith("application/vnd.dev.sigstore.bundle"):
        raise SigningError(f"not a Sigstore bundle (mediaType {media_type!r})")
    return bundle


def bundle_kind(bundle_json: bytes | str) -> str:
    """``"sigstore"`` (Fulcio certificate) or ``"key"`` (public-key hint) for a bundle."""
    material = parse_bundle(bundle_json).get("verificationMaterial") or {}
    if "publicKey" in material:
        return "key"
    if "certificate" in material or "x509CertificateChain" in material:
        return "sigstore"
    raise SigningError("the bundle has neither a certificate nor a public-key hint in verificationMaterial")


def bundle_content(bundle_json: bytes | str) -> str:
    """``"dsse"`` (a signed in-toto statement) or ``"message"`` (a file's signature)."""
    bundle = parse_bundle(bundle_json)
    if "dsseEnvelope" in bundle:
        return "dsse"
    if "messageSignature" in bundle:
        return "message"
    raise SigningError("the bundle holds neither a messageSignature nor a dsseEnvelope")


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what an envelope signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_envelope(bundle_json: bytes | str) -> tuple[str, bytes, bytes]:
    """(payload type, payload, signature) of a DSSE bundle, NOT verified: for comparisons only."""
    envelope: Any = parse_bundle(bundle_json).get("dsseEnvelope")
    try:
        (signature,) = envelope["signatures"]
        return (
            str(envelope["payloadType"]),
            base64.b64decode(envelope["payload"], validate=True),
            base64.b64decode(signature["sig"], validate=True),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(
            f"malformed DSSE envelope: needs payloadType, payload and exactly one signature ({exc!r})"
        ) from exc


def key_dsse_bundle(hint: str, payload: bytes, signature: bytes) -> bytes:
    """A key-mode DSSE bundle: the public-key hint and the envelope (an in-toto statement and the
    DER ECDSA signature over its pre-authentication encoding), as `cosign attest-blob --key k
    --new-bundle-format --tlog-upload=false` writes it."""
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode()}],
        },
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"


def key_bundle(hint: str, digest: bytes, signature: bytes) -> bytes:
    """A key-mode bundle: the public-key hint, the message digest and the DER ECDSA signature."""
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
            "signature": base64.b64encode(signature).decode(),
        },
    }
    return json.dumps(bundle, indent=2).encode() + b"\n"
