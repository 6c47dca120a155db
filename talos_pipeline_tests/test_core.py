"""Unit tests of the Dagster-free domain core."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from talos_pipeline.core.errors import ConfigError, StoreError
from talos_pipeline.core.hashing import ImageDigester
from talos_pipeline.core.images import ImageRef
from talos_pipeline.core.metadata import metadata_tarball, read_metadata_yaml, unified_layout
from talos_pipeline.core.records import ProductRecord, PublishedFile
from talos_pipeline.core.releases import ReleaseFacts
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.simplestreams import assign_aliases, render_catalog
from talos_pipeline.core.stores import DirectoryStore, check_key
from talos_pipeline.core.variants import Variant, parse_arches, parse_variants, select_variants
from talos_pipeline.core.versions import InvalidVersionError, TalosVersion, serial_for, sorted_tags

NOCLOUD = Variant("nocloud", "nocloud")
METAL = Variant("metal", "metal")
RELEASE = ReleaseFacts("v1.12.0", "2025-12-22T18:05:12Z", False)


@pytest.mark.parametrize(
    "tag", ["v1.12", "latest", "v1.12.0|x", "1.12.0", "v1.12.0-foo.1", "v01.2.3", "v1.12.0/../x", "", "v1.12.0 "]
)
def test_malformed_tags_are_refused_with_the_value_named(tag):
    with pytest.raises(InvalidVersionError, match="is not a Talos release tag"):
        TalosVersion.parse(tag)


def test_version_order_puts_prereleases_before_their_release():
    tags = ["v1.12.0", "v1.11.6", "v1.12.0-rc.0", "v1.12.0-beta.1", "v1.12.0-alpha.2", "v1.10.10", "v1.12.1"]
    assert sorted_tags(tags) == [
        "v1.10.10",
        "v1.11.6",
        "v1.12.0-alpha.2",
        "v1.12.0-beta.1",
        "v1.12.0-rc.0",
        "v1.12.0",
        "v1.12.1",
    ]
    assert TalosVersion.parse("v1.12.3").minor_line == "v1.12"


def test_serial_is_the_utc_publish_minute():
    assert serial_for("2025-12-22T18:05:12Z") == "20251222_18:05"
    assert serial_for("2025-12-22T20:05:12+02:00") == "20251222_18:05"


def test_variants_parse_defaults_and_custom_schematics():
    variants = parse_variants("nocloud,metal,qga=nocloud:" + "a" * 64)
    assert [v.name for v in variants] == ["nocloud", "metal", "qga"]
    assert variants[2].schematic == "a" * 64 and variants[2].platform == "nocloud"
    assert variants[0].is_vanilla


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("aws", "unknown variant 'aws'"),
        ("x=openstack", "unknown platform 'openstack'"),
        ("qga=nocloud:1234", "is not 64 lowercase hex"),
        ("nocloud,nocloud", "more than once"),
        ("", "is empty"),
        ("Bad", "the name must be"),
    ],
)
def test_bad_variants_name_the_value(value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_variants(value)


def test_select_and_arch_errors_name_the_value():
    with pytest.raises(ConfigError, match="unknown variant 'gcp'"):
        select_variants(parse_variants("nocloud"), ["gcp"])
    with pytest.raises(ConfigError, match="unknown architecture 'x86'"):
        parse_arches("amd64,x86")


def test_settings_reject_bad_modes():
    with pytest.raises(ConfigError, match="TALOS_DISK_MODE='cache'"):
        Settings.from_env({"TALOS_DISK_MODE": "cache"})
    with pytest.raises(ConfigError, match="TALOS_SIGNING_KEY"):
        Settings.from_env({"TALOS_SIGNING": "key"})
    with pytest.raises(ConfigError, match="TALOS_SIGNING='gpg'"):
        Settings.from_env({"TALOS_SIGNING": "gpg"})


def test_metadata_tarball_is_deterministic_and_valid_for_incus():
    image = ImageRef("v1.12.0", "arm64", NOCLOUD)
    first, second = metadata_tarball(image, RELEASE), metadata_tarball(image, RELEASE)
    assert first == second and len(first) < 1024
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:xz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "metadata.yaml" and member.uid == 0 and member.mtime > 0
        yaml = tar.extractfile(member).read().decode()
    assert "architecture: aarch64" in yaml and "creation_date: 1766426712" in yaml
    assert 'requirements.secureboot: "false"' in yaml and 'serial: "20251222_18:05"' in yaml
    assert metadata_tarball(ImageRef("v1.12.0", "arm64", METAL), RELEASE) != first


def test_unified_tarball_layout_is_a_readable_tar_with_a_precomputed_hash():
    image = ImageRef("v1.12.0", "amd64", NOCLOUD)
    disk = bytes(range(256)) * 4099
    tarball = metadata_tarball(image, RELEASE)
    layout = unified_layout(image, RELEASE, len(disk))
    digester = ImageDigester(tarball, layout.prefix, lambda size: layout.suffix)
    for start in range(0, len(disk), 65536):
        digester.update(disk[start : start + 65536])
    digests = digester.finish()
    whole = layout.prefix + disk + layout.suffix
    assert digests.unified_size == len(whole) == layout.size
    assert digests.unified_sha256 == hashlib.sha256(whole).hexdigest()
    assert digests.fingerprint == hashlib.sha256(tarball + disk).hexdigest()
    assert digests.sha256 == hashlib.sha256(disk).hexdigest() and digests.size == len(disk)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        assert tar.getnames() == ["metadata.yaml", "rootfs.img"]
        assert tar.extractfile("rootfs.img").read() == disk
        yaml, mtime = read_metadata_yaml(tarball)
        assert tar.extractfile("metadata.yaml").read() == yaml
        assert tar.getmember("metadata.yaml").mtime == tar.getmember("rootfs.img").mtime == mtime


def _record(version: str, arch: str, variant: Variant, prerelease: bool = False) -> ProductRecord:
    image = ImageRef(version, arch, variant)
    return ProductRecord(
        version=version,
        arch=arch,
        variant=variant.name,
        platform=variant.platform,
        schematic=variant.schematic,
        serial="20251222_18:05",
        published_at="2025-12-22T18:05:12Z",
        prerelease=prerelease,
        fingerprint="f" * 64,
        metadata=PublishedFile(image.metadata_key("a" * 64), "a" * 64, 400),
        disk=PublishedFile(image.disk_key("b" * 64), "b" * 64, 1000),
        unified_sha256="c" * 64,
        unified_size=3000,
        disk_mode="mirror",
        upstream_path=image.factory_path(),
        signing="none",
    )


def test_aliases_have_one_owner_per_arch_and_follow_the_rules():
    records = [
        _record(v, a, var, prerelease="-" in v)
        for v in ("v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1", "v1.13.0-beta.1")
        for a in ("amd64", "arm64")
        for var in (NOCLOUD, METAL)
    ]
    aliases = assign_aliases(records, ["nocloud", "metal"])
    owners: dict[tuple[str, str], str] = {}
    for record in records:
        for alias in aliases.get(record.product_key, []):
            assert (alias, record.arch) not in owners, f"{alias} owned twice on {record.arch}"
            owners[(alias, record.arch)] = record.product_key
    assert owners[("talos/latest", "amd64")] == "talos:v1.12.1:amd64:nocloud"
    assert owners[("talos/latest/metal", "arm64")] == "talos:v1.12.1:arm64:metal"
    assert owners[("talos/v1.11", "amd64")] == "talos:v1.11.6:amd64:nocloud"
    assert owners[("talos/v1.12.0", "amd64")] == "talos:v1.12.0:amd64:nocloud"
    assert owners[("talos/v1.12.0/metal", "amd64")] == "talos:v1.12.0:amd64:metal"
    assert owners[("talos/v1.13.0-beta.1", "amd64")] == "talos:v1.13.0-beta.1:amd64:nocloud"
    assert ("talos/v1.13", "amd64") not in owners, "a minor with only prereleases gets no minor alias"


def test_catalog_follows_what_incus_requires():
    records = [_record("v1.12.0", "amd64", NOCLOUD), _record("v1.12.0", "amd64", METAL)]
    index_bytes, images_bytes = render_catalog(records, ["nocloud", "metal"])
    assert render_catalog(list(reversed(records)), ["nocloud", "metal"]) == (index_bytes, images_bytes)
    index, images = json.loads(index_bytes), json.loads(images_bytes)
    entry = index["index"]["images"]
    assert entry["datatype"] == "image-downloads" and entry["path"] == "streams/v1/images.json"
    assert entry["products"] == sorted(images["products"])
    product = images["products"]["talos:v1.12.0:amd64:nocloud"]
    assert isinstance(product["aliases"], str) and "talos/v1.12.0" in product["aliases"].split(",")
    assert product["requirements"] == {"secureboot": "false"} and product["os"] == "Talos"
    ((serial, version),) = product["versions"].items()
    assert serial[:8].isdigit()
    items = {i["ftype"]: i for i in version["items"].values()}
    assert items["incus.tar.xz"]["combined_disk-kvm-img_sha256"] == "f" * 64
    assert isinstance(items["disk-kvm.img"]["size"], int)


def test_directory_store_is_atomic_idempotent_and_confined(tmp_path):
    store = DirectoryStore(tmp_path / "s")
    store.put_bytes("a/b.json", b"{}")
    before = (tmp_path / "s/a/b.json").stat().st_mtime_ns
    store.put_bytes("a/b.json", b"{}")
    assert (tmp_path / "s/a/b.json").stat().st_mtime_ns == before
    with store.upload() as upload:
        upload.write(b"x" * 10)
        upload.commit("images/x.qcow2")
    assert store.read_bytes("images/x.qcow2") == b"x" * 10
    assert b"".join(store.iter_range("images/x.qcow2", 2, 5)) == b"xxx"
    assert store.list_keys("images/") == ["images/x.qcow2"]
    with pytest.raises(RuntimeError), store.upload() as upload:
        upload.write(b"partial")
        raise RuntimeError("boom")
    assert not list((tmp_path / "s/.tmp").iterdir()), "an aborted upload leaves nothing behind"
    for bad in ("../x", "/etc/passwd", "a/../../x", "a//b", "a\\b", ".tmp/x", "a/.."):
        with pytest.raises(StoreError):
            check_key(bad)


def test_boolean_settings_parse_or_name_the_value():
    assert Settings.from_env({"TALOS_VERIFY_READS": "true"}).verify_reads is True
    assert Settings.from_env({"TALOS_VERIFY_READS": "0"}).verify_reads is False
    with pytest.raises(ConfigError, match="TALOS_VERIFY_READS='maybe'"):
        Settings.from_env({"TALOS_VERIFY_READS": "maybe"})
