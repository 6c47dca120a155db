"""Verifying bundles the way `cosign verify-blob` (and, for attestations, `cosign
verify-blob-attestation`) does: a public key for key-mode bundles, an identity regexp and an
OIDC issuer (checked by the real sigstore verifier against a trusted root) for keyless ones.
The policies and the certificate fields read are in `docs/sigstore.md`; attestations in
`docs/provenance.md`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.verify import Verifier
from sigstore_models.common.v1 import HashAlgorithm

from ..errors import SigningError
from .base import GITHUB_ACTIONS_ISSUER, normalize_digest
from .bundles import (
    IN_TOTO_PAYLOAD_TYPE,
    bundle_content,
    bundle_kind,
    dsse_envelope,
    dsse_pae,
    load_public_key,
    parse_bundle,
    public_key_hint,
)

_OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OID_OTHERNAME_SAN = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def _der_string(value: bytes) -> str:
    """Decode a DER string (UTF8String etc.) as Fulcio writes the v2 extensions."""
    if len(value) < 2:
        raise ValueError("truncated DER")
    length = value[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(value[2 : 2 + n], "big")
        offset = 2 + n
    return value[offset : offset + length].decode("utf-8")


def certificate_issuer(cert: x509.Certificate) -> str | None:
    """The OIDC issuer in a Fulcio certificate (extension .1.8, else the deprecated .1.1)."""
    v2 = _unrecognized_extension(cert, _OID_ISSUER_V2)
    if v2 is not None:
        return _der_string(v2)
    v1 = _unrecognized_extension(cert, _OID_ISSUER_V1)
    return None if v1 is None else v1.decode("utf-8")


def _unrecognized_extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The raw value of an extension `cryptography` does not parse (Fulcio's own OIDs)."""
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return ext.value if isinstance(ext, x509.UnrecognizedExtension) else None


def certificate_identities(cert: x509.Certificate) -> list[str]:
    """SAN values cosign matches identities against: URIs, emails, Sigstore other names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    values: list[str] = list(san.get_values_for_type(x509.UniformResourceIdentifier))
    values += san.get_values_for_type(x509.RFC822Name)
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == _OID_OTHERNAME_SAN:
            try:
                values.append(_der_string(other.value))
            except (ValueError, UnicodeDecodeError):
                pass
    return values


class _IdentityPolicy:
    """cosign's --certificate-identity-regexp / --certificate-oidc-issuer as a sigstore policy.

    The SAN regexp is searched (unanchored, like Go's MatchString); the issuer is exact.
    """

    def __init__(self, identity_regexp: str, oidc_issuer: str) -> None:
        self.identity_regexp = identity_regexp
        self.pattern = re.compile(identity_regexp)
        self.oidc_issuer = oidc_issuer
        self.matched_identity: str | None = None
        self.issuer: str | None = None

    def verify(self, cert: x509.Certificate) -> None:

        issuer = certificate_issuer(cert)
        if issuer is None:
            raise VerificationError("the certificate has no OIDC issuer extension")
        if issuer != self.oidc_issuer:
            raise VerificationError(
                f"certificate issuer {issuer} does not match the expected OIDC issuer {self.oidc_issuer}"
            )
        identities = certificate_identities(cert)
        for identity in identities:
            if self.pattern.search(identity):
                self.matched_identity = identity
                self.issuer = issuer
                return
        shown = ", ".join(identities) or "(none)"
        raise VerificationError(f"certificate identity {shown} does not match regexp {self.identity_regexp}")


def _load_trusted_root(
    trust_config_path: str | os.PathLike[str] | None,
    trusted_root_path: str | os.PathLike[str] | None,
) -> tuple[TrustedRoot, str]:
    """A sigstore TrustedRoot from a trusted_root.json or a ClientTrustConfig (either file
    works for either argument), else the public-good root."""

    path = trusted_root_path or trust_config_path
    try:
        if not path:
            return ClientTrustConfig.production().trusted_root, "the Sigstore public-good root"
        path = os.fspath(path)
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise SigningError(f"cannot read the trust root {path}: {exc.strerror}") from exc
        media_type = str(json.loads(raw).get("mediaType", ""))
        if "clienttrustconfig" in media_type:
            return ClientTrustConfig.from_json(raw).trusted_root, path
        return TrustedRoot.from_file(path), path
    except SigningError:
        raise
    except Exception as exc:
        raise SigningError(
            f"cannot load the Sigstore trust root {path or '(public good)'}: {type(exc).__name__}: {exc}"
        ) from exc


def verify_bundle(
    artifact: bytes | str,
    bundle_json: bytes | str,
    *,
    key_pem: bytes | str | None = None,
    trust_config_path: str | os.PathLike[str] | None = None,
    trusted_root_path: str | os.PathLike[str] | None = None,
    identity_regexp: str | None = None,
    oidc_issuer: str | None = None,
) -> str:
    """Verify a bundle; return what was verified, or raise `SigningError` saying why not.

    ``artifact``: the file's bytes, or (a ``str``) its sha256 hex digest — for big files, which
    are then verified without reading them. Keyless bundles need ``identity_regexp`` (searched
    in the certificate SAN, like cosign's ``--certificate-identity-regexp``; keep the trailing
    ``/`` after the repository) and ``oidc_issuer`` (exact), and are checked with the real
    sigstore verifier against ``trusted_root_path`` / ``trust_config_path`` (either a
    trusted_root.json or a ClientTrustConfig), else the
    public-good root. Key bundles need ``key_pem`` (PEM public key).
    """
    if isinstance(artifact, str):
        hex_digest = normalize_digest(artifact)
        what = f"sha256:{hex_digest}"
    elif isinstance(artifact, (bytes, bytearray, memoryview)):
        artifact = bytes(artifact)
        hex_digest = hashlib.sha256(artifact).hexdigest()
        what = f"the artifact ({len(artifact)} bytes, sha256:{hex_digest})"
    else:
        raise SigningError(f"artifact must be bytes or a sha256 hex string, not {type(artifact).__name__}")

    policy = _policy_for(bundle_json, key_pem, identity_regexp, oidc_issuer)
    if not isinstance(policy, tuple):
        return _verify_key_bundle(hex_digest, what, parse_bundle(bundle_json), policy)
    return _verify_keyless(
        hex_digest, artifact, what, bundle_json, trust_config_path, trusted_root_path, *policy
    )  # fmt: skip


def _policy_for(
    bundle_json: bytes | str, key_pem: bytes | str | None, identity_regexp: str | None, oidc_issuer: str | None
) -> bytes | str | tuple[str, str]:
    """What verifies this bundle: the public key (a key-mode bundle) or the identity regexp and
    OIDC issuer (a keyless one); refused when the policy given does not fit the bundle's kind."""
    if bundle_kind(bundle_json) == "key":
        if key_pem is None:
            raise SigningError(
                "this is a key-mode bundle (public-key hint, no certificate): pass the public key to verify it"
            )
        return key_pem
    if key_pem is not None:
        raise SigningError(
            "this is a keyless bundle (Fulcio certificate), not signed with a key: verify it with "
            "an identity regexp and an OIDC issuer instead of a public key"
        )
    if not identity_regexp or not oidc_issuer:
        raise SigningError(
            "verifying a keyless bundle needs both an identity regexp (e.g. "
            "'^https://github.com/ORG/REPO/') and an OIDC issuer (e.g. "
            f"'{GITHUB_ACTIONS_ISSUER}')"
        )
    return identity_regexp, oidc_issuer


def _verify_key_bundle(hex_digest: str, what: str, bundle: dict[str, Any], key_pem: bytes | str) -> str:
    public_key = load_public_key(key_pem)
    our_hint = public_key_hint(public_key)
    try:
        message = bundle["messageSignature"]
        algorithm = message["messageDigest"]["algorithm"]
        recorded = base64.b64decode(message["messageDigest"]["digest"], validate=True)
        signature = base64.b64decode(message["signature"], validate=True)
        hint = bundle["verificationMaterial"]["publicKey"].get("hint")
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(
            f"malformed key-mode bundle: needs messageSignature.messageDigest and signature ({exc})"
        ) from exc
    if algorithm != "SHA2_256":
        raise SigningError(f"unsupported message digest algorithm {algorithm!r} (expected SHA2_256)")
    if recorded.hex() != hex_digest:
        raise SigningError(f"signature does not match {what}: the bundle is for sha256:{recorded.hex()}")
    try:
        public_key.verify(signature, bytes.fromhex(hex_digest), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature as exc:
        if hint and hint != our_hint:
            raise SigningError(
                f"the bundle was signed with the key {hint}, not with the given public key {our_hint}"
            ) from exc
        raise SigningError(f"signature does not match {what} under the public key {our_hint}") from exc
    return (
        f"verified key-mode signature (NOT keyless: no certificate, no transparency log) over "
        f"{what} with public key {our_hint}"
    )


def _keyless_setup(
    bundle_json: bytes | str,
    trust_config_path: str | os.PathLike[str] | None,
    trusted_root_path: str | os.PathLike[str] | None,
    identity_regexp: str,
    oidc_issuer: str,
) -> tuple[_IdentityPolicy, Verifier, str, Bundle]:
    """The identity policy, a verifier on the trusted root (and where it came from), the bundle."""
    try:
        policy = _IdentityPolicy(identity_regexp, oidc_issuer)
    except re.error as exc:
        raise SigningError(f"invalid identity regexp {identity_regexp!r}: {exc}") from exc
    trusted_root, root_source = _load_trusted_root(trust_config_path, trusted_root_path)
    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as exc:
        raise SigningError(f"the bundle is not a valid Sigstore bundle: {exc}") from exc
    return policy, Verifier(trusted_root=trusted_root), root_source, bundle


def _keyless_failure(exc: Exception, what: str, root_source: str) -> SigningError:
    """What a failed sigstore verification means, in the words `talos-pipeline verify` prints."""
    if not isinstance(exc, SigstoreError):
        return SigningError(f"bundle verification failed: {type(exc).__name__}: {exc}")
    message = str(exc)
    lowered = message.lower()
    if "digest mismatch" in lowered or "signature is invalid for input" in lowered or "dsse: invalid" in lowered:
        return SigningError(f"signature does not match {what}: {message}")
    if "certificate chain" in lowered:
        return SigningError(f"the signing certificate does not chain to the trusted root {root_source}: {message}")
    return SigningError(f"bundle verification failed: {message}")


def _keyless_summary(bundle_json: bytes | str, policy: _IdentityPolicy, root_source: str) -> str:
    tlog = (json.loads(bundle_json).get("verificationMaterial") or {}).get("tlogEntries") or [{}]
    log_index = tlog[0].get("logIndex", "?")
    integrated = tlog[0].get("integratedTime")
    when = datetime.fromtimestamp(int(integrated), tz=UTC).isoformat() if integrated else "unknown time"
    return (
        f"identity {policy.matched_identity} (matches {policy.identity_regexp!r}), OIDC issuer "
        f"{policy.issuer}, Rekor log index {log_index} integrated at {when}, trust root {root_source}"
    )


def _verify_keyless(
    hex_digest: str,
    artifact: bytes | str,
    what: str,
    bundle_json: bytes | str,
    trust_config_path: str | os.PathLike[str] | None,
    trusted_root_path: str | os.PathLike[str] | None,
    identity_regexp: str,
    oidc_issuer: str,
) -> str:
    policy, verifier, root_source, bundle = _keyless_setup(
        bundle_json, trust_config_path, trusted_root_path, identity_regexp, oidc_issuer
    )
    subject: bytes | Hashed
    if isinstance(artifact, bytes):
        subject = artifact
    else:
        subject = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
    try:
        verifier.verify_artifact(subject, bundle, policy)
    except Exception as exc:
        raise _keyless_failure(exc, what, root_source) from exc
    return f"verified keyless Sigstore signature over {what}: " + _keyless_summary(bundle_json, policy, root_source)


def verify_attestation(
    bundle_json: bytes | str,
    *,
    key_pem: bytes | str | None = None,
    trust_config_path: str | os.PathLike[str] | None = None,
    trusted_root_path: str | os.PathLike[str] | None = None,
    identity_regexp: str | None = None,
    oidc_issuer: str | None = None,
) -> tuple[bytes, str]:
    """Verify a DSSE bundle (a signed in-toto statement) under the same policy as `verify_bundle`;
    return the statement's exact bytes and what was verified, or raise `SigningError`.

    Only the envelope is checked here: whether the statement's subject is the right file is the
    caller's question (`core/provenance.py`).
    """
    if bundle_content(bundle_json) != "dsse":
        raise SigningError("not an attestation: the bundle holds a file signature, not a DSSE envelope")
    chosen = _policy_for(bundle_json, key_pem, identity_regexp, oidc_issuer)
    if not isinstance(chosen, tuple):
        payload_type, payload, summary = _verify_key_dsse(bundle_json, chosen)
    else:
        policy, verifier, root_source, bundle = _keyless_setup(
            bundle_json, trust_config_path, trusted_root_path, *chosen
        )
        try:
            payload_type, payload = verifier.verify_dsse(bundle, policy)
        except Exception as exc:
            raise _keyless_failure(exc, "the attestation's statement", root_source) from exc
        summary = "keyless Sigstore signature: " + _keyless_summary(bundle_json, policy, root_source)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SigningError(f"the DSSE payload is {payload_type!r}, not an in-toto statement ({IN_TOTO_PAYLOAD_TYPE})")
    return payload, f"verified attestation ({summary})"


def _verify_key_dsse(bundle_json: bytes | str, key_pem: bytes | str) -> tuple[str, bytes, str]:
    public_key = load_public_key(key_pem)
    our_hint = public_key_hint(public_key)
    payload_type, payload, signature = dsse_envelope(bundle_json)
    hint = (parse_bundle(bundle_json).get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
    try:
        public_key.verify(signature, dsse_pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        if hint and hint != our_hint:
            raise SigningError(
                f"the attestation was signed with the key {hint}, not with the given public key {our_hint}"
            ) from exc
        raise SigningError(
            f"signature does not match the attestation's statement under the public key {our_hint}"
        ) from exc
    return payload_type, payload, f"key-mode signature, NOT keyless, public key {our_hint}"
