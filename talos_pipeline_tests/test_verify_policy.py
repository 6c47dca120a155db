"""`talos-pipeline verify` with a signing policy cannot be fooled by whoever writes the bucket.

With `--key`, or `--certificate-identity-regexp` + `--certificate-oidc-issuer`, every catalog
file must carry a bundle that satisfies the policy: an unsigned store, a stripped bundle, a
foreign key or identity each exit 1 naming the product and the file. And the signature check is
reached for real: the forgeries here rewrite a disk *and* every hash the catalog states about it,
so only the signature can tell (see `verify_fixtures.py`).

Every check runs the command as users do, in a subprocess, for key mode and keyless (against the
loopback fake Sigstore).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from talos_pipeline.core.signing import KeySigner, SigstoreSigner, generate_key_pair
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.launch import publish
from talos_pipeline_tests.fake_sigstore import GITHUB_ISSUER, FakeSigstore, ambient_env

from .verify_fixtures import disk_of, forge_disk, output, strip_bundle, talos_pipeline

STORE_KINDS = ["dir"]
PRODUCT = "talos:v1.12.0:amd64:nocloud"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Our key pair and an attacker's."""
    for stem in ("ours", "theirs"):
        generate_key_pair(tmp_path / f"{stem}.key", tmp_path / f"{stem}.pub")
    return {name: tmp_path / name for name in ("ours.key", "ours.pub", "theirs.key", "theirs.pub")}


@pytest.fixture(params=["key", "keyless"])
def mode(request, pipeline_env, monkeypatch, keys, fake_sigstore: FakeSigstore) -> str:
    """The signing mode a test publishes with, and the environment `verify` runs in."""
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    monkeypatch.setenv("TALOS_SIGSTORE_TRUST_CONFIG", str(fake_sigstore.trust_config_path))
    return request.param


def _sign_with(mode: str, monkeypatch, keys, fake: FakeSigstore) -> None:
    if mode == "key":
        monkeypatch.setenv("TALOS_SIGNING", "key")
        monkeypatch.setenv("TALOS_SIGNING_KEY", str(keys["ours.key"]))
    else:
        for name, value in ambient_env(fake).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TALOS_SIGNING", "sigstore")


def _policy(mode: str, keys, fake: FakeSigstore, *, foreign: bool = False) -> list[str]:
    if mode == "key":
        return ["--key", str(keys["theirs.pub" if foreign else "ours.pub"])]
    regexp = fake.identity_regexp("talos-org/someone-else") if foreign else fake.identity_regexp()
    return ["--certificate-identity-regexp", regexp, "--certificate-oidc-issuer", GITHUB_ISSUER]


def _verify(*args: str) -> tuple[int, str]:
    result = talos_pipeline("verify", "--full", *args)
    return result.returncode, output(result)


def _copy(store: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(store, copy)
    return copy


def test_a_policy_refuses_an_unsigned_store(mode, pipeline_env, keys, fake_sigstore):
    assert publish(["v1.12.0"], ["amd64"]).ok  # TALOS_SIGNING=none
    code, out = _verify()
    assert code == 0 and "unsigned (published with TALOS_SIGNING=none)" in out, out

    code, out = _verify(*_policy(mode, keys, fake_sigstore))
    assert code == 1, out
    assert f"FAIL {PRODUCT}" in out
    for item in ("incus-", "disk-"):
        assert re.search(rf"problem: images/v1\.12\.0/amd64/nocloud/{item}[0-9a-f]{{64}}\.\S+: the catalog names no "
                         r"signature bundle, but .* requires every file to be signed", out), out  # fmt: skip


def test_a_policy_refuses_a_stripped_bundle_and_a_foreign_signer(
    mode, pipeline_env, monkeypatch, keys, fake_sigstore, tmp_path
):
    _sign_with(mode, monkeypatch, keys, fake_sigstore)
    assert publish(["v1.12.0"], ["amd64"]).ok
    code, out = _verify(*_policy(mode, keys, fake_sigstore))
    assert code == 0, out

    code, out = _verify(*_policy(mode, keys, fake_sigstore, foreign=True))
    assert code == 1 and f"FAIL {PRODUCT}" in out, out
    if mode == "key":
        assert re.search(r"signed with the key \S+, not with the given public key", out), out
    else:
        assert "does not match regexp ^https://github.com/talos-org/someone-else/" in out, out

    stripped = _copy(pipeline_env.directory, tmp_path, "stripped")
    disk = strip_bundle(DirectoryStore(stripped), PRODUCT)
    code, out = _verify("--store", str(stripped), *_policy(mode, keys, fake_sigstore))
    assert code == 1 and f"FAIL {PRODUCT}" in out, out
    assert f"problem: {disk}: the catalog names no signature bundle, but " in out, out
    assert "requires every file to be signed" in out
    code, out = _verify("--store", str(stripped))  # no policy: the talos_signing field still says it was signed
    assert code == 1 and f"{disk}: the catalog names no signature bundle, but signing was on" in out, out


def test_only_the_signature_catches_a_forged_disk(mode, pipeline_env, monkeypatch, keys, fake_sigstore, tmp_path):
    """The attacker rewrites the disk and the catalog's size, sha256, fingerprint and unified hash."""
    _sign_with(mode, monkeypatch, keys, fake_sigstore)
    assert publish(["v1.12.0"], ["amd64"]).ok
    policy = _policy(mode, keys, fake_sigstore)

    forged_store = _copy(pipeline_env.directory, tmp_path, "forged")
    store = DirectoryStore(forged_store)
    forged = forge_disk(store, PRODUCT)
    code, out = _verify("--store", str(forged_store), *policy)
    assert code == 1, out
    assert "differs from the catalog" not in out, "every hash check passes: only the signature can tell"
    bundle = disk_of(store, PRODUCT).item["signature"]
    assert f"problem: {bundle}: signature does not match sha256:{forged}" in out, out

    # A new signature over the forged disk, by a signer the policy does not trust.
    if mode == "key":
        store.put_bytes(bundle, KeySigner(str(keys["theirs.key"])).sign_digest(forged))
        code, out = _verify("--store", str(forged_store), *policy)
        theirs = KeySigner(str(keys["theirs.key"])).hint
        assert code == 1 and f"{bundle}: the bundle was signed with the key {theirs}, not with the given" in out, out
        return
    with FakeSigstore() as foreign:  # another Sigstore instance, same repository name
        with SigstoreSigner(trust_config_path=foreign.trust_config_path, identity_token=foreign.mint_token()) as signer:
            store.put_bytes(bundle, signer.sign_digest(forged))
        code, out = _verify("--store", str(forged_store), *policy)
    assert code == 1 and f"{bundle}: the signing certificate does not chain to the trusted root" in out, out

    evil = "talos-org/talos-incus-evil"  # the same Sigstore instance, another repository
    token = fake_sigstore.mint_token(repository=evil)
    with SigstoreSigner(trust_config_path=fake_sigstore.trust_config_path, identity_token=token) as signer:
        store.put_bytes(bundle, signer.sign_digest(forged))
    code, out = _verify("--store", str(forged_store), *policy)
    assert code == 1, out
    assert f"{bundle}: bundle verification failed: certificate identity {fake_sigstore.expected_san(evil)} " in out
    assert f"does not match regexp {fake_sigstore.identity_regexp()}" in out
