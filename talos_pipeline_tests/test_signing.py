"""Signing and verification, end to end, offline.

Keyless tests run the real sigstore-python signer and verifier against the loopback fake
Sigstore (OIDC token endpoint, Fulcio with embedded SCTs, Rekor v1), configured only through the
environment variables GitHub Actions and the pipeline use. Bundles are cross-checked by a second,
independent verifier (sigstore-js, `talos_pipeline_tests/js/verify.mjs`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from talos_pipeline.core.settings import Settings
from talos_pipeline.core.signing import (
    KeySigner,
    NoSigner,
    SigningError,
    SigstoreSigner,
    bundle_kind,
    generate_key_pair,
    make_signer,
    signer_for,
    verify_bundle,
)
from talos_pipeline_tests.fake_sigstore import (
    GITHUB_ISSUER,
    FakeSigstore,
    ambient_env,
    closed_port_url,
)
from talos_pipeline_tests.fake_sigstore.fixtures import run_node


def signer_from_env():
    """The signer the environment configures, keyless when TALOS_SIGNING is unset (as in CI)."""
    return signer_for(Settings.from_env({"TALOS_SIGNING": "sigstore", **os.environ}))


METADATA = b"incus metadata tarball\x00" * 20
DISK = os.urandom(256 * 1024)
DISK_SHA = hashlib.sha256(DISK).hexdigest()


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSigstore]:
    """The fake Sigstore that signs in these tests (repository talos-org/talos-incus)."""
    with FakeSigstore() as instance:
        yield instance


@pytest.fixture
def ambient(fake: FakeSigstore, monkeypatch: pytest.MonkeyPatch) -> FakeSigstore:
    """GitHub Actions OIDC + TALOS_SIGSTORE_TRUST_CONFIG pointing at the fake."""
    monkeypatch.setenv("TALOS_SIGNING", "sigstore")
    for name, value in ambient_env(fake).items():
        monkeypatch.setenv(name, value)
    return fake


@pytest.fixture(scope="module")
def foreign_sigstore() -> Iterator[FakeSigstore]:
    """A second, unrelated Sigstore instance (its own CA, CT log and Rekor keys)."""
    with FakeSigstore() as fake:
        yield fake


@pytest.fixture(scope="module")
def signed(fake: FakeSigstore) -> dict[str, bytes]:
    """A metadata bundle (signed by bytes) and a disk bundle (signed by digest), one signer."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("TALOS_SIGNING", "sigstore")
        for name, value in ambient_env(fake).items():
            mp.setenv(name, value)
        with signer_from_env() as signer:
            return {"metadata": signer.sign_bytes(METADATA), "disk": signer.sign_digest(DISK_SHA)}
    finally:
        mp.undo()


def regexp(fake: FakeSigstore) -> str:
    return fake.identity_regexp()


# --- keyless: signing and verifying ----------------------------------------------------------


def test_keyless_bytes_and_digest_round_trip(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    meta = json.loads(signed["metadata"])
    disk = json.loads(signed["disk"])
    for bundle in (meta, disk):
        assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
        entry = bundle["verificationMaterial"]["tlogEntries"][0]
        assert entry["kindVersion"] == {"kind": "hashedrekord", "version": "0.0.1"}  # Rekor v1
        assert entry["inclusionPromise"]["signedEntryTimestamp"]
        assert entry["inclusionProof"]["checkpoint"]["envelope"].startswith(fake.host_port + " - ")
    digest = base64.b64decode(disk["messageSignature"]["messageDigest"]["digest"]).hex()
    assert digest == DISK_SHA

    text = verify_bundle(
        METADATA,
        signed["metadata"],
        trusted_root_path=str(fake.trusted_root_path),
        identity_regexp=regexp(fake),
        oidc_issuer=GITHUB_ISSUER,
    )
    assert fake.expected_san() in text and GITHUB_ISSUER in text and "log index" in text

    # The disk is verified by its digest alone (no bytes), and also against the bytes.
    text = verify_bundle(
        DISK_SHA,
        signed["disk"],
        trusted_root_path=str(fake.trusted_root_path),
        identity_regexp=regexp(fake),
        oidc_issuer=GITHUB_ISSUER,
    )
    assert f"sha256:{DISK_SHA}" in text
    verify_bundle(
        DISK,
        signed["disk"],
        trust_config_path=str(fake.trust_config_path),
        identity_regexp=regexp(fake),
        oidc_issuer=GITHUB_ISSUER,
    )


def test_one_certificate_for_several_files(ambient: FakeSigstore) -> None:
    before = ambient.counters.fulcio_certificates_issued
    entries = ambient.counters.rekor_entries
    with signer_from_env() as signer:
        assert isinstance(signer, SigstoreSigner)
        bundles = [signer.sign_bytes(METADATA + bytes([i])) for i in range(3)]
        bundles.append(signer.sign_digest("sha256:" + DISK_SHA))
        assert ambient.expected_san() in signer.describe()
    assert ambient.counters.fulcio_certificates_issued == before + 1
    assert ambient.counters.rekor_entries == entries + 4
    certs = {json.loads(b)["verificationMaterial"]["certificate"]["rawBytes"] for b in bundles}
    assert len(certs) == 1
    assert signer.certificates_requested == 1


def test_certificate_renewed_before_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeSigstore(cert_lifetime=timedelta(seconds=30)) as fake:
        for name, value in ambient_env(fake).items():
            monkeypatch.setenv(name, value)
        with signer_from_env() as signer:
            first = signer.sign_bytes(b"one")
            second = signer.sign_bytes(b"two")  # < 60 s left on the first certificate
        assert fake.counters.fulcio_certificates_issued == 2
        for data, bundle in ((b"one", first), (b"two", second)):
            verify_bundle(
                data,
                bundle,
                trusted_root_path=str(fake.trusted_root_path),
                identity_regexp=fake.identity_regexp(),
                oidc_issuer=GITHUB_ISSUER,
            )


# --- keyless: refusals ------------------------------------------------------------------------


def _verify_meta(fake: FakeSigstore, bundle: bytes, **overrides: object) -> str:
    kwargs: dict[str, object] = {
        "trusted_root_path": str(fake.trusted_root_path),
        "identity_regexp": regexp(fake),
        "oidc_issuer": GITHUB_ISSUER,
    }
    artifact = overrides.pop("artifact", METADATA)
    kwargs.update(overrides)
    return verify_bundle(artifact, bundle, **kwargs)  # type: ignore[arg-type]


def test_tampered_artifact_is_refused(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    with pytest.raises(SigningError, match=r"signature does not match the artifact"):
        _verify_meta(fake, signed["metadata"], artifact=METADATA + b"!")


def test_tampered_digest_is_refused(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    wrong = hashlib.sha256(DISK + b"!").hexdigest()
    with pytest.raises(SigningError, match=rf"signature does not match sha256:{wrong}"):
        _verify_meta(fake, signed["disk"], artifact=wrong)


def test_tampered_bundle_signature_is_refused(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    bundle = json.loads(signed["metadata"])
    other = json.loads(signed["disk"])
    bundle["messageSignature"]["signature"] = other["messageSignature"]["signature"]
    with pytest.raises(SigningError):
        _verify_meta(fake, json.dumps(bundle).encode())


def test_wrong_identity_is_refused(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    with pytest.raises(
        SigningError,
        match=r"certificate identity https://github.com/talos-org/talos-incus/.* does not match "
        r"regexp \^https://github.com/someone/else/",
    ):
        _verify_meta(fake, signed["metadata"], identity_regexp="^https://github.com/someone/else/")


def test_repo_evil_needs_the_trailing_slash(fake: FakeSigstore, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = fake.repository + "-evil"
    monkeypatch.setenv("TALOS_SIGNING", "sigstore")
    for name, value in ambient_env(fake, repository=evil).items():
        monkeypatch.setenv(name, value)
    with signer_from_env() as signer:
        bundle = signer.sign_bytes(METADATA)
    good = "^https://github.com/" + fake.repository + "/"
    with pytest.raises(SigningError, match=r"talos-incus-evil/.* does not match regexp " + re.escape(good)):
        _verify_meta(fake, bundle, identity_regexp=good)
    # Why the slash matters: without it the look-alike repository passes.
    _verify_meta(fake, bundle, identity_regexp=good.rstrip("/"))


def test_wrong_issuer_is_refused(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    with pytest.raises(
        SigningError,
        match=rf"certificate issuer {GITHUB_ISSUER} does not match the expected OIDC issuer "
        r"https://accounts.google.com",
    ):
        _verify_meta(fake, signed["metadata"], oidc_issuer="https://accounts.google.com")


def test_foreign_trusted_root_is_refused(
    signed: dict[str, bytes], fake: FakeSigstore, foreign_sigstore: FakeSigstore
) -> None:
    with pytest.raises(SigningError, match=r"does not chain to the trusted root"):
        _verify_meta(
            fake,
            signed["metadata"],
            trusted_root_path=str(foreign_sigstore.trusted_root_path),
        )


def test_keyless_verification_needs_a_policy(signed: dict[str, bytes], fake: FakeSigstore) -> None:
    with pytest.raises(SigningError, match=r"needs both an identity regexp .* and an OIDC issuer"):
        verify_bundle(METADATA, signed["metadata"], trusted_root_path=str(fake.trusted_root_path))
    with pytest.raises(SigningError, match=r"keyless bundle .* not signed with a key"):
        verify_bundle(METADATA, signed["metadata"], key_pem=b"unused")


def test_forged_token_is_refused_by_fulcio(ambient: FakeSigstore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ambient_env(ambient, kind="forged").items():
        monkeypatch.setenv(name, value)
    refusals = len(ambient.counters.fulcio_refusals)
    with pytest.raises(
        SigningError,
        match=r"cannot get a signing certificate: Fulcio at http://127\.0\.0\.1:\d+ refused the "
        r"request \(HTTP 401\): identity token signature is not from the trusted OIDC issuer",
    ):
        signer_from_env().sign_bytes(METADATA)
    assert len(ambient.counters.fulcio_refusals) == refusals + 1


def test_expired_token_is_refused(ambient: FakeSigstore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ambient_env(ambient, kind="expired").items():
        monkeypatch.setenv(name, value)
    issued = ambient.counters.fulcio_certificates_issued
    with pytest.raises(SigningError, match=r"OIDC identity token has expired"):
        signer_from_env().sign_bytes(METADATA)
    assert ambient.counters.fulcio_certificates_issued == issued

    # The fake Fulcio refuses it too, if a client sent it anyway.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    response = requests.post(
        f"{ambient.url}/api/v2/signingCert",
        json={"certificateSigningRequest": base64.b64encode(csr).decode()},
        headers={"Authorization": f"Bearer {ambient.mint_token(kind='expired')}"},
        timeout=10,
    )
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_unreachable_fulcio(ambient: FakeSigstore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = ambient.write_trust_config(tmp_path / "down.json", fulcio_url=closed_port_url())
    monkeypatch.setenv("TALOS_SIGSTORE_TRUST_CONFIG", str(config))
    with pytest.raises(SigningError, match=r"cannot reach Fulcio at http://127\.0\.0\.1:\d+"):
        signer_from_env().sign_digest(DISK_SHA)


def test_unreachable_rekor(ambient: FakeSigstore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = ambient.write_trust_config(tmp_path / "no-rekor.json", rekor_url=closed_port_url())
    monkeypatch.setenv("TALOS_SIGSTORE_TRUST_CONFIG", str(config))
    with pytest.raises(SigningError, match=r"signing of sha256:[0-9a-f]{64} failed: cannot reach Rekor at http"):
        signer_from_env().sign_digest(DISK_SHA)


def test_no_ambient_token(monkeypatch: pytest.MonkeyPatch, fake: FakeSigstore) -> None:
    for name in (
        "GITHUB_ACTIONS",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TALOS_SIGSTORE_TRUST_CONFIG", str(fake.trust_config_path))
    with pytest.raises(SigningError, match=r"no ambient OIDC identity token: .*id-token: write"):
        signer_from_env().open()
    # GitHub Actions without `id-token: write`: the request variables are missing.
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    with pytest.raises(SigningError, match=r"ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        signer_from_env().open()


def test_bad_mode_and_missing_key() -> None:
    with pytest.raises(SigningError, match=r"unknown signing mode 'cosign': TALOS_SIGNING must"):
        make_signer("cosign")
    with pytest.raises(SigningError, match=r"TALOS_SIGNING=key needs TALOS_SIGNING_KEY"):
        make_signer("key", key=None)
    with pytest.raises(SigningError, match=r"neither PEM text nor a readable file"):
        make_signer("key", key="/nonexistent/key.pem")


# --- key mode and none ------------------------------------------------------------------------


def test_key_mode_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    hint = generate_key_pair(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(SigningError, match="already exists"):
        generate_key_pair(private, public, overwrite=False)
    private.chmod(0o644)
    hint = generate_key_pair(private, public)  # what `keygen --force` does
    assert stat.S_IMODE(private.stat().st_mode) == 0o600

    monkeypatch.setenv("TALOS_SIGNING", "key")
    for key_value in (str(private), private.read_text()):  # a path or the PEM text
        monkeypatch.setenv("TALOS_SIGNING_KEY", key_value)
        signer = signer_from_env()
        assert isinstance(signer, KeySigner) and "NOT keyless" in signer.describe()
        meta, disk = signer.sign_bytes(METADATA), signer.sign_digest(DISK_SHA)
        for bundle in (meta, disk):
            parsed = json.loads(bundle)
            assert bundle_kind(bundle) == "key"
            assert parsed["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
            assert parsed["verificationMaterial"] == {
                "publicKey": {"hint": hint},
                "tlogEntries": [],
            }
            assert parsed["messageSignature"]["messageDigest"]["algorithm"] == "SHA2_256"
        pub = public.read_bytes()
        assert "NOT keyless" in verify_bundle(METADATA, meta, key_pem=pub)
        verify_bundle(DISK_SHA, disk, key_pem=pub)
        verify_bundle(DISK, disk, key_pem=pub)

    with pytest.raises(SigningError, match="signature does not match the artifact"):
        verify_bundle(METADATA + b"!", meta, key_pem=pub)
    with pytest.raises(SigningError, match=f"signature does not match sha256:{'0' * 64}"):
        verify_bundle("0" * 64, disk, key_pem=pub)
    other_pub = tmp_path / "other.pub"
    generate_key_pair(tmp_path / "other.key", other_pub)
    with pytest.raises(SigningError, match="signed with the key " + re.escape(hint) + ", not with the given"):
        verify_bundle(METADATA, meta, key_pem=other_pub.read_bytes())
    with pytest.raises(SigningError, match=r"key-mode bundle .* pass the public key"):
        verify_bundle(METADATA, meta, identity_regexp="x", oidc_issuer="y")


def test_encrypted_key(tmp_path: Path) -> None:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    generate_key_pair(private, public, password="s3cret")
    with pytest.raises(SigningError, match="is encrypted: set TALOS_SIGNING_KEY_PASSWORD"):
        make_signer("key", key=str(private))
    with pytest.raises(SigningError, match="wrong TALOS_SIGNING_KEY_PASSWORD"):
        make_signer("key", key=str(private), key_password="nope")
    signer = make_signer("key", key=str(private), key_password="s3cret")
    verify_bundle(METADATA, signer.sign_bytes(METADATA), key_pem=public.read_bytes())


def test_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(SigningError, match="must be ECDSA P-256"):
        make_signer("key", key=pem.decode())


def test_none_mode() -> None:
    signer = make_signer(" NONE ")
    assert isinstance(signer, NoSigner)
    assert signer.sign_bytes(METADATA) is None and signer.sign_digest(DISK_SHA) is None
    assert "no .sigstore.json" in signer.describe()
    with pytest.raises(SigningError, match="invalid sha256 digest"):
        signer.sign_digest("abc")


def test_bundle_kind(signed: dict[str, bytes]) -> None:
    assert bundle_kind(signed["metadata"]) == "sigstore"
    with pytest.raises(SigningError, match="not a Sigstore bundle"):
        bundle_kind(b'{"mediaType": "text/plain"}')
    with pytest.raises(SigningError, match="not JSON"):
        bundle_kind(b"<html>")


# --- second verifier: sigstore-js -------------------------------------------------------------


def test_sigstore_js_accepts_keyless_bundles(
    node_verifier: list[str], signed: dict[str, bytes], fake: FakeSigstore, tmp_path: Path
) -> None:
    files = {"metadata": METADATA, "disk": DISK}  # the disk bundle was signed by digest only
    root = str(fake.trusted_root_path)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"{name}.sigstore.json").write_bytes(signed[name])
        result = run_node(
            node_verifier,
            "--bundle", tmp_path / f"{name}.sigstore.json",
            "--artifact", tmp_path / name,
            "--trusted-root", root,
            "--san", fake.expected_san(),
            "--issuer", GITHUB_ISSUER,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: keyless bundle verified by @sigstore/verify")

    def refused(*args: str | Path) -> str:
        result = run_node(node_verifier, "--bundle", tmp_path / "metadata.sigstore.json", *args)
        assert result.returncode == 1, result.stdout
        return result.stderr

    common = ("--trusted-root", root, "--issuer", GITHUB_ISSUER)
    (tmp_path / "tampered").write_bytes(METADATA + b"!")
    assert "digest mismatch" in refused("--artifact", tmp_path / "tampered", "--san", fake.expected_san(), *common)
    assert "certificate identity error" in refused(
        "--artifact", tmp_path / "metadata",
        "--san-regexp", "^https://github.com/talos-org/talos-incus-evil/", *common,
    )  # fmt: skip
    assert "invalid certificate extension" in refused(
        "--artifact", tmp_path / "metadata", "--san", fake.expected_san(),
        "--trusted-root", root, "--issuer", "https://accounts.google.com",
    )  # fmt: skip


def test_sigstore_js_rejects_foreign_root_and_bad_signature(
    node_verifier: list[str],
    signed: dict[str, bytes],
    fake: FakeSigstore,
    foreign_sigstore: FakeSigstore,
    tmp_path: Path,
) -> None:
    (tmp_path / "metadata").write_bytes(METADATA)
    (tmp_path / "b.json").write_bytes(signed["metadata"])
    args = ("--artifact", tmp_path / "metadata", "--san", fake.expected_san(),
            "--issuer", GITHUB_ISSUER)  # fmt: skip
    result = run_node(
        node_verifier, "--bundle", tmp_path / "b.json",
        "--trusted-root", foreign_sigstore.trusted_root_path, *args,
    )  # fmt: skip
    # The foreign root trusts neither the CA nor the log: @sigstore/verify 2.x checks the log's
    # entry timestamp first, 3.x the certificate chain.
    assert result.returncode == 1, result.stdout
    assert "certificate chain" in result.stderr or "TLOG_INCLUSION_PROMISE_ERROR" in result.stderr, result.stderr

    # A bundle whose recorded digest was edited to match a tampered file: the signature check
    # of sigstore-js itself must catch it.
    bundle = json.loads(signed["metadata"])
    tampered = METADATA + b"!"
    bundle["messageSignature"]["messageDigest"]["digest"] = base64.b64encode(hashlib.sha256(tampered).digest()).decode()
    (tmp_path / "t.json").write_text(json.dumps(bundle))
    (tmp_path / "tampered").write_bytes(tampered)
    result = run_node(
        node_verifier, "--bundle", tmp_path / "t.json", "--artifact", tmp_path / "tampered",
        "--trusted-root", fake.trusted_root_path,
        "--san", fake.expected_san(), "--issuer", GITHUB_ISSUER,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "TLOG_BODY_ERROR" in result.stderr or "SIGNATURE_ERROR" in result.stderr, result.stderr


def test_sigstore_js_accepts_key_bundles(node_verifier: list[str], tmp_path: Path) -> None:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    generate_key_pair(private, public)
    signer = make_signer("key", key=str(private))
    (tmp_path / "disk").write_bytes(DISK)
    (tmp_path / "disk.sigstore.json").write_bytes(signer.sign_digest(DISK_SHA))
    (tmp_path / "meta").write_bytes(METADATA)
    (tmp_path / "meta.sigstore.json").write_bytes(signer.sign_bytes(METADATA))
    for name in ("disk", "meta"):
        result = run_node(
            node_verifier, "--bundle", tmp_path / f"{name}.sigstore.json",
            "--artifact", tmp_path / name, "--key", public,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("OK: key-mode bundle verified by @sigstore/verify")

    other_private, other_public = tmp_path / "o.key", tmp_path / "o.pub"
    generate_key_pair(other_private, other_public)
    result = run_node(
        node_verifier, "--bundle", tmp_path / "meta.sigstore.json",
        "--artifact", tmp_path / "meta", "--key", other_public,
    )  # fmt: skip
    assert result.returncode == 1 and "key hint" in result.stderr, result.stderr
