"""The publishing spine end to end: simulator → Dagster jobs → store → catalog.

Every test runs against a directory store and an S3 store (see `pipeline_env` in conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from talos_pipeline.cli import main
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.launch import publish
from talos_pipeline_tests.fake_sigstore.fixtures import missing_tool

from .conftest import PipelineStore

VERSIONS = ["v1.11.6", "v1.12.0"]
ARCHES = ["amd64", "arm64"]
VARIANTS = {"nocloud": "nocloud", "metal": "metal"}

needs_incus_simplestreams = pytest.mark.skipif(
    shutil.which("incus-simplestreams") is None and not os.environ.get("CI"),
    reason="incus-simplestreams (Debian incus-extra) is not installed",
)


def _catalog(store: PipelineStore) -> dict:
    return json.loads(store.read("streams/v1/images.json"))


def _items(product: dict) -> dict[str, dict]:
    (version,) = product["versions"].values()
    return {item["ftype"]: item for item in version["items"].values()}


@pytest.fixture
def published(pipeline_env, simulator) -> PipelineStore:
    outcome = publish(VERSIONS)
    assert outcome.ok, outcome.failed
    assert sorted(outcome.succeeded) == sorted(f"{v} {a}" for v in VERSIONS for a in ARCHES)
    return pipeline_env


def test_publish_puts_every_image_in_the_catalog_with_independent_fingerprints(published, simulator):
    images = _catalog(published)
    expected = {f"talos:{v}:{a}:{var}" for v in VERSIONS for a in ARCHES for var in VARIANTS}
    assert set(images["products"]) == expected
    for key, product in images["products"].items():
        _, version, arch, variant = key.split(":")
        items = _items(product)
        tarball = published.read(items["incus.tar.xz"]["path"])
        disk = published.read(items["disk-kvm.img"]["path"])
        assert items["incus.tar.xz"]["combined_disk-kvm-img_sha256"] == hashlib.sha256(tarball + disk).hexdigest()
        assert items["disk-kvm.img"]["sha256"] == hashlib.sha256(disk).hexdigest()
        assert items["disk-kvm.img"]["size"] == len(disk)
        assert simulator.downloads(version, arch, VARIANTS[variant]) == 1, f"{key} fetched more than once"
    report = verify_store(published.open(), VerifyPolicy())
    assert report.ok, report.summary()


def test_disk_images_are_real_qcow2(published, tmp_path):
    if shutil.which("qemu-img") is None:
        missing_tool("qemu-img (Debian qemu-utils) is not installed")
    key = next(k for k in published.keys("images/v1.12.0/amd64/nocloud/") if k.endswith(".qcow2"))
    disk = published.local_tree(tmp_path / "tree") / key
    subprocess.run(["qemu-img", "check", str(disk)], check=True, capture_output=True)


@needs_incus_simplestreams
def test_incus_simplestreams_accepts_the_tree(published, tmp_path):
    tree = published.local_tree(tmp_path / "tree")
    verify = subprocess.run(["incus-simplestreams", "verify"], cwd=tree, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = subprocess.run(
        ["incus-simplestreams", "list", "--format", "json"], cwd=tree, capture_output=True, text=True, check=True
    )
    rows = json.loads(listed.stdout)
    assert len(rows) == len(VERSIONS) * len(ARCHES) * len(VARIANTS)
    assert {r["properties"]["os"] for r in rows} == {"Talos"}


def test_republishing_leaves_the_store_byte_identical(published, simulator):
    before = published.digest()
    outcome = publish(["v1.12.0"], ["amd64"])
    assert outcome.ok, outcome.failed
    assert published.digest() == before
    assert simulator.downloads("v1.12.0", "amd64", "nocloud") == 2, "one upstream read per publication"


@pytest.mark.parametrize("tag", ["v1.12", "latest", "v1.12.0|x"])
def test_malformed_tags_fail_before_anything_is_published(pipeline_env, tag, capsys):
    assert main(["publish", tag]) == 2
    err = capsys.readouterr().err
    assert repr(tag) in err and "Traceback" not in err
    assert not any(key.endswith(".json") for key in pipeline_env.keys())  # noqa: SIM118 - the store's objects


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["publish", "v1.99.0"], "does not offer Talos v1.99.0"),
        (["publish", "v1.12.0", "--arch", "riscv64"], "unknown architecture 'riscv64'"),
        (["publish", "v1.12.0", "--variant", "gcp"], "unknown variant 'gcp'"),
    ],
)
def test_bad_requests_name_the_value(pipeline_env, args, fragment, capsys):
    assert main(args) == 2
    assert fragment in capsys.readouterr().err
    assert not pipeline_env.keys("records/")


@pytest.mark.parametrize("fault", ["truncate", "500"])
def test_upstream_failures_publish_nothing_and_keep_the_previous_catalog(published, simulator, fault, capsys):
    catalog_before = published.read("streams/v1/images.json")
    index_before = published.read("streams/v1/index.json")
    simulator.set_fault("/image/", fault)
    assert main(["publish", "v1.12.1", "--arch", "amd64"]) == 1
    out = capsys.readouterr().out
    assert "FAILED v1.12.1 amd64" in out and "Talos v1.12.1 amd64" in out
    assert published.read("streams/v1/images.json") == catalog_before
    assert published.read("streams/v1/index.json") == index_before
    assert not published.keys("records/v1.12.1/")
    assert not [k for k in published.keys("images/v1.12.1/") if "/disk-" in k]
    assert published.leftovers() == []


def test_publish_new_takes_what_is_eligible_and_missing(pipeline_env, capsys):
    assert main(["publish", "v1.12.0", "--arch", "amd64"]) == 0
    capsys.readouterr()
    assert main(["publish", "--new", "--arch", "amd64"]) == 0
    out = capsys.readouterr().out
    assert "published Talos v1.11.5 amd64" in out and "published Talos v1.12.1 amd64" in out
    assert "v1.12.0" not in out, "already published for the requested arch"
    assert "beta" not in out, "prereleases are left out by default (TALOS_INCLUDE_PRERELEASES)"
    assert main(["publish", "--new", "--arch", "amd64"]) == 0
    assert "nothing new" in capsys.readouterr().out


def test_one_releases_listing_per_publication(pipeline_env, simulator, capsys):
    """GitHub's budget (60 requests/hour without a token): a publication lists the releases once and
    hands each partition its facts; no request per version or per partition."""
    assert main(["publish", "v1.11.5", "v1.12.0", "--arch", "amd64", "--variant", "nocloud"]) == 0
    assert simulator.github_requests() == 1
    assert main(["publish", "--new", "--arch", "amd64", "--variant", "nocloud"]) == 0
    assert "published Talos v1.11.6 amd64" in capsys.readouterr().out
    assert simulator.github_requests() == 2
