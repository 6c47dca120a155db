"""Key mode (`TALOS_SIGNING=key`): ECDSA P-256 with a PEM private key, for private servers.

NOT keyless: the bundle carries only a public-key hint, no certificate and no transparency-log
entry; whoever holds the public key verifies (`cosign verify-blob --key pub.pem
--insecure-ignore-tlog`). `generate_key_pair` is `talos-pipeline keygen`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from ..errors import SigningError
from ..media import BUNDLE_SUFFIX
from ..settings import SigningMode
from .base import ENV_KEY, ENV_KEY_PASSWORD, Signer, normalize_digest
from .bundles import IN_TOTO_PAYLOAD_TYPE, dsse_pae, key_bundle, key_dsse_bundle, parse_bundle, public_key_hint


class KeySigner(Signer):
    """Mode ``key``: ECDSA P-256 with a PEM private key; cosign's key-format bundle.

    NOT keyless: the bundle carries only a public-key hint, no certificate and no transparency
    log entry.
    """

    mode = SigningMode.KEY

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

    def would_keep(self, bundle_json: bytes) -> bool:
        if not super().would_keep(bundle_json):
            return False
        material = parse_bundle(bundle_json).get("verificationMaterial") or {}
        return (material.get("publicKey") or {}).get("hint") == self.hint

    def sign_bytes(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        signature = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return key_bundle(self.hint, digest, signature)

    def sign_digest(self, sha256_hex: str) -> bytes:
        digest = bytes.fromhex(normalize_digest(sha256_hex))
        signature = self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return key_bundle(self.hint, digest, signature)

    def sign_statement(self, statement: bytes) -> bytes:
        signature = self._key.sign(dsse_pae(IN_TOTO_PAYLOAD_TYPE, statement), ec.ECDSA(hashes.SHA256()))
        return key_dsse_bundle(self.hint, statement, signature)

    def describe(self) -> str:
        return (
            f"key mode, NOT keyless: ECDSA P-256 key from {self._source} (public key hint "
            f"{self.hint}); bundles carry no certificate and no transparency-log entry; verify "
            "with `cosign verify-blob --key <public key> --insecure-ignore-tlog --bundle X"
            f"{BUNDLE_SUFFIX} X`"
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
