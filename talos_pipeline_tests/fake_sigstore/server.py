"""A loopback fake of the Sigstore services that keyless signing talks to.

One HTTP server on 127.0.0.1 (random port) serves:

- ``GET /token?audience=sigstore``: a GitHub Actions-like OIDC token endpoint
  (``Authorization: bearer <request token>``) answering ``{"value": "<ES256 JWT>"}``.
  Query ``kind=expired`` mints an expired token, ``kind=forged`` one signed by a key the fake
  Fulcio does not trust; ``repository=ORG/REPO`` overrides the repository claims.
- ``POST /api/v2/signingCert``: Fulcio. Verifies the JWT (signature, issuer, audience, expiry)
  and the CSR's proof of possession, then issues a short-lived leaf with the GitHub SAN, the
  Fulcio extensions and an embedded precertificate SCT. Refusals are 4xx JSON.
- ``POST /api/v1/log/entries`` / ``GET /api/v1/log``: Rekor v1 (hashedrekord 0.0.1 for
  signatures, dsse 0.0.1 for in-toto attestations) with a
  real RFC 6962 Merkle tree, inclusion proofs, a signed checkpoint whose origin is the log
  URL's ``host:port`` and a signed entry timestamp over RFC 8785 canonical JSON.

It writes a ClientTrustConfig JSON (trusted root + signing config pointing at itself) and the
bare ``trusted_root.json``, and counts what it did so tests can assert on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .merkle import MerkleLog
from .pki import FakePKI, GitHubClaims, key_id, spki_der

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
SIGNING_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
CLIENT_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def closed_port_url() -> str:
    """An http://127.0.0.1:PORT URL on which nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Counters:
    tokens_issued: int = 0
    token_requests_refused: int = 0
    fulcio_certificates_issued: int = 0
    fulcio_refusals: list[str] = field(default_factory=list)
    rekor_entries: int = 0
    rekor_refusals: list[str] = field(default_factory=list)


class FakeSigstore:
    """The fake services. Use as a context manager::

    with FakeSigstore(repository="ORG/REPO") as fake:
        # GITHUB_ACTIONS, ACTIONS_ID_TOKEN_REQUEST_*, TALOS_SIGSTORE_TRUST_CONFIG:
        env = ambient_env(fake)
        ...
        assert fake.counters.fulcio_certificates_issued == 1
    """

    def __init__(
        self,
        *,
        repository: str = "talos-org/talos-incus",
        ref: str = "refs/heads/main",
        workflow_path: str = ".github/workflows/publish.yml",
        cert_lifetime: timedelta = timedelta(minutes=10),
        token_lifetime: timedelta = timedelta(minutes=5),
        workdir: str | Path | None = None,
    ) -> None:
        self.repository = repository
        self.ref = ref
        self.workflow_path = workflow_path
        self.token_lifetime = token_lifetime
        self.pki = FakePKI(cert_lifetime=cert_lifetime)
        self.foreign_oidc_key = ec.generate_private_key(ec.SECP256R1())
        self.request_token = "fake-actions-request-" + uuid.uuid4().hex
        self.counters = Counters()
        self.tree_id = random.randrange(1 << 62, 1 << 63)
        self._log = MerkleLog()
        self._entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fake-sigstore-"))
        self.trust_config_path = self.workdir / "trust_config.json"
        self.trusted_root_path = self.workdir / "trusted_root.json"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeSigstore:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-sigstore", daemon=True)
        self._thread.start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.trust_config_path.write_text(json.dumps(self.client_trust_config(), indent=2))
        self.trusted_root_path.write_text(json.dumps(self.trusted_root(), indent=2))
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeSigstore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses ----------------------------------------------------------------------

    @property
    def host_port(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Sigstore is not started")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    fulcio_url = url
    rekor_url = url

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    # --- identities ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return GITHUB_ISSUER

    def job_workflow_ref(self, repository: str | None = None) -> str:
        return f"{repository or self.repository}/{self.workflow_path}@{self.ref}"

    def expected_san(self, repository: str | None = None) -> str:
        """The certificate identity Fulcio gives a token of this fake (what cosign checks)."""
        return f"https://github.com/{self.job_workflow_ref(repository)}"

    def identity_regexp(self, repository: str | None = None) -> str:
        """The regexp users should pass: the repository URL with its trailing slash."""
        return "^https://github.com/" + (repository or self.repository).replace(".", r"\.") + "/"

    def claims(self, *, repository: str | None = None, audience: str = "sigstore") -> dict[str, Any]:
        repository = repository or self.repository
        owner = repository.split("/")[0]
        now = int(time.time())
        sha = hashlib.sha1(repository.encode()).hexdigest()
        workflow_ref = self.job_workflow_ref(repository)
        return {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:{repository}:ref:{self.ref}",
            "aud": audience,
            "ref": self.ref,
            "ref_type": "branch",
            "sha": sha,
            "repository": repository,
            "repository_id": str(int(hashlib.sha256(repository.encode()).hexdigest()[:8], 16)),
            "repository_owner": owner,
            "repository_owner_id": str(int(hashlib.sha256(owner.encode()).hexdigest()[:8], 16)),
            "repository_visibility": "public",
            "run_id": "4242",
            "run_number": "7",
            "run_attempt": "1",
            "actor": "release-bot",
            "actor_id": "1",
            "workflow": "publish",
            "workflow_ref": workflow_ref,
            "workflow_sha": sha,
            "job_workflow_ref": workflow_ref,
            "job_workflow_sha": sha,
            "event_name": "push",
            "runner_environment": "github-hosted",
            "iss": GITHUB_ISSUER,
            "nbf": now - 5,
            "iat": now,
            "exp": now + int(self.token_lifetime.total_seconds()),
        }

    def mint_token(
        self,
        *,
        kind: str = "valid",
        repository: str | None = None,
        audience: str = "sigstore",
    ) -> str:
        """An OIDC token: ``valid``, ``expired`` (exp 10 min ago) or ``forged`` (foreign key)."""
        claims = self.claims(repository=repository, audience=audience)
        key = self.pki.oidc_key
        if kind == "expired":
            claims["iat"] = claims["nbf"] = claims["iat"] - 1200
            claims["exp"] = claims["iat"] + 600
        elif kind == "forged":
            key = self.foreign_oidc_key
        elif kind != "valid":
            raise ValueError(f"unknown token kind {kind!r}: valid, expired or forged")
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "fake-oidc"})

    # --- trust material -----------------------------------------------------------------

    def _log_instance(self, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
        return {
            "baseUrl": self.url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(spki_der(key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": _rfc3339(self.pki.not_before)},
            },
            "logId": {"keyId": _b64(key_id(key.public_key()))},
        }

    def trusted_root(self) -> dict[str, Any]:
        return {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [self._log_instance(self.pki.rekor_key)],
            "certificateAuthorities": [
                {
                    "subject": {"organization": self.pki.name, "commonName": "fake-fulcio"},
                    "uri": self.url,
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))} for c in self.pki.chain
                        ]
                    },
                    "validFor": {"start": _rfc3339(self.pki.not_before)},
                }
            ],
            "ctlogs": [self._log_instance(self.pki.ct_key)],
            "timestampAuthorities": [],
        }

    def signing_config(self, *, fulcio_url: str | None = None, rekor_url: str | None = None) -> dict[str, Any]:
        start = {"start": _rfc3339(self.pki.not_before)}

        def service(url: str) -> dict[str, Any]:
            return {"url": url, "majorApiVersion": 1, "validFor": start, "operator": "fake"}

        return {
            "mediaType": SIGNING_CONFIG_MEDIA_TYPE,
            "caUrls": [service(fulcio_url or self.url)],
            "oidcUrls": [service(self.url)],
            "rekorTlogUrls": [service(rekor_url or self.url)],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaUrls": [],
            "tsaConfig": {"selector": "ANY"},
        }

    def client_trust_config(self, *, fulcio_url: str | None = None, rekor_url: str | None = None) -> dict[str, Any]:
        return {
            "mediaType": CLIENT_TRUST_CONFIG_MEDIA_TYPE,
            "trustedRoot": self.trusted_root(),
            "signingConfig": self.signing_config(fulcio_url=fulcio_url, rekor_url=rekor_url),
        }

    def write_trust_config(
        self, path: str | Path, *, fulcio_url: str | None = None, rekor_url: str | None = None
    ) -> Path:
        """Write a variant ClientTrustConfig (e.g. Fulcio at an unreachable URL)."""
        path = Path(path)
        path.write_text(json.dumps(self.client_trust_config(fulcio_url=fulcio_url, rekor_url=rekor_url)))
        return path

    # --- OIDC token endpoint ------------------------------------------------------------

    def handle_token(self, query: dict[str, list[str]], authorization: str) -> dict[str, Any]:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or value.strip() != self.request_token:
            self.counters.token_requests_refused += 1
            raise _Refusal(401, "bad or missing ACTIONS_ID_TOKEN_REQUEST_TOKEN bearer token")
        audience = query.get("audience", [f"https://github.com/{self.repository.split('/')[0]}"])[0]
        kind = query.get("kind", ["valid"])[0]
        repository = query.get("repository", [None])[0]
        try:
            token = self.mint_token(kind=kind, repository=repository, audience=audience)
        except ValueError as exc:
            raise _Refusal(400, str(exc)) from exc
        with self._lock:
            self.counters.tokens_issued += 1
        return {"count": 1, "value": token}

    # --- Fulcio -------------------------------------------------------------------------

    def handle_signing_cert(self, body: bytes, authorization: str) -> dict[str, Any]:
        try:
            return self._signing_cert(body, authorization)
        except _Refusal as refusal:
            with self._lock:
                self.counters.fulcio_refusals.append(refusal.message)
            raise

    def _signing_cert(self, body: bytes, authorization: str) -> dict[str, Any]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refusal(401, "missing bearer identity token")
        try:
            claims = jwt.decode(
                token.strip(),
                self.pki.oidc_key.public_key(),
                algorithms=["ES256"],
                audience="sigstore",
                issuer=GITHUB_ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _Refusal(401, f"identity token has expired: {exc}") from exc
        except jwt.InvalidSignatureError as exc:
            raise _Refusal(401, f"identity token signature is not from the trusted OIDC issuer: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise _Refusal(401, f"invalid identity token: {exc}") from exc
        for claim in ("job_workflow_ref", "repository"):
            if not claims.get(claim):
                raise _Refusal(400, f"identity token lacks the GitHub Actions claim {claim!r}")

        try:
            request = json.loads(body)
            csr_pem = base64.b64decode(request["certificateSigningRequest"], validate=True)
            csr = x509.load_pem_x509_csr(csr_pem)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _Refusal(400, f"malformed certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise _Refusal(400, "CSR signature is invalid: no proof of possession of the key")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise _Refusal(400, "only ECDSA public keys are supported by this fake")

        leaf = self.pki.issue_leaf(public_key, GitHubClaims(claims))
        with self._lock:
            self.counters.fulcio_certificates_issued += 1
        pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in [leaf, *self.pki.chain]]
        return {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}}

    # --- Rekor v1 -----------------------------------------------------------------------

    def _checkpoint(self, size: int, root: bytes) -> str:
        note = f"{self.host_port} - {self.tree_id}\n{size}\n{_b64(root)}\n"
        sig = self.pki.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        hint = key_id(self.pki.rekor_key.public_key())[:4]
        return f"{note}\n\u2014 {self.host_port} {_b64(hint + sig)}\n"

    def handle_log_info(self) -> dict[str, Any]:
        with self._lock:
            size = self._log.size
            root = self._log.root()
            return {
                "rootHash": root.hex(),
                "treeSize": size,
                "signedTreeHead": self._checkpoint(size, root),
                "treeID": str(self.tree_id),
                "inactiveShards": [],
            }

    def handle_create_entry(self, body: bytes) -> tuple[str, dict[str, Any]]:
        try:
            return self._create_entry(body)
        except _Refusal as refusal:
            with self._lock:
                self.counters.rekor_refusals.append(refusal.message)
            raise

    def _create_entry(self, body: bytes) -> tuple[str, dict[str, Any]]:
        try:
            proposed = json.loads(body)
            kind = (proposed.get("kind"), proposed.get("apiVersion"))
        except (ValueError, AttributeError) as exc:
            raise _Refusal(400, f"malformed entry: {exc}") from exc
        if kind == ("hashedrekord", "0.0.1"):
            canonical = self._hashedrekord_body(proposed)
        elif kind == ("dsse", "0.0.1"):
            canonical = self._dsse_body(proposed)
        else:
            raise _Refusal(
                400,
                f"unsupported entry type {kind[0]}/{kind[1]}: this fake accepts hashedrekord 0.0.1 and dsse 0.0.1",
            )
        return self._append(canonical)

    @staticmethod
    def _hashedrekord_body(proposed: dict[str, Any]) -> bytes:
        """Check a hashedrekord 0.0.1 proposal (signature over the digest) and return its canonical body."""
        try:
            spec = proposed["spec"]
            algorithm = spec["data"]["hash"]["algorithm"]
            digest_hex = spec["data"]["hash"]["value"]
            signature_b64 = spec["signature"]["content"]
            public_key_b64 = spec["signature"]["publicKey"]["content"]
            if algorithm != "sha256":
                raise _Refusal(400, f"unsupported hash algorithm {algorithm!r}")
            digest = bytes.fromhex(digest_hex)
            if len(digest) != 32:
                raise _Refusal(400, "sha256 digest must be 32 bytes")
            signature = base64.b64decode(signature_b64, validate=True)
            cert = x509.load_pem_x509_certificate(base64.b64decode(public_key_b64, validate=True))
        except _Refusal:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _Refusal(400, f"malformed hashedrekord entry: {exc}") from exc
        key = _ecdsa_key(cert)
        try:
            key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature as exc:
            raise _Refusal(400, "signature does not verify against the supplied digest") from exc
        return rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": digest_hex.lower()}},
                    "signature": {
                        "content": signature_b64,
                        "publicKey": {"content": public_key_b64},
                    },
                },
            }
        )

    @staticmethod
    def _dsse_body(proposed: dict[str, Any]) -> bytes:
        """Check a dsse 0.0.1 proposal (each envelope signature over the DSSE pre-authentication
        encoding, by one of the verifiers) and return the canonical body Rekor stores: the
        envelope's and the payload's sha256 and the signatures with their verifiers, no envelope."""
        try:
            content = proposed["spec"]["proposedContent"]
            envelope_text = content["envelope"]
            envelope = json.loads(envelope_text)
            payload = base64.b64decode(envelope["payload"], validate=True)
            payload_type = envelope["payloadType"]
            signatures = [(s["sig"], base64.b64decode(s["sig"], validate=True)) for s in envelope["signatures"]]
            verifiers = [
                (text, x509.load_pem_x509_certificate(base64.b64decode(text, validate=True)))
                for text in content["verifiers"]
            ]
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise _Refusal(400, f"malformed dsse entry: {exc}") from exc
        if not signatures or not verifiers:
            raise _Refusal(400, "a dsse entry needs at least one signature and one verifier")
        pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
        logged = []
        for signature_b64, signature in signatures:
            for verifier_b64, cert in verifiers:
                try:
                    _ecdsa_key(cert).verify(signature, pae, ec.ECDSA(hashes.SHA256()))
                except InvalidSignature:
                    continue
                logged.append({"signature": signature_b64, "verifier": verifier_b64})
                break
            else:
                raise _Refusal(400, "an envelope signature does not verify with any of the verifiers")
        return rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(envelope_text.encode()).hexdigest(),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                    "signatures": logged,
                },
            }
        )

    def _append(self, canonical: bytes) -> tuple[str, dict[str, Any]]:
        """Log a canonical entry body: inclusion proof, checkpoint and signed entry timestamp."""
        log_id = key_id(self.pki.rekor_key.public_key()).hex()
        with self._lock:
            entry_uuid = hashlib.sha256(b"\x00" + canonical).hexdigest()
            if entry_uuid in self._entries:
                raise _Refusal(409, f"an equivalent entry already exists in the log: {entry_uuid}")
            index = self._log.append(canonical)
            integrated_time = int(time.time())
            size = self._log.size
            root = self._log.root()
            proof = self._log.proof(index)
            body_b64 = _b64(canonical)
            set_payload = rfc8785.dumps(
                {
                    "body": body_b64,
                    "integratedTime": integrated_time,
                    "logID": log_id,
                    "logIndex": index,
                }
            )
            entry = {
                "body": body_b64,
                "integratedTime": integrated_time,
                "logID": log_id,
                "logIndex": index,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": self._checkpoint(size, root),
                        "hashes": [h.hex() for h in proof],
                        "logIndex": index,
                        "rootHash": root.hex(),
                        "treeSize": size,
                    },
                    "signedEntryTimestamp": _b64(self.pki.rekor_key.sign(set_payload, ec.ECDSA(hashes.SHA256()))),
                },
            }
            self._entries[entry_uuid] = entry
            self.counters.rekor_entries += 1
        return entry_uuid, {entry_uuid: entry}


def _ecdsa_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _Refusal(400, "only ECDSA verification material is supported by this fake")
    return key


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeSigstore
    server_version = "fake-sigstore/1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr access logs
        pass

    def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, refusal: _Refusal) -> None:
        self._reply(refusal.status, {"code": refusal.status, "message": refusal.message})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        fake = self.server_fake
        try:
            if parts.path == "/token":
                self._reply(
                    200,
                    fake.handle_token(parse_qs(parts.query), self.headers.get("Authorization", "")),
                )
            elif parts.path == "/api/v1/log":
                self._reply(200, fake.handle_log_info())
            elif parts.path.startswith("/api/v1/log/entries/"):
                entry_uuid = parts.path.rsplit("/", 1)[-1]
                entry = fake._entries.get(entry_uuid)
                if entry is None:
                    raise _Refusal(404, f"no entry {entry_uuid}")
                self._reply(200, {entry_uuid: entry})
            else:
                raise _Refusal(404, f"no such endpoint: GET {parts.path}")
        except _Refusal as refusal:
            self._refuse(refusal)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        fake = self.server_fake
        body = self._body()
        try:
            if parts.path == "/api/v2/signingCert":
                self._reply(201, fake.handle_signing_cert(body, self.headers.get("Authorization", "")))
            elif parts.path == "/api/v1/log/entries":
                entry_uuid, payload = fake.handle_create_entry(body)
                self._reply(201, payload, {"Location": f"/api/v1/log/entries/{entry_uuid}"})
            else:
                raise _Refusal(404, f"no such endpoint: POST {parts.path}")
        except _Refusal as refusal:
            self._refuse(refusal)


def ambient_env(fake: FakeSigstore, *, kind: str = "valid", repository: str | None = None) -> dict[str, str]:
    """Environment that makes `sigstore.oidc.detect_credential()` fetch a token from `fake`
    exactly as in GitHub Actions, plus TALOS_SIGSTORE_TRUST_CONFIG pointing at its config.

    The request URL already has a query (``?x=1``, like GitHub's) so the client must append
    ``&audience=sigstore``. ``kind`` selects a ``valid``, ``expired`` or ``forged`` token;
    ``repository`` overrides the repository in the token's claims.
    """
    url = f"{fake.token_url}?x=1"
    if kind != "valid":
        url += f"&kind={kind}"
    if repository:
        url += f"&repository={repository}"
    return {
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": fake.request_token,
        "TALOS_SIGSTORE_TRUST_CONFIG": str(fake.trust_config_path),
    }
