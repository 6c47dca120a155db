"""Keys and certificates of the fake: a Fulcio-like CA (root + intermediate), a CT log that
embeds a real precertificate SCT in every leaf, and the Rekor log key.

Everything here is plain `cryptography`; the shapes follow what Fulcio issues for GitHub
Actions identities (the certificate fields are listed in docs/sigstore.md).
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from .der import der_octet_string, der_utf8_string

SCT_LIST_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _fulcio_oid(n: int) -> ObjectIdentifier:
    return ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{n}")


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key ID (sha256 of the DER SubjectPublicKeyInfo), as Sigstore uses it."""
    return hashlib.sha256(spki_der(key)).digest()


def _ca_cert(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
    not_before: datetime,
) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass
class GitHubClaims:
    """The subset of GitHub Actions OIDC claims that Fulcio turns into certificate fields."""

    claims: dict[str, object]

    def get(self, name: str, default: str = "") -> str:
        value = self.claims.get(name, default)
        return str(value)


@dataclass
class FakePKI:
    """All the fake's keys. One instance per fake Sigstore; two instances never trust each other."""

    name: str = "talos-fake-sigstore"
    cert_lifetime: timedelta = timedelta(minutes=10)
    not_before: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.oidc_key = ec.generate_private_key(ec.SECP256R1())

        org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name)
        self.root_name = x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, "fake-fulcio-root")])
        self.intermediate_name = x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, "fake-fulcio-intermediate")])
        self.root_cert = _ca_cert(
            subject=self.root_name,
            key=self.root_key,
            issuer=self.root_name,
            issuer_key=self.root_key,
            path_length=1,
            not_before=self.not_before,
        )
        self.intermediate_cert = _ca_cert(
            subject=self.intermediate_name,
            key=self.intermediate_key,
            issuer=self.root_name,
            issuer_key=self.root_key,
            path_length=0,
            not_before=self.not_before,
        )

    # --- Fulcio -------------------------------------------------------------------------

    @property
    def chain(self) -> list[x509.Certificate]:
        """CA chain from the issuing intermediate up to the root (Fulcio/trusted-root order)."""
        return [self.intermediate_cert, self.root_cert]

    def issue_leaf(self, public_key: ec.EllipticCurvePublicKey, claims: GitHubClaims) -> x509.Certificate:
        """A Fulcio-style code-signing leaf for a GitHub Actions token, with an embedded SCT."""
        now = datetime.now(UTC).replace(microsecond=0)
        issuer = claims.get("iss")
        job_workflow_ref = claims.get("job_workflow_ref")
        repository = claims.get("repository")
        owner = claims.get("repository_owner", repository.split("/")[0])
        server = "https://github.com"
        san = f"{server}/{job_workflow_ref}"
        run_uri = f"{server}/{repository}/actions/runs/{claims.get('run_id')}/attempts/{claims.get('run_attempt')}"
        raw_v1 = {  # deprecated extensions: raw (not DER) string values
            1: issuer,
            2: claims.get("event_name"),
            3: claims.get("sha"),
            4: claims.get("workflow"),
            5: repository,
            6: claims.get("ref"),
        }
        der_v2 = {  # current extensions: DER UTF8String values
            8: issuer,
            9: san,
            10: claims.get("job_workflow_sha"),
            11: claims.get("runner_environment"),
            12: f"{server}/{repository}",
            13: claims.get("sha"),
            14: claims.get("ref"),
            15: claims.get("repository_id"),
            16: f"{server}/{owner}",
            17: claims.get("repository_owner_id"),
            18: f"{server}/{claims.get('workflow_ref')}",
            19: claims.get("workflow_sha"),
            20: claims.get("event_name"),
            21: run_uri,
            22: claims.get("repository_visibility"),
        }
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + self.cert_lifetime)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()),
                critical=False,
            )
            # An empty subject makes the SAN critical (RFC 5280 4.2.1.6), as Fulcio does.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=True)
        )
        for n, value in raw_v1.items():
            if value:
                builder = builder.add_extension(
                    x509.UnrecognizedExtension(_fulcio_oid(n), value.encode()), critical=False
                )
        for n, value in der_v2.items():
            if value:
                builder = builder.add_extension(
                    x509.UnrecognizedExtension(_fulcio_oid(n), der_utf8_string(value)),
                    critical=False,
                )

        # Precertificate: the same TBS without the SCT list. The CT log signs it, and the
        # final certificate's tbs_precertificate_bytes (TBS minus the SCT extension) must
        # be byte-identical to it.
        precert = builder.sign(self.intermediate_key, hashes.SHA384())
        tbs = precert.tbs_certificate_bytes
        sct = self._sct(tbs)
        sct_list = struct.pack("!H", len(sct)) + sct
        sct_list = struct.pack("!H", len(sct_list)) + sct_list
        leaf = builder.add_extension(
            x509.UnrecognizedExtension(SCT_LIST_OID, der_octet_string(sct_list)), critical=False
        ).sign(self.intermediate_key, hashes.SHA384())
        if leaf.tbs_precertificate_bytes != tbs:  # pragma: no cover - self-check
            raise AssertionError("precertificate TBS does not survive adding the SCT list")
        return leaf

    # --- CT log -------------------------------------------------------------------------

    def _sct(self, tbs: bytes) -> bytes:
        """A v1 SignedCertificateTimestamp over a precert entry (RFC 6962 section 3.2)."""
        timestamp_ms = int(time.time() * 1000)
        issuer_key_hash = key_id(self.intermediate_key.public_key())
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp_ms, 1)  # v1, certificate_timestamp, precert_entry
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", 0)  # no CtExtensions
        )
        signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return (
            struct.pack("!B", 0)
            + key_id(self.ct_key.public_key())
            + struct.pack("!QH", timestamp_ms, 0)
            + struct.pack("!BB", 4, 3)  # sha256, ecdsa
            + struct.pack("!H", len(signature))
            + signature
        )
