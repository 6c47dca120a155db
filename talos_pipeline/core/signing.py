"""Sigstore bundles for published files: keyless (Fulcio + Rekor), key mode, or none.

Every published file ``X`` gets ``X.sigstore.json`` next to it, in the standard Sigstore bundle
format (``application/vnd.dev.sigstore.bundle.v0.3+json``) that ``cosign verify-blob --bundle``
reads. Large files are signed by their precomputed sha256 (`Signer.sign_digest`), never read
again.

Modes (``TALOS_SIGNING``):

- ``sigstore``: keyless. An ambient OIDC identity token (GitHub Actions with
  ``permissions: id-token: write``) buys one short-lived Fulcio certificate per `Signer`; every
  signature is logged in Rekor v1. Users verify with::

      cosign verify-blob --bundle X.sigstore.json \\
        --certificate-identity-regexp '^https://github.com/ORG/REPO/' \\
        --certificate-oidc-issuer https://token.actions.githubusercontent.com X

  (add ``--trusted-root trusted_root.json`` for a private Sigstore instance).
- ``key``: an ECDSA P-256 PEM key (``TALOS_SIGNING_KEY``, text or path; password in
  ``TALOS_SIGNING_KEY_PASSWORD``). NOT keyless: no certificate, no transparency log; whoever holds
  the public key can verify (``cosign verify-blob --key pub.pem --insecure-ignore-tlog``).
- ``none``: no bundles.

Plain Python: no Dagster imports. Every failure is a `SigningError` saying what failed and what
to do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from talos_pipeline.core.errors import PipelineError

_logger = logging.getLogger(__name__)

MODES = ("sigstore", "key", "none")
BUNDLE_SUFFIX = ".sigstore.json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
GITHUB_ACTIONS_ISSUER = "https://token.actions.githubusercontent.com"

ENV_MODE = "TALOS_SIGNING"
ENV_KEY = "TALOS_SIGNING_KEY"
ENV_KEY_PASSWORD = "TALOS_SIGNING_KEY_PASSWORD"
ENV_TRUST_CONFIG = "TALOS_SIGSTORE_TRUST_CONFIG"

_OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_OID_OTHERNAME_SAN = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Renew the Fulcio certificate when less than this is left (Rekor checks it at integration).
_CERT_RENEW_MARGIN = timedelta(seconds=60)

_NO_TOKEN_HELP = (
    "run in GitHub Actions with `permissions: id-token: write`, "
    f"or set {ENV_MODE}=key with {ENV_KEY}, or {ENV_MODE}=none"
)


class SigningError(PipelineError):
    """Signing or verification failed; the message says what failed and what to do."""


# --------------------------------------------------------------------------------------
# helpers


def bundle_path(artifact_path: str | os.PathLike[str]) -> Path:
    """Where the bundle of ``artifact_path`` goes: ``<file>.sigstore.json``."""
    return Path(f"{os.fspath(artifact_path)}{BUNDLE_SUFFIX}")


def _normalize_digest(sha256_hex: str) -> str:
    if not isinstance(sha256_hex, str):
        raise SigningError(f"a sha256 digest must be a hex string, got {type(sha256_hex).__name__}")
    value = sha256_hex.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not _HEX64.fullmatch(value):
        raise SigningError(
            f"invalid sha256 digest {sha256_hex!r}: expected 64 hex characters (optionally prefixed with 'sha256:')"
        )
    return value


def public_key_hint(public_key: ec.EllipticCurvePublicKey | bytes | str) -> str:
    """The bundle's ``publicKey.hint``: base64 of sha256 over the DER SubjectPublicKeyInfo."""
    if isinstance(public_key, (bytes, str)):
        public_key = _load_public_key(public_key)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _load_public_key(pem: bytes | str) -> ec.EllipticCurvePublicKey:
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


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _explain(exc: BaseException, service: str, url: str | None) -> str:
    """A one-line reason for a failed exchange with a Sigstore service."""
    import requests  # sigstore depends on requests

    where = f"{service} at {url}" if url else service
    chain = _exception_chain(exc)
    for item in chain:
        if isinstance(item, (requests.ConnectionError, requests.Timeout)):
            return (
                f"cannot reach {where} ({type(item).__name__}: {item}); check the network and "
                f"the Sigstore instance ({ENV_TRUST_CONFIG})"
            )
    for item in chain:
        response = getattr(item, "response", None)
        if isinstance(item, requests.HTTPError) and response is not None:
            detail = response.text.strip()
            try:
                body = response.json()
                if isinstance(body, dict) and body.get("message"):
                    detail = str(body["message"])
            except ValueError:
                pass
            return f"{where} refused the request (HTTP {response.status_code}): {detail[:500]}"
    text = str(exc) or type(exc).__name__
    return f"{where} failed: {type(exc).__name__}: {text}"


# --------------------------------------------------------------------------------------
# signers


class Signer(ABC):
    """Writes Sigstore bundles. ``sign_*`` return the bundle JSON bytes (None in mode none).

    Use as a context manager (or call `close`) so a keyless signer releases its session.
    """

    mode: str

    @abstractmethod
    def sign_bytes(self, data: bytes) -> bytes | None:
        """Sign a small artifact given by its content."""

    @abstractmethod
    def sign_digest(self, sha256_hex: str) -> bytes | None:
        """Sign an artifact by its precomputed sha256 (hex, optionally ``sha256:``-prefixed)."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs: what kind of signature, by whom, verified how."""

    def would_keep(self, bundle_json: bytes) -> bool:
        """Whether an existing bundle of an unchanged artifact can stay as it is.

        Signatures are not deterministic (ECDSA nonces, fresh certificates), so re-signing on every
        republish would rewrite objects that must not change. A bundle of the same kind (and, in key
        mode, the same key) stays; a change of mode or key replaces it.
        """
        try:
            return bundle_kind(bundle_json) == self.mode
        except SigningError:
            return False

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire credentials now (fail fast) instead of at the first signature."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release credentials and sessions."""

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoSigner(Signer):
    """Mode ``none``: writes no bundles."""

    mode = "none"

    def sign_bytes(self, data: bytes) -> None:
        return None

    def sign_digest(self, sha256_hex: str) -> None:
        _normalize_digest(sha256_hex)
        return None

    def describe(self) -> str:
        return f"signing disabled ({ENV_MODE}=none): no {BUNDLE_SUFFIX} bundles are written"


class KeySigner(Signer):
    """Mode ``key``: ECDSA P-256 with a PEM private key; cosign's key-format bundle.

    NOT keyless: the bundle carries only a public-key hint, no certificate and no transparency
    log entry.
    """

    mode = "key"

    def __init__(self, key: str | bytes, password: str | bytes | None = None) -> None:
        pem, source = self._read_key_material(key)
        if b"SIGSTORE PRIVATE KEY" in pem or b"COSIGN PRIVATE KEY" in pem:
            raise SigningError(
                f"{source} is a cosign-format encrypted key, which this pipeline cannot read: "
                "use a PKCS#8 PEM key from `talos-pipeline keygen` (or `openssl ecparam -genkey "
                "-name prime256v1 | openssl pkcs8 -topk8 -nocrypt`)"
            )
        pw = password.encode() if isinstance(password, str) else password
        try:
            private_key = serialization.load_pem_private_key(pem, password=pw or None)
        except TypeError as exc:
            if pw:
                raise SigningError(f"{source} is not encrypted but {ENV_KEY_PASSWORD} is set: unset it") from exc
            raise SigningError(f"{source} is encrypted: set {ENV_KEY_PASSWORD} to its password") from exc
        except ValueError as exc:
            hint = f" (wrong {ENV_KEY_PASSWORD}?)" if pw else ""
            raise SigningError(
                f"cannot load the signing key from {source}{hint}: expected a PEM private key: {exc}"
            ) from exc
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
            raise SigningError(
                f"the signing key in {source} must be ECDSA P-256 "
                f"(got {type(private_key).__name__}); create one with `talos-pipeline keygen`"
            )
        self._key = private_key
        self._source = source
        self.hint = public_key_hint(private_key.public_key())

    @staticmethod
    def _read_key_material(key: str | bytes) -> tuple[bytes, str]:
        if isinstance(key, bytes):
            key_text = key.decode("utf-8", errors="replace")
        else:
            key_text = key
        if "-----BEGIN" in key_text:
            return key_text.strip().encode() + b"\n", f"{ENV_KEY} (PEM text)"
        path = Path(key_text.strip()).expanduser()
        if not key_text.strip():
            raise SigningError(f"{ENV_KEY} is empty: give the PEM text or the path of a PEM file")
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise SigningError(f"{ENV_KEY} is neither PEM text nor a readable file: {path}: {exc.strerror}") from exc

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _bundle(self, digest: bytes, signature: bytes) -> bytes:
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": self.hint}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": base64.b64encode(digest).decode(),
                },
                "signature": base64.b64encode(signature).decode(),
            },
        }
        return json.dumps(bundle, indent=2).encode() + b"\n"

    def would_keep(self, bundle_json: bytes) -> bool:
        if not super().would_keep(bundle_json):
            return False
        material = _parse_bundle(bundle_json).get("verificationMaterial") or {}
        return (material.get("publicKey") or {}).get("hint") == self.hint

    def sign_bytes(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._bundle(digest, signature)

    def sign_digest(self, sha256_hex: str) -> bytes:
        digest = bytes.fromhex(_normalize_digest(sha256_hex))
        signature = self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return self._bundle(digest, signature)

    def describe(self) -> str:
        return (
            f"key mode, NOT keyless: ECDSA P-256 key from {self._source} (public key hint "
            f"{self.hint}); bundles carry no certificate and no transparency-log entry; verify "
            "with `cosign verify-blob --key <public key> --insecure-ignore-tlog --bundle X"
            f"{BUNDLE_SUFFIX} X`"
        )


class SigstoreSigner(Signer):
    """Mode ``sigstore``: keyless signing with Fulcio and Rekor v1.

    ``trust_config_path``: a ClientTrustConfig JSON (trusted root + signing config); when None,
    ``$TALOS_SIGSTORE_TRUST_CONFIG`` if set, else the public-good instance (TUF refresh).
    ``identity_token``: a raw OIDC JWT; when None, the ambient one (GitHub Actions).

    One Fulcio certificate per signer: the first signature (or `open`) gets the token and the
    certificate, later ones reuse them. If the certificate is about to expire (10 min) the
    signer gets a fresh ambient token and a new certificate.
    """

    mode = "sigstore"

    def __init__(
        self,
        *,
        trust_config_path: str | os.PathLike[str] | None = None,
        identity_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        path = trust_config_path if trust_config_path is not None else env.get(ENV_TRUST_CONFIG)
        self.trust_config_path: str | None = os.fspath(path) if path else None
        self._explicit_token = identity_token
        self._lock = threading.RLock()
        self._stack: ExitStack | None = None
        self._signer: Any = None
        self._identity: str | None = None
        self._issuer: str | None = None
        self._cert_not_after: datetime | None = None
        self._cert_identity: str | None = None
        self._fulcio_url: str | None = None
        self._rekor_url: str | None = None
        self.certificates_requested = 0

    # -- setup ----------------------------------------------------------------------------

    def _trust_source(self) -> str:
        return self.trust_config_path or "the Sigstore public-good instance"

    def _load_trust_config(self) -> Any:
        from sigstore.models import ClientTrustConfig

        try:
            if self.trust_config_path:
                try:
                    raw = Path(self.trust_config_path).read_text()
                except OSError as exc:
                    raise SigningError(
                        f"cannot read the Sigstore trust config {self.trust_config_path}: "
                        f"{exc.strerror}; fix {ENV_TRUST_CONFIG}"
                    ) from exc
                trust_config = ClientTrustConfig.from_json(raw)
            else:
                trust_config = ClientTrustConfig.production()
        except SigningError:
            raise
        except Exception as exc:
            raise SigningError(
                f"cannot load the Sigstore trust config from {self._trust_source()}: {type(exc).__name__}: {exc}"
            ) from exc
        # Rekor v1 entries are readable by cosign >= 2.4; v2 would need cosign >= 2.6.
        trust_config.force_tlog_version = 1
        return trust_config

    def _get_token(self) -> Any:
        from sigstore.oidc import IdentityError, IdentityToken, detect_credential

        raw = self._explicit_token
        if raw is None:
            try:
                raw = detect_credential()
            except IdentityError as exc:
                raise SigningError(f"cannot get the ambient OIDC identity token: {exc}; {_NO_TOKEN_HELP}") from exc
            except Exception as exc:  # network errors from the token endpoint
                raise SigningError(
                    f"cannot get the ambient OIDC identity token: {type(exc).__name__}: {exc}; {_NO_TOKEN_HELP}"
                ) from exc
            if raw is None:
                raise SigningError(f"no ambient OIDC identity token: {_NO_TOKEN_HELP}")
        try:
            token = IdentityToken(raw)
        except IdentityError as exc:
            cause = exc.__cause__
            if "validity period" in str(exc) or type(cause).__name__ == "ExpiredSignatureError":
                raise SigningError(
                    "the OIDC identity token has expired: request a fresh one (GitHub Actions "
                    "tokens last minutes; sign soon after fetching it)"
                ) from exc
            raise SigningError(f"the OIDC identity token is unusable: {exc}") from exc
        return token

    def open(self) -> None:
        """Get the identity token and the Fulcio certificate (idempotent)."""
        with self._lock:
            if self._signer is not None:
                return
            from sigstore.sign import SigningContext

            trust_config = self._load_trust_config()
            try:
                signing_config = trust_config.signing_config
                self._fulcio_url = signing_config.get_fulcio().url
                tlogs = signing_config.get_tlogs()
                self._rekor_url = getattr(tlogs[0], "url", None) if tlogs else None
                context = SigningContext.from_trust_config(trust_config)
            except Exception as exc:
                raise SigningError(
                    f"the Sigstore signing config from {self._trust_source()} is unusable: "
                    f"{type(exc).__name__}: {exc} (it needs a Fulcio CA URL and a Rekor v1 log)"
                ) from exc
            token = self._get_token()
            stack = ExitStack()
            try:
                signer = stack.enter_context(context.signer(token, cache=True))
            except Exception as exc:
                stack.close()
                if type(exc).__name__ == "ExpiredIdentity":
                    raise SigningError(
                        "the OIDC identity token has expired before Fulcio could be asked for a "
                        "certificate: request a fresh one"
                    ) from exc
                raise SigningError(
                    "cannot get a signing certificate: "
                    + _explain(exc, "Fulcio", self._fulcio_url)
                    + f" (identity {token.identity} from {token.issuer})"
                ) from exc
            self.certificates_requested += 1
            self._stack = stack
            self._signer = signer
            self._identity = token.identity
            self._issuer = token.issuer
            self._cert_not_after = None
            self._cert_identity = None
            _logger.info(
                "Sigstore: got a Fulcio certificate for %s (issuer %s) from %s",
                token.identity,
                token.issuer,
                self._fulcio_url,
            )

    def close(self) -> None:
        with self._lock:
            if self._stack is not None:
                self._stack.close()
            self._stack = None
            self._signer = None

    # -- signing --------------------------------------------------------------------------

    def _sign(self, payload: Any, what: str) -> bytes:
        with self._lock:
            if (
                self._signer is not None
                and self._cert_not_after is not None
                and datetime.now(UTC) + _CERT_RENEW_MARGIN >= self._cert_not_after
            ):
                _logger.info("Sigstore: signing certificate about to expire; getting a new one")
                self.close()
            self.open()
            try:
                bundle = self._signer.sign_artifact(payload)
            except Exception as exc:
                if type(exc).__name__ == "ExpiredCertificate":
                    self.close()
                    self.open()
                    try:
                        bundle = self._signer.sign_artifact(payload)
                    except Exception as exc2:
                        raise SigningError(
                            f"Sigstore signing of {what} failed: " + _explain(exc2, "Rekor", self._rekor_url)
                        ) from exc2
                else:
                    raise SigningError(
                        f"Sigstore signing of {what} failed: " + _explain(exc, "Rekor", self._rekor_url)
                    ) from exc
            cert = bundle.signing_certificate
            self._cert_not_after = cert.not_valid_after_utc
            self._cert_identity = ", ".join(certificate_identities(cert)) or None
            return bundle.to_json().encode()

    def sign_bytes(self, data: bytes) -> bytes:
        return self._sign(data, f"{len(data)} bytes (sha256 {hashlib.sha256(data).hexdigest()})")

    def sign_digest(self, sha256_hex: str) -> bytes:
        from sigstore.hashes import Hashed
        from sigstore_models.common.v1 import HashAlgorithm

        hex_digest = _normalize_digest(sha256_hex)
        hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
        return self._sign(hashed, f"sha256:{hex_digest}")

    def describe(self) -> str:
        who = (
            f"certificate identity {self._cert_identity or '(not yet issued)'} (token subject "
            f"{self._identity}, issuer {self._issuer})"
            if self._identity
            else "identity from the "
            + ("given OIDC token" if self._explicit_token else "ambient OIDC token (GitHub Actions)")
        )
        return (
            f"keyless Sigstore signing: {who}; one short-lived Fulcio certificate per run, every "
            f"signature logged in Rekor v1; trust: {self._trust_source()}"
        )


def make_signer(
    mode: str,
    *,
    key: str | bytes | None = None,
    key_password: str | None = None,
    trust_config_path: str | os.PathLike[str] | None = None,
) -> Signer:
    """The signer for ``mode`` (``sigstore`` | ``key`` | ``none``); raises `SigningError`."""
    normalized = (mode or "").strip().lower()
    if normalized not in MODES:
        raise SigningError(f"unknown signing mode {mode!r}: {ENV_MODE} must be one of {', '.join(MODES)}")
    if normalized == "none":
        return NoSigner()
    if normalized == "key":
        if not key:
            raise SigningError(
                f"{ENV_MODE}=key needs {ENV_KEY} (the PEM text or the path of a PEM file); "
                "create a key pair with `talos-pipeline keygen`"
            )
        return KeySigner(key, key_password)
    return SigstoreSigner(trust_config_path=trust_config_path)


def signer_from_env(environ: Mapping[str, str] | None = None, *, default_mode: str = "sigstore") -> Signer:
    """`make_signer` configured by TALOS_SIGNING, TALOS_SIGNING_KEY, TALOS_SIGNING_KEY_PASSWORD
    and TALOS_SIGSTORE_TRUST_CONFIG (unset TALOS_SIGNING means ``default_mode``)."""
    env = os.environ if environ is None else environ
    return make_signer(
        env.get(ENV_MODE) or default_mode,
        key=env.get(ENV_KEY) or None,
        key_password=env.get(ENV_KEY_PASSWORD) or None,
        trust_config_path=env.get(ENV_TRUST_CONFIG) or None,
    )


def generate_key_pair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    *,
    password: str | None = None,
    overwrite: bool = True,
) -> str:
    """Write a new ECDSA P-256 key pair for key mode; returns the public-key hint.

    Private: PEM PKCS#8 (encrypted if ``password``), mode 0600 from its first byte (written to a
    0600 temporary file, then renamed). Public: PEM SubjectPublicKeyInfo (what
    ``cosign verify-blob --key`` takes). Existing files are replaced (the CLI asks for --force
    first); ``overwrite=False`` refuses instead.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise SigningError(f"{path} already exists: refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    temporary = private_path.with_name(f".{private_path.name}.{os.getpid()}.tmp")
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        os.chmod(temporary, 0o600)  # in case of an unusual umask/ACL
        os.replace(temporary, private_path)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise SigningError(f"cannot write the key pair: {exc}") from exc
    return public_key_hint(key.public_key())


# --------------------------------------------------------------------------------------
# verification


def _parse_bundle(bundle_json: bytes | str) -> dict[str, Any]:
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
    material = _parse_bundle(bundle_json).get("verificationMaterial") or {}
    if "publicKey" in material:
        return "key"
    if "certificate" in material or "x509CertificateChain" in material:
        return "sigstore"
    raise SigningError("the bundle has neither a certificate nor a public-key hint in verificationMaterial")


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
    exts = cert.extensions
    try:
        ext = exts.get_extension_for_oid(_OID_ISSUER_V2).value
        return _der_string(ext.value)  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        pass
    try:
        ext = exts.get_extension_for_oid(_OID_ISSUER_V1).value
        return ext.value.decode("utf-8")  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        return None


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
        from sigstore.errors import VerificationError

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
) -> tuple[Any, str]:
    """A sigstore TrustedRoot from a trusted_root.json or a ClientTrustConfig (either file
    works for either argument), else $TALOS_SIGSTORE_TRUST_CONFIG, else the public-good root."""
    from sigstore.models import ClientTrustConfig, TrustedRoot

    path = trusted_root_path or trust_config_path or os.environ.get(ENV_TRUST_CONFIG)
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
    trusted_root.json or a ClientTrustConfig), else ``$TALOS_SIGSTORE_TRUST_CONFIG``, else the
    public-good root. Key bundles need ``key_pem`` (PEM public key).
    """
    if isinstance(artifact, str):
        hex_digest = _normalize_digest(artifact)
        what = f"sha256:{hex_digest}"
    elif isinstance(artifact, (bytes, bytearray, memoryview)):
        artifact = bytes(artifact)
        hex_digest = hashlib.sha256(artifact).hexdigest()
        what = f"the artifact ({len(artifact)} bytes, sha256:{hex_digest})"
    else:
        raise SigningError(f"artifact must be bytes or a sha256 hex string, not {type(artifact).__name__}")

    kind = bundle_kind(bundle_json)
    if kind == "key":
        if key_pem is None:
            raise SigningError(
                "this is a key-mode bundle (public-key hint, no certificate): pass the public key to verify it"
            )
        return _verify_key_bundle(hex_digest, what, _parse_bundle(bundle_json), key_pem)
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
    return _verify_keyless(
        hex_digest, artifact, what, bundle_json, trust_config_path, trusted_root_path,
        identity_regexp, oidc_issuer,
    )  # fmt: skip


def _verify_key_bundle(hex_digest: str, what: str, bundle: dict[str, Any], key_pem: bytes | str) -> str:
    public_key = _load_public_key(key_pem)
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
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore_models.common.v1 import HashAlgorithm

    try:
        policy = _IdentityPolicy(identity_regexp, oidc_issuer)
    except re.error as exc:
        raise SigningError(f"invalid identity regexp {identity_regexp!r}: {exc}") from exc
    trusted_root, root_source = _load_trusted_root(trust_config_path, trusted_root_path)
    try:
        bundle = Bundle.from_json(bundle_json)
    except Exception as exc:
        raise SigningError(f"the bundle is not a valid Sigstore bundle: {exc}") from exc
    subject: bytes | Any
    if isinstance(artifact, bytes):
        subject = artifact
    else:
        subject = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
    try:
        verifier = Verifier(trusted_root=trusted_root)
        verifier.verify_artifact(subject, bundle, policy)
    except SigstoreError as exc:
        message = str(exc)
        lowered = message.lower()
        if "digest mismatch" in lowered or "signature is invalid for input" in lowered:
            raise SigningError(f"signature does not match {what}: {message}") from exc
        if "certificate chain" in lowered:
            raise SigningError(
                f"the signing certificate does not chain to the trusted root {root_source}: {message}"
            ) from exc
        raise SigningError(f"bundle verification failed: {message}") from exc
    except Exception as exc:
        raise SigningError(f"bundle verification failed: {type(exc).__name__}: {exc}") from exc

    tlog = (json.loads(bundle_json).get("verificationMaterial") or {}).get("tlogEntries") or [{}]
    log_index = tlog[0].get("logIndex", "?")
    integrated = tlog[0].get("integratedTime")
    when = datetime.fromtimestamp(int(integrated), tz=UTC).isoformat() if integrated else "unknown time"
    return (
        f"verified keyless Sigstore signature over {what}: identity {policy.matched_identity} "
        f"(matches {identity_regexp!r}), OIDC issuer {policy.issuer}, Rekor log index "
        f"{log_index} integrated at {when}, trust root {root_source}"
    )
