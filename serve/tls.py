"""TLS for `serve/`: certificate files that can be renewed in place, TLS 1.3-only contexts, and a
self-signed certificate for loopback/demo use.

The Incus client insists on TLS 1.3 (docs/serve.md), and DESIGN.md says the server speaks only
TLS 1.3 when TLS is on. `CertificateFiles` loads the certificate chain and key into a TLS 1.3-only
context with errors that name the file and the reason, and loads them again when asked (SIGHUP) or
when the files change (ACME / cert-manager renewals): new connections get the new context,
connections already open keep theirs. A renewal that cannot be loaded is logged and the previous
certificate stays in use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from talos_pipeline.core.errors import ConfigError

log = logging.getLogger("serve.tls")

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


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory, not a PEM file") from None
    except PermissionError:
        raise ConfigError(f"{flag} {path}: not readable by this user (uid {os.getuid()})") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot be read ({exc.strerror})") from None


def load_tls_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS 1.3-only server context; `ConfigError` names the file and what is wrong with it."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert_data, key_data = _read(cert_path, "--tls-cert"), _read(key_path, "--tls-key")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise ConfigError(f"--tls-cert {cert_path}: no PEM certificate in it") from None
    try:
        serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(f"--tls-key {key_path}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"--tls-key {key_path}: no PEM private key in it") from None
    expires = chain[0].not_valid_after_utc
    if expires <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"--tls-cert {cert_path}: the certificate expired on {expires:%Y-%m-%d %H:%M} UTC")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"--tls-key {key_path}: does not belong to the certificate in {cert_path}") from None
        raise ConfigError(f"--tls-cert {cert_path} / --tls-key {key_path}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"--tls-cert {cert_path} / --tls-key {key_path}: {exc.strerror or exc}") from None
    return restrict_to_tls13(context)


class CertificateFiles:
    """The server's certificate chain and key, re-read on `reload()` and when the files change."""

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._stamp = self._files_stamp()
        self.context = load_tls_context(self.cert_path, self.key_path)
        self.front = self.context
        self.front.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext) -> None:
        """Called by OpenSSL for every ClientHello (with or without SNI): hand the handshake the
        current context (the documented way to switch certificates per connection)."""
        if self.context is not front:
            connection.context = self.context

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert_path, self.key_path):
            try:
                st = path.stat()
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def reload(self, why: str) -> bool:
        """Load the files again; on failure keep serving the previous certificate (logged)."""
        self._stamp = self._files_stamp()
        try:
            self.context = load_tls_context(self.cert_path, self.key_path)
        except ConfigError as exc:
            log.error("TLS: %s: %s; still serving the previous certificate", why, exc)
            return False
        log.info("TLS: %s: loaded %s (expires %s)", why, self.cert_path, self.expiry())
        return True

    def reload_if_changed(self) -> bool:
        """Reload when either file's inode, size or mtime changed (mtime polling)."""
        if self._files_stamp() == self._stamp:
            return False
        return self.reload("the certificate files changed")

    def expiry(self) -> str:
        try:
            cert = x509.load_pem_x509_certificates(self.cert_path.read_bytes())[0]
        except (OSError, ValueError):
            return "unknown"
        return f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
