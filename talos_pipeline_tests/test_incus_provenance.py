"""The real Incus client and daemon ignore what signing adds to the catalog: the `signature` and
`attestation` fields of each item (docs/provenance.md). A signed store (key mode, so every item
names both) is listed, inspected and copied exactly like an unsigned one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve import create_app, generate_self_signed, start_in_thread
from talos_pipeline.core.signing import generate_key_pair
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.launch import publish

from .incus_fixtures import IncusClient, needs_incus, start_incusd, stop_incusd

pytestmark = [needs_incus, pytest.mark.slow, pytest.mark.incus]
STORE_KINDS = ["dir"]


@pytest.fixture
def signed_store(pipeline_env, monkeypatch, tmp_path) -> Path:
    generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    monkeypatch.setenv("TALOS_SIGNING", "key")
    monkeypatch.setenv("TALOS_SIGNING_KEY", str(tmp_path / "k.key"))
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud")
    assert publish(["v1.12.0"], ["amd64"]).ok
    return pipeline_env.directory


def test_incus_lists_and_copies_a_signed_and_attested_store(signed_store, tmp_path):
    images = json.loads((signed_store / "streams/v1/images.json").read_text())
    (product,) = images["products"].values()
    (version,) = product["versions"].values()
    items = version["items"].values()
    assert all(item["signature"] and item["attestation"] for item in items)
    fingerprint = next(i["combined_disk-kvm-img_sha256"] for i in items if i["ftype"] == "incus.tar.xz")

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert, key)
    state = tmp_path / "incus"
    state.mkdir()
    daemon = start_incusd(state, cert)
    url, stop = start_in_thread(create_app(DirectoryStore(signed_store)), cert=str(cert), key=str(key))
    try:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(tmp_path),
            "INCUS_DIR": str(state),
            "INCUS_CONF": str(tmp_path / "conf"),
            "INCUS_CACHE": str(tmp_path / "cache"),
        }
        incus = IncusClient(env=env, conf=tmp_path / "conf")
        incus.add_remote("talos", url, cert)
        assert [image["fingerprint"] for image in incus.json("image", "list", "talos:")] == [fingerprint]
        assert f"Fingerprint: {fingerprint}" in incus.run("image", "info", "talos:talos/v1.12.0").stdout
        incus.run("image", "copy", "talos:talos/v1.12.0", "local:", "--vm")
        assert fingerprint in {image["fingerprint"] for image in incus.json("image", "list", "local:")}
    finally:
        stop()
        stop_incusd(daemon)
