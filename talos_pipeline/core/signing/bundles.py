"""The Sigstore bundle format as this project reads and writes it.

Keyless bundles come from sigstore-python; key-mode bundles carry a public-key hint instead of
a certificate and no transparency-log entry, exactly what `cosign sign-blob --key k
--new-bundle-format --tlog-upload=false` writes (see `docs/sigstore.md`).
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
