"""Provenance attestations: every published file gets a signed in-toto statement (SLSA
provenance v1, docs/provenance.md) next to it, in every signing mode that signs.

They are checked three ways: what the statement says (read here, field by field), `talos-pipeline
verify --provenance` (a subprocess, as users run it) and the second verifier, sigstore-js
(`js/verify.mjs`). Forgeries an attacker who writes the bucket could make (a tampered predicate,
an attestation about another file, a validly signed statement that contradicts the catalog, a
foreign key or identity) each fail naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from serve import create_app, start_in_thread
from talos_pipeline.core.provenance import PREDICATE_TYPE, Builder, read_statement
from talos_pipeline.core.signing import KeySigner, SigstoreSigner, generate_key_pair
from talos_pipeline.core.stores import Store
from talos_pipeline.launch import publish
from talos_pipeline_tests.fake_sigstore import GITHUB_ISSUER, FakeSigstore, ambient_env
from talos_pipeline_tests.fake_sigstore.fixtures import run_node

from .conftest import tree_digest
from .verify_fixtures import CatalogFile, catalog_files, disk_of, output, talos_pipeline

STORE_KINDS = ["dir"]
QGA_SCHEMATIC = b"customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/qemu-guest-agent]\n"
RUN_ENV = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "talos-org/talos-incus",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_WORKFLOW_REF": "talos-org/talos-incus/.github/workflows/publish.yml@refs/heads/main",
}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    for stem in ("ours", "theirs"):
        generate_key_pair(tmp_path / f"{stem}.key", tmp_path / f"{stem}.pub")
    return {name: tmp_path / name for name in ("ours.key", "ours.pub", "theirs.key", "theirs.pub")}


@pytest.fixture
def qga(simulator) -> str:
    """A custom schematic registered with the simulated factory (POST /schematics), as users do."""
    answer = requests.post(f"{simulator.factory_url}/schematics", data=QGA_SCHEMATIC, timeout=10)
    answer.raise_for_status()
    return answer.json()["id"]


@pytest.fixture(params=["key", "keyless"])
def signed(request, pipeline_env, monkeypatch, keys, fake_sigstore: FakeSigstore, qga) -> dict:
    """A store published in one signing mode (nocloud and a custom variant, v1.12.0 amd64), run
    as in GitHub Actions; the policy that verifies it."""
    monkeypatch.setenv("TALOS_VARIANTS", f"nocloud,qga=nocloud:{qga}")
    monkeypatch.setenv("TALOS_SIGSTORE_TRUST_CONFIG", str(fake_sigstore.trust_config_path))
    for name, value in RUN_ENV.items():
        monkeypatch.setenv(name, value)
    if request.param == "key":
        monkeypatch.setenv("TALOS_SIGNING", "key")
        monkeypatch.setenv("TALOS_SIGNING_KEY", str(keys["ours.key"]))
        policy = ["--key", str(keys["ours.pub"])]
        node = ["--key", keys["ours.pub"]]
    else:
        for name, value in ambient_env(fake_sigstore).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TALOS_SIGNING", "sigstore")
        policy = [
            "--certificate-identity-regexp",
            fake_sigstore.identity_regexp(),
            "--certificate-oidc-issuer",
            GITHUB_ISSUER,
        ]
        node = ["--trusted-root", fake_sigstore.trusted_root_path, "--san-regexp", fake_sigstore.identity_regexp(),
                "--issuer", GITHUB_ISSUER]  # fmt: skip
    outcome = publish(["v1.12.0"], ["amd64"])
    assert outcome.ok, outcome.failed
    return {"mode": request.param, "store": pipeline_env, "policy": policy, "node": node, "schematic": qga}


def _statement(store: Store, file: CatalogFile) -> dict:
    bundle = json.loads(store.read_bytes(file.item["attestation"]))
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _verify(*args: str | Path) -> tuple[int, str]:
    result = talos_pipeline("verify", "--full", "--provenance", *args)
    return result.returncode, output(result)


def test_every_file_has_an_attestation_that_says_what_it_was_made_from(signed, simulator):
    store = signed["store"].open()
    files = catalog_files(store)
    assert len(files) == 4
    for file in files:
        assert file.item["attestation"] == file.path + ".intoto.sigstore.json"
        body = _statement(store, file)
        assert body["_type"] == "https://in-toto.io/Statement/v1" and body["predicateType"] == PREDICATE_TYPE
        assert body["subject"] == [{"name": file.path.rsplit("/", 1)[1], "digest": {"sha256": file.item["sha256"]}}]
        definition = body["predicate"]["buildDefinition"]
        variant = file.product.rsplit(":", 1)[1]
        schematic = (
            signed["schematic"]
            if variant == "qga"
            else "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
        )
        assert definition["externalParameters"] == {
            "file": "disk" if file.name == "disk.qcow2" else "metadata",
            "path": file.path,
            "talosVersion": "v1.12.0",
            "arch": "amd64",
            "variant": variant,
            "platform": "nocloud",
            "schematic": schematic,
            "diskMode": "mirror",
        }
        dependencies = {d["name"]: d for d in definition["resolvedDependencies"]}
        release = next(r for r in simulator.releases if r.tag == "v1.12.0")
        assert dependencies["talos-release"]["annotations"] == {
            "tag": "v1.12.0", "publishedAt": release.published_at, "prerelease": False,
        }  # fmt: skip
        disk = disk_of(store, file.product)
        assert dependencies["image-factory-disk"] == {
            "name": "image-factory-disk",
            "uri": simulator.image_url("v1.12.0", "amd64", "nocloud", schematic),
            "digest": {"sha256": disk.item["sha256"]},
        }
        versions = dependencies["image-factory-versions"]
        answer = requests.get(f"{simulator.factory_url}/versions", timeout=10).json()
        assert versions["uri"] == f"{simulator.factory_url}/versions"
        assert json.loads(base64.b64decode(versions["content"])) == answer and "v1.12.0" in answer
        assert versions["digest"]["sha256"] == hashlib.sha256(base64.b64decode(versions["content"])).hexdigest()
        if variant == "qga":
            document = base64.b64decode(dependencies["image-factory-schematic"]["content"])
            assert document.decode() == requests.get(f"{simulator.factory_url}/schematics/{schematic}", timeout=10).text
            assert hashlib.sha256(document).hexdigest() == schematic, "the factory names a schematic by its sha256"
        else:
            assert "image-factory-schematic" not in dependencies
        assert body["predicate"]["runDetails"] == {
            "builder": {
                "id": "https://github.com/talos-org/talos-incus/.github/workflows/publish.yml@refs/heads/main",
                "version": {"talos-pipeline": Builder.current().version},
            },
            "metadata": {"invocationId": "https://github.com/talos-org/talos-incus/actions/runs/4242"},
        }


def test_attestations_verify_with_talos_pipeline_and_sigstore_js(signed, node_verifier):
    code, out = _verify(*signed["policy"])
    assert code == 0, out
    assert out.count(".intoto.sigstore.json: verified attestation") == 4, out
    assert out.count("and agrees with the catalog") == 4
    root = signed["store"].directory
    for file in catalog_files(signed["store"].open()):
        result = run_node(node_verifier, "--bundle", root / file.item["attestation"], "--artifact", root / file.path,
                          "--predicate-type", PREDICATE_TYPE, *signed["node"])  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith(f"OK: {'key-mode' if signed['mode'] == 'key' else 'keyless'} attestation")


def test_republishing_keeps_the_attestations_and_the_store_byte_identical(signed, monkeypatch):
    before = tree_digest(signed["store"].directory)
    monkeypatch.setenv("GITHUB_RUN_ID", "4243")  # another run: its builder does not make a new statement
    assert publish(["v1.12.0"], ["amd64"]).ok
    assert tree_digest(signed["store"].directory) == before


def _tamper(store: Store, key: str, change: Callable[[dict], None]) -> None:
    """Edit the statement inside an attestation, leaving its signature as it was."""
    bundle = json.loads(store.read_bytes(key))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    change(statement)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    store.put_bytes(key, json.dumps(bundle).encode())


def test_a_tampered_predicate_fails(signed, node_verifier):
    store = signed["store"].open()
    disk = disk_of(store, "talos:v1.12.0:amd64:nocloud")
    attestation = disk.item["attestation"]
    _tamper(
        store, attestation, lambda s: s["predicate"]["buildDefinition"]["externalParameters"].update(diskMode="proxy")
    )
    code, out = _verify(*signed["policy"])
    assert code == 1 and "FAIL talos:v1.12.0:amd64:nocloud" in out, out
    assert f"problem: {attestation}: signature does not match the attestation's statement" in out, out
    root = signed["store"].directory
    result = run_node(node_verifier, "--bundle", root / attestation, "--artifact", root / disk.path, *signed["node"])
    # sigstore-js compares a keyless bundle's Rekor entry (it logs the payload's hash) first.
    assert result.returncode == 1, result.stdout
    assert "SIGNATURE_ERROR" in result.stderr or "DSSE payload hash mismatch" in result.stderr, result.stderr


def test_an_attestation_about_another_file_fails(signed, node_verifier):
    """A genuine, validly signed attestation of the metadata tarball, put where the disk's goes."""
    store = signed["store"].open()
    files = {f.name: f for f in catalog_files(store) if f.product == "talos:v1.12.0:amd64:nocloud"}
    disk, tarball = files["disk.qcow2"], files["incus.tar.xz"]
    store.put_bytes(disk.item["attestation"], store.read_bytes(tarball.item["attestation"]))
    code, out = _verify(*signed["policy"])
    assert code == 1, out
    assert (
        f"problem: {disk.item['attestation']}: its subject is sha256 {tarball.item['sha256']}, "
        f"but {disk.path} has sha256 {disk.item['sha256']}"
    ) in out, out
    root = signed["store"].directory
    result = run_node(node_verifier, "--bundle", root / disk.item["attestation"], "--artifact", root / disk.path,
                      *signed["node"])  # fmt: skip
    assert result.returncode == 1 and "subject digest mismatch" in result.stderr, result.stderr


def _resign(signed: dict, keys, fake: FakeSigstore, statement: bytes, *, foreign: bool) -> bytes:
    """`statement` signed by the trusted signer, or (`foreign`) by another key or repository."""
    if signed["mode"] == "key":
        return KeySigner(str(keys["theirs.key" if foreign else "ours.key"])).sign_statement(statement)
    token = fake.mint_token(repository="talos-org/talos-incus-evil" if foreign else None)
    with SigstoreSigner(trust_config_path=fake.trust_config_path, identity_token=token) as signer:
        return signer.sign_statement(statement)


def test_a_signed_statement_that_contradicts_the_catalog_fails(signed, keys, fake_sigstore):
    """Validly signed by the trusted signer, but about another version: the predicate must agree."""
    store = signed["store"].open()
    disk = disk_of(store, "talos:v1.12.0:amd64:qga")
    statement = _statement(store, disk)
    statement["predicate"]["buildDefinition"]["externalParameters"]["talosVersion"] = "v1.11.6"
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    store.put_bytes(disk.item["attestation"], _resign(signed, keys, fake_sigstore, payload, foreign=False))
    code, out = _verify(*signed["policy"])
    assert code == 1 and "FAIL talos:v1.12.0:amd64:qga" in out, out
    assert f"problem: {disk.item['attestation']}: it states talosVersion 'v1.11.6', the catalog 'v1.12.0'" in out
    assert read_statement(payload).facts.version == "v1.11.6"


def test_an_attestation_from_a_foreign_key_or_identity_fails(signed, keys, fake_sigstore, node_verifier):
    store = signed["store"].open()
    disk = disk_of(store, "talos:v1.12.0:amd64:nocloud")
    genuine = base64.b64decode(json.loads(store.read_bytes(disk.item["attestation"]))["dsseEnvelope"]["payload"])
    store.put_bytes(disk.item["attestation"], _resign(signed, keys, fake_sigstore, genuine, foreign=True))
    code, out = _verify(*signed["policy"])
    assert code == 1, out
    if signed["mode"] == "key":
        theirs = KeySigner(str(keys["theirs.key"])).hint
        assert f"problem: {disk.item['attestation']}: the attestation was signed with the key {theirs}, not " in out
    else:
        evil = fake_sigstore.expected_san("talos-org/talos-incus-evil")
        assert f"problem: {disk.item['attestation']}: bundle verification failed: certificate identity {evil} " in out
    root = signed["store"].directory
    result = run_node(node_verifier, "--bundle", root / disk.item["attestation"], "--artifact", root / disk.path,
                      *signed["node"])  # fmt: skip
    assert result.returncode == 1, result.stdout


def test_unsigned_stores_have_no_attestations_and_a_policy_refuses_them(pipeline_env, keys):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok  # TALOS_SIGNING=none
    store = pipeline_env.open()
    assert not [key for key in pipeline_env.keys("images/") if key.endswith(".intoto.sigstore.json")]
    assert all("attestation" not in file.item for file in catalog_files(store))
    code, out = _verify()
    assert code == 0 and "no provenance attestations (unsigned)" in out, out
    code, out = _verify("--key", keys["ours.pub"])
    assert code == 1, out
    assert "the catalog names no provenance attestation, but --provenance with --key" in out, out


def test_serve_answers_every_attestation_the_catalog_names(signed):
    """Attestations are catalog files like the bundles: `serve/` answers them (with the bundle media
    type), so users of a served store can fetch what `cosign verify-blob-attestation` needs."""
    store = signed["store"].open()
    url, stop = start_in_thread(create_app(store))
    try:
        for file in catalog_files(store):
            answer = requests.get(f"{url}/{file.item['attestation']}", timeout=10)
            assert answer.status_code == 200, f"{file.item['attestation']}: {answer.status_code}"
            assert answer.content == store.read_bytes(file.item["attestation"])
            assert answer.headers["Content-Type"].startswith("application/vnd.dev.sigstore.bundle")
    finally:
        stop()
