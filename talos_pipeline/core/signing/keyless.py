"""Keyless signing (`TALOS_SIGNING=sigstore`): an ambient OIDC token, one short-lived Fulcio
certificate per run, every signature logged in Rekor v1 (readable by cosign 2.4 and later):
file signatures as hashedrekord entries, provenance attestations (DSSE) as dsse entries.

Users verify with `cosign verify-blob --bundle X.sigstore.json --certificate-identity-regexp
'^https://github.com/ORG/REPO/' --certificate-oidc-issuer https://token.actions.githubusercontent.com X`
(add `--trusted-root` for a private Sigstore instance); see `docs/sigstore.md`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from sigstore.dsse import Statement
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle as SigstoreBundle
from sigstore.models import ClientTrustConfig
from sigstore.oidc import IdentityError, IdentityToken, detect_credential
from sigstore.sign import Signer as SigningSession
from sigstore.sign import SigningContext
from sigstore_models.common.v1 import HashAlgorithm

from ..errors import SigningError
from ..settings import SigningMode
from .base import ENV_KEY, ENV_MODE, ENV_TRUST_CONFIG, Signer, normalize_digest
from .verification import certificate_identities

_logger = logging.getLogger(__name__)
# Renew the Fulcio certificate when less than this is left (Rekor checks it at integration).
_CERT_RENEW_MARGIN = timedelta(seconds=60)
_NO_TOKEN_HELP = (
    "run in GitHub Actions with `permissions: id-token: write`, "
    f"or set {ENV_MODE}=key with {ENV_KEY}, or {ENV_MODE}=none"
)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _explain(exc: BaseException, service: str, url: str | None) -> str:
    """A one-line reason for a failed exchange with a Sigstore service."""

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


class SigstoreSigner(Signer):
    """Mode ``sigstore``: keyless signing with Fulcio and Rekor v1.

    ``trust_config_path``: a ClientTrustConfig JSON (trusted root + signing config); when None,
    the public-good instance (TUF refresh).
    ``identity_token``: a raw OIDC JWT; when None, the ambient one (GitHub Actions).

    One Fulcio certificate per signer: the first signature (or `open`) gets the token and the
    certificate, later ones reuse them. If the certificate is about to expire (10 min) the
    signer gets a fresh ambient token and a new certificate.
    """

    mode = SigningMode.SIGSTORE

    def __init__(
        self,
        *,
        trust_config_path: str | os.PathLike[str] | None = None,
        identity_token: str | None = None,
    ) -> None:
        self.trust_config_path: str | None = os.fspath(trust_config_path) if trust_config_path else None
        self._explicit_token = identity_token
        self._lock = threading.RLock()
        self._stack: ExitStack | None = None
        self._signer: SigningSession | None = None
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

    def _load_trust_config(self) -> ClientTrustConfig:
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

    def _get_token(self) -> IdentityToken:
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
        self._session()

    def _session(self) -> SigningSession:
        """The open sigstore signer; the first call gets the token and the certificate."""
        with self._lock:
            if self._signer is not None:
                return self._signer

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
            return signer

    def close(self) -> None:
        with self._lock:
            if self._stack is not None:
                self._stack.close()
            self._stack = None
            self._signer = None

    # -- signing --------------------------------------------------------------------------

    def _sign(self, sign: Callable[[SigningSession], SigstoreBundle], what: str) -> bytes:
        """Run `sign` with the session, renewing the certificate when it is about to expire."""
        with self._lock:
            if (
                self._signer is not None
                and self._cert_not_after is not None
                and datetime.now(UTC) + _CERT_RENEW_MARGIN >= self._cert_not_after
            ):
                _logger.info("Sigstore: signing certificate about to expire; getting a new one")
                self.close()
            session = self._session()
            try:
                bundle = sign(session)
            except Exception as exc:
                if type(exc).__name__ == "ExpiredCertificate":
                    self.close()
                    session = self._session()
                    try:
                        bundle = sign(session)
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
        what = f"{len(data)} bytes (sha256 {hashlib.sha256(data).hexdigest()})"
        return self._sign(lambda session: session.sign_artifact(data), what)

    def sign_digest(self, sha256_hex: str) -> bytes:
        hex_digest = normalize_digest(sha256_hex)
        hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest))
        return self._sign(lambda session: session.sign_artifact(hashed), f"sha256:{hex_digest}")

    def sign_statement(self, statement: bytes) -> bytes:
        try:
            parsed = Statement(statement)
        except SigstoreError as exc:
            raise SigningError(f"not an in-toto statement sigstore can sign: {exc}") from exc
        what = f"an in-toto statement (sha256 {hashlib.sha256(statement).hexdigest()})"
        return self._sign(lambda session: session.sign_dsse(parsed), what)

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
