"""End to end with the real Incus client and daemon against a store the pipeline published.

`incus remote add … --protocol simplestreams`, `image list`, `image alias list`, `image info`,
`image copy … --vm` (incusd downloads and checks both files and the fingerprint) and
`image import https://…` (direct URL import of the unified tarball) — and the failures Incus
must report when the store is corrupted or the factory's bytes drifted under proxy mode.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serve import create_app, generate_self_signed, start_in_thread
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.launch import publish
from talos_pipeline.simulator import UpstreamSimulator

from .incus_fixtures import IncusClient, needs_incus, start_incusd, stop_incusd

pytestmark = [needs_incus, pytest.mark.slow, pytest.mark.incus]

VERSIONS = ["v1.11.6", "v1.12.0", "v1.12.1", "v1.12.0-beta.1"]
DISK = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "server.crt", directory / "server.key"
    generate_self_signed(cert, key)
    return cert, key


@pytest.fixture(scope="module")
def incusd(tmp_path_factory, tls):
    state = tmp_path_factory.mktemp("incus")
    proc = start_incusd(state, tls[0])
    yield state
    stop_incusd(proc)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    with UpstreamSimulator(disk_size=DISK, cache_dir=str(tmp_path_factory.mktemp("qcow2"))) as simulator:
        yield simulator


def _publish(store: Path | str, sim: UpstreamSimulator, versions: list[str], **env: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "TALOS_STORE": str(store),
            "TALOS_RELEASES_URL": sim.releases_url,
            "TALOS_FACTORY_URL": sim.factory_url,
            "TALOS_SIGNING": "none",
            **env,
        }.items():
            mp.setenv(name, value)
        mp.delenv("DAGSTER_HOME", raising=False)
        outcome = publish(versions)
    assert outcome.ok, outcome.failed


@pytest.fixture(scope="module")
def store(tmp_path_factory, sim) -> Path:
    root = tmp_path_factory.mktemp("published") / "store"
    _publish(root, sim, VERSIONS)
    return root


@pytest.fixture(scope="module")
def server(store, tls):
    url, stop = start_in_thread(create_app(DirectoryStore(store)), cert=str(tls[0]), key=str(tls[1]))
    yield url
    stop()


@pytest.fixture
def client(tmp_path, incusd, server, tls) -> IncusClient:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "INCUS_DIR": str(incusd),
        "INCUS_CONF": str(tmp_path / "conf"),
        "INCUS_CACHE": str(tmp_path / "cache"),
    }
    incus = IncusClient(env=env, conf=tmp_path / "conf")
    incus.add_remote("talos", server, tls[0])
    return incus


def _catalog(store: Path) -> dict:
    return json.loads((store / "streams/v1/images.json").read_text())


def _fingerprint(product: dict) -> str:
    (version,) = product["versions"].values()
    return next(i for i in version["items"].values() if i["ftype"] == "incus.tar.xz")["combined_disk-kvm-img_sha256"]


def test_image_list_shows_every_published_image_with_its_properties(client, store):
    products = _catalog(store)["products"]
    listed = client.json("image", "list", "talos:")
    by_fingerprint = {image["fingerprint"]: image for image in listed}
    assert set(by_fingerprint) == {_fingerprint(p) for p in products.values()}
    for product in products.values():
        image = by_fingerprint[_fingerprint(product)]
        properties = image["properties"]
        assert properties["os"] == "Talos" and properties["release"] == product["release"]
        assert properties["variant"] == product["variant"] and properties["architecture"] == product["arch"]
        assert properties["requirements.secureboot"] == "false"
        assert image["type"] == "virtual-machine"


def test_aliases_resolve_for_every_form(client, store):
    names = {alias["name"] for alias in client.json("image", "alias", "list", "talos:")}
    for alias in (
        "talos/v1.12.1",
        "talos/v1.12.1/nocloud",
        "talos/v1.12.1/metal",
        "talos/v1.12",
        "talos/v1.11",
        "talos/latest",
        "talos/v1.12.0-beta.1",
    ):
        assert alias in names, f"{alias} missing from {sorted(names)}"
        assert f"{alias}/amd64" in names
    products = _catalog(store)["products"]
    expectations = {
        "talos/latest": "talos:v1.12.1:amd64:nocloud",
        "talos/v1.12.0/amd64": "talos:v1.12.0:amd64:nocloud",
        "talos/v1.11/arm64": "talos:v1.11.6:arm64:nocloud",
        "talos/v1.12.0/metal/arm64": "talos:v1.12.0:arm64:metal",
    }
    for alias, product_key in expectations.items():
        info = client.run("image", "info", f"talos:{alias}").stdout
        assert f"Fingerprint: {_fingerprint(products[product_key])}" in info, f"{alias}: {info}"


def test_image_copy_downloads_and_checks_both_files(client, store):
    expected = _fingerprint(_catalog(store)["products"]["talos:v1.12.0:amd64:nocloud"])
    client.run("image", "copy", "talos:talos/v1.12.0", "local:", "--vm", "--alias", "copied-v1.12.0")
    local = {image["fingerprint"]: image for image in client.json("image", "list", "local:")}
    assert expected in local and local[expected]["type"] == "virtual-machine"
    client.run("image", "delete", f"local:{expected}")


def test_direct_url_import_gets_the_advertised_unified_image(client, server, store):
    import requests

    head = requests.head(f"{server}/talos/v1.12.1/amd64", verify=str(client.conf / "servercerts/talos.crt"), timeout=10)
    advertised = head.headers["Incus-Image-Hash"]
    client.run("image", "import", f"{server}/talos/v1.12.1/amd64", "--alias", "imported-v1.12.1")
    local = {image["fingerprint"]: image for image in client.json("image", "list", "local:")}
    assert advertised in local, f"{advertised} not among {list(local)}"
    assert local[advertised]["type"] == "virtual-machine"
    assert local[advertised]["properties"]["requirements.secureboot"] == "false"
    client.run("image", "delete", f"local:{advertised}")


def _serve_copy(tmp_path: Path, store: Path, tls, incusd, **app_kwargs) -> tuple[IncusClient, callable, object]:
    app = create_app(DirectoryStore(store), **app_kwargs)
    url, stop = start_in_thread(app, cert=str(tls[0]), key=str(tls[1]))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "INCUS_DIR": str(incusd),
        "INCUS_CONF": str(tmp_path / "conf2"),
        "INCUS_CACHE": str(tmp_path / "cache2"),
    }
    incus = IncusClient(env=env, conf=tmp_path / "conf2")
    incus.add_remote("broken", url, tls[0])
    return incus, stop, app


@pytest.mark.parametrize("verify_reads", [False, True], ids=["client-detects", "server-cuts-off"])
def test_a_corrupted_stored_disk_makes_image_copy_fail(tmp_path, store, tls, incusd, verify_reads):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(store, corrupted)
    product = _catalog(corrupted)["products"]["talos:v1.11.6:amd64:nocloud"]
    (version,) = product["versions"].values()
    disk = next(i for i in version["items"].values() if i["ftype"] == "disk-kvm.img")
    path = corrupted / disk["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    incus, stop, _ = _serve_copy(tmp_path, corrupted, tls, incusd, verify_reads=verify_reads)
    try:
        result = incus.run("image", "copy", "broken:talos/v1.11.6", "local:", "--vm", check=False)
    finally:
        stop()
    assert result.returncode != 0, "Incus accepted a corrupted disk"
    if not verify_reads:
        assert "Hash mismatch" in result.stderr, result.stderr
    assert not [i for i in incus.json("image", "list", "local:") if "v1.11.6" in json.dumps(i)]


def test_proxy_mode_drift_fails_the_download_and_is_reported(tmp_path, tls, incusd, caplog):
    with UpstreamSimulator(disk_size=DISK) as sim:
        store = tmp_path / "proxy-store"
        _publish(store, sim, ["v1.12.0"], TALOS_DISK_MODE="proxy", TALOS_ARCHES="amd64", TALOS_VARIANTS="nocloud")
        assert not list(store.glob("images/**/disk-*.qcow2")), "proxy mode keeps no disk in the store"
        incus, stop, app = _serve_copy(tmp_path, store, tls, incusd, disk_mode="proxy", factory_url=sim.factory_url)
        try:
            incus.run("image", "copy", "broken:talos/v1.12.0", "local:", "--vm")
            sim.drift("v1.12.0", "amd64", "nocloud")
            incus.run(
                "image", "delete", "local:" + _fingerprint(_catalog(store)["products"]["talos:v1.12.0:amd64:nocloud"])
            )
            result = incus.run("image", "copy", "broken:talos/v1.12.0", "local:", "--vm", check=False)
        finally:
            stop()
        assert result.returncode != 0, result.stdout
        assert app.state.metrics["proxy_drift"] >= 1, result.stderr
        assert any(
            "v1.12.0" in r.getMessage() and "amd64" in r.getMessage() for r in caplog.records if r.levelname == "ERROR"
        )


def test_image_copy_and_direct_import_from_an_s3_store(tmp_path, sim, tls, incusd, s3_store_url):
    """The same client flow with the store in an S3 bucket (moto over HTTP): publish and serve both
    read and write it through boto3 only."""
    from talos_pipeline.core.stores import open_store

    _publish(s3_store_url, sim, ["v1.12.1"], TALOS_ARCHES="amd64", TALOS_VARIANTS="nocloud")
    store = open_store(s3_store_url)
    images = json.loads(store.read_bytes("streams/v1/images.json"))
    expected = _fingerprint(images["products"]["talos:v1.12.1:amd64:nocloud"])
    url, stop = start_in_thread(create_app(store), cert=str(tls[0]), key=str(tls[1]))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "INCUS_DIR": str(incusd),
        "INCUS_CONF": str(tmp_path / "conf-s3"),
        "INCUS_CACHE": str(tmp_path / "cache-s3"),
    }
    incus = IncusClient(env=env, conf=tmp_path / "conf-s3")
    incus.add_remote("s3talos", url, tls[0])
    try:
        incus.run("image", "copy", "s3talos:talos/latest", "local:", "--vm")
        incus.run("image", "delete", f"local:{expected}")
        incus.run("image", "import", f"{url}/talos/v1.12.1/amd64")
    finally:
        stop()
    unified = images["products"]["talos:v1.12.1:amd64:nocloud"]["versions"]
    (version,) = unified.values()
    disk = next(i for i in version["items"].values() if i["ftype"] == "disk-kvm.img")
    local = {image["fingerprint"] for image in incus.json("image", "list", "local:")}
    assert disk["unified_sha256"] in local
    incus.run("image", "delete", f"local:{disk['unified_sha256']}")
