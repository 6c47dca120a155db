"""Signing through the pipeline: keyless against the loopback fake Sigstore (driven only by
environment variables, as in GitHub Actions), key mode, and `talos-pipeline verify`."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from talos_pipeline.cli import main
from talos_pipeline.core.signing.bundles import public_key_hint
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.defs.partitions import image_partition_key, talos_versions
from talos_pipeline.launch import publish
from talos_pipeline_tests.fake_sigstore import GITHUB_ISSUER, FakeSigstore, ambient_env
from talos_pipeline_tests.fake_sigstore.fixtures import run_node

from .conftest import tree_digest


def _items(store: Path) -> list[dict]:
    images = json.loads((store / "streams/v1/images.json").read_text())
    return [item for p in images["products"].values() for v in p["versions"].values() for item in v["items"].values()]


@pytest.fixture
def keyless(pipeline_env, sigstore_ambient, monkeypatch) -> Path:
    monkeypatch.setenv("TALOS_SIGNING", "sigstore")
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    return pipeline_env


def _verify(capsys, *args: str) -> tuple[int, str]:
    code = main(["verify", *args])
    return code, capsys.readouterr().out


def test_keyless_bundles_verify_with_the_identity_policy(
    keyless, sigstore_ambient: FakeSigstore, capsys, node_verifier
):
    issued = sigstore_ambient.counters.fulcio_certificates_issued
    outcome = publish(["v1.12.0"], ["amd64"])
    assert outcome.ok, outcome.failed
    certificates = sigstore_ambient.counters.fulcio_certificates_issued - issued
    assert certificates == 2, "one certificate for the check before any download, one for the run"
    items = _items(keyless)
    assert items and all(item["signature"].endswith(".sigstore.json") for item in items)
    code, out = _verify(
        capsys,
        "--certificate-identity-regexp",
        sigstore_ambient.identity_regexp(),
        "--certificate-oidc-issuer",
        GITHUB_ISSUER,
    )
    assert code == 0, out
    for item in items:
        result = run_node(
            node_verifier,
            "--bundle",
            keyless / item["signature"],
            "--artifact",
            keyless / item["path"],
            "--trusted-root",
            sigstore_ambient.trusted_root_path,
            "--san",
            sigstore_ambient.expected_san(),
            "--issuer",
            GITHUB_ISSUER,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_keyless_republish_keeps_the_store_byte_identical(keyless):
    assert publish(["v1.12.0"], ["amd64"]).ok
    before = tree_digest(keyless)
    assert publish(["v1.12.0"], ["amd64"]).ok
    assert tree_digest(keyless) == before


def test_verify_rejects_wrong_identity_issuer_root_and_tampering(keyless, sigstore_ambient, capsys, tmp_path):
    assert publish(["v1.12.0"], ["amd64"]).ok
    evil = sigstore_ambient.identity_regexp().rstrip("/") + "-evil/"
    code, out = _verify(capsys, "--certificate-identity-regexp", evil, "--certificate-oidc-issuer", GITHUB_ISSUER)
    assert code == 1 and "does not match regexp" in out
    code, out = _verify(
        capsys,
        "--certificate-identity-regexp",
        sigstore_ambient.identity_regexp(),
        "--certificate-oidc-issuer",
        "https://accounts.example.com",
    )
    assert code == 1 and "issuer" in out
    with FakeSigstore() as other:
        code, out = _verify(
            capsys,
            "--certificate-identity-regexp",
            sigstore_ambient.identity_regexp(),
            "--certificate-oidc-issuer",
            GITHUB_ISSUER,
            "--trust-config",
            str(other.trust_config_path),
        )
    assert code == 1 and "problem" in out
    tarball = next(keyless.glob("images/**/incus-*.tar.xz"))
    tarball.write_bytes(tarball.read_bytes()[:-1] + b"\0")
    code, out = _verify(
        capsys,
        "--certificate-identity-regexp",
        sigstore_ambient.identity_regexp(),
        "--certificate-oidc-issuer",
        GITHUB_ISSUER,
    )
    assert code == 1 and tarball.name in out


def test_a_forged_token_publishes_nothing(pipeline_env, fake_sigstore, monkeypatch, capsys):
    for name, value in ambient_env(fake_sigstore, kind="forged").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TALOS_SIGNING", "sigstore")
    assert main(["publish", "v1.12.0", "--arch", "amd64", "--variant", "nocloud"]) == 1
    err = capsys.readouterr().err  # checked before any download (core/preflight.py): no partition ran
    assert "Fulcio" in err and "cannot get a signing certificate" in err
    assert not (pipeline_env / "records").exists()
    assert not (pipeline_env / "streams").exists()


def test_key_mode_round_trip_with_cosign_format_bundles(pipeline_env, monkeypatch, tmp_path, capsys, node_verifier):
    assert main(["keygen", "--output", str(tmp_path / "k")]) == 0
    monkeypatch.setenv("TALOS_SIGNING", "key")
    monkeypatch.setenv("TALOS_SIGNING_KEY", str(tmp_path / "k.key"))
    assert publish(["v1.11.6"], ["arm64"]).ok
    before = tree_digest(pipeline_env)
    assert publish(["v1.11.6"], ["arm64"]).ok
    assert tree_digest(pipeline_env) == before, "key-mode bundles are not rewritten on republish"
    capsys.readouterr()
    code, out = _verify(capsys, "--key", str(tmp_path / "k.pub"))
    assert code == 0, out
    for item in _items(pipeline_env):
        bundle = json.loads((pipeline_env / item["signature"]).read_text())
        assert bundle["verificationMaterial"]["tlogEntries"] == [] and "publicKey" in bundle["verificationMaterial"]
        result = run_node(
            node_verifier,
            "--bundle",
            pipeline_env / item["signature"],
            "--artifact",
            pipeline_env / item["path"],
            "--key",
            tmp_path / "k.pub",
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert main(["keygen", "--output", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    code, out = _verify(capsys, "--key", str(tmp_path / "other.pub"))
    assert code == 1 and "problem" in out


def test_unsigned_stores_say_so(pipeline_env, capsys):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok
    code, out = _verify(capsys)
    assert code == 0 and "unsigned (published with TALOS_SIGNING=none)" in out


def test_keyless_signing_into_an_s3_store_verifies(s3_store_url, sigstore_ambient, simulator, monkeypatch, capsys):
    for name, value in {
        "TALOS_STORE": s3_store_url,
        "TALOS_RELEASES_URL": simulator.releases_url,
        "TALOS_FACTORY_URL": simulator.factory_url,
        "TALOS_SIGNING": "sigstore",
        "TALOS_VARIANTS": "nocloud",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert publish(["v1.12.0"], ["arm64"]).ok
    code, out = _verify(
        capsys,
        "--certificate-identity-regexp",
        sigstore_ambient.identity_regexp(),
        "--certificate-oidc-issuer",
        GITHUB_ISSUER,
    )
    assert code == 0 and "s3://" in out, out
    assert out.count(".sigstore.json: ") == 2, out


def _sign(assets: tuple[str, ...] = ("talos_signatures", "talos_image")) -> dg.ExecuteInProcessResult:
    """The `sign_images` job of the code location (resources bound to the environment, as in a
    deployment) on the partition v1.12.0 × amd64, nocloud only."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(talos_versions.name, ["v1.12.0"])
    return (
        load_definitions()
        .resolve_job_def("sign_images")
        .execute_in_process(
            instance=instance,
            partition_key=image_partition_key("v1.12.0", "amd64"),
            run_config={"ops": {name: {"config": {"variants": ["nocloud"]}} for name in assets}},
            asset_selection=[dg.AssetKey(name) for name in assets],
            raise_on_error=False,
        )
    )


def _bundle_rows(result: dg.ExecuteInProcessResult) -> list[dict]:
    (materialization,) = result.asset_materializations_for_node("talos_signatures")
    return [record.data for record in materialization.metadata["bundles"].value.records]


def test_signing_runs_again_alone_after_turning_it_on_and_rotating_the_key(
    pipeline_env, simulator, monkeypatch, tmp_path, capsys
):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok  # TALOS_SIGNING=none
    downloads = simulator.total_downloads()
    for stem in ("first", "second"):
        assert main(["keygen", "--output", str(tmp_path / stem)]) == 0
    monkeypatch.setenv("TALOS_SIGNING", "key")
    monkeypatch.setenv("TALOS_SIGNING_KEY", str(tmp_path / "first.key"))

    records_only = _sign(("talos_image",))
    assert not records_only.success, "no record names a bundle that is not there"
    assert "materialize talos_signatures" in str(records_only.all_events)

    signed = _sign()
    assert signed.success
    hint = public_key_hint((tmp_path / "first.pub").read_bytes())
    assert [(r["file"], r["content"], r["kind"], r["signer"], r["kept"]) for r in _bundle_rows(signed)] == [
        ("metadata", "signature", "key", hint, False),
        ("metadata", "provenance", "key", hint, False),
        ("disk", "signature", "key", hint, False),
        ("disk", "provenance", "key", hint, False),
    ]
    for row in _bundle_rows(signed):
        attestation = row["bundle"].endswith(".intoto.sigstore.json")
        assert row["bundle"].endswith(".sigstore.json") and attestation == (row["content"] == "provenance")
    capsys.readouterr()
    assert main(["catalog"]) == 0
    assert "catalog: 1 products" in capsys.readouterr().out
    code, out = _verify(capsys, "--provenance", "--key", str(tmp_path / "first.pub"))
    assert code == 0, out
    assert simulator.total_downloads() == downloads, "signing and attesting read the store, never the factory"

    unchanged = tree_digest(pipeline_env)
    again = _sign()
    assert [r["kept"] for r in _bundle_rows(again)] == [True] * 4
    assert tree_digest(pipeline_env) == unchanged

    monkeypatch.setenv("TALOS_SIGNING_KEY", str(tmp_path / "second.key"))  # key rotation
    rotated = _sign()
    assert [(r["signer"], r["kept"]) for r in _bundle_rows(rotated)] == [
        (public_key_hint((tmp_path / "second.pub").read_bytes()), False)
    ] * 4
    assert main(["catalog"]) == 0
    assert _verify(capsys, "--provenance", "--key", str(tmp_path / "second.pub"))[0] == 0
    assert _verify(capsys, "--key", str(tmp_path / "first.pub"))[0] == 1
    assert simulator.total_downloads() == downloads
