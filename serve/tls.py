"""TLS for `serve/`: a self-signed certificate for loopback/demo use, and TLS 1.3-only contexts.

The Incus client insists on TLS 1.3 (reference/simplestreams-and-incus.md), and DESIGN.md says the
server speaks only TLS 1.3 when TLS is on. uvicorn's own options cannot express that
(`ssl_version` picks a protocol constant, `ssl_ciphers` only affects TLS <= 1.2), so the server
hands uvicorn `tls13_context_factory` through `uvicorn.Config(ssl_context_factory=...)`, the
supported hook: uvicorn builds its usual context from the cert/key files and we raise its minimum
version. The factory is a module-level function, so it also survives `--workers N` (each worker
process rebuilds its context from the pickled config).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)


def generate_self_signed(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    *,
    validity: dt.timedelta = VALIDITY,
) -> str:
    """Write an EC P-256 self-signed server certificate and its key; return the SHA-256 fingerprint.

    Every host becomes a SAN (an IP SAN for addresses, a DNS SAN for names): clients check the SAN,
    never the CN. The key file is created mode 0600. basicConstraints is CA:FALSE (it is a leaf
    that clients pin directly, e.g. `$INCUS_CONF/servercerts/<remote>.crt` or `SSL_CERT_FILE`).
    There is deliberately no keyUsage extension: OpenSSL only treats a certificate as self-issued
    (usable as its own trust anchor) when a present keyUsage includes keyCertSign, which a CA:FALSE
    certificate must not have.
    """
    hosts = [h for h in dict.fromkeys(hosts) if h]
    if not hosts:
        raise ValueError("a certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "talos-pipeline"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(cert_path), Path(key_path)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_fingerprint(cert_path: str | os.PathLike[str]) -> str:
    """SHA-256 of the DER certificate (what `incus remote` and browsers show), lowercase hex."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def restrict_to_tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_ssl_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context that accepts TLS 1.3 only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_path), str(key_path))
    return restrict_to_tls13(context)


def tls13_context_factory(config, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """`uvicorn.Config(ssl_context_factory=...)`: uvicorn's usual context, TLS 1.3 minimum."""
    return restrict_to_tls13(default_factory())
