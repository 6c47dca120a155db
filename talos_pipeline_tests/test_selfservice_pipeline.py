"""The pipeline's side of self-service: the sensor, its runs, and new releases.

`talos_self_service_sensor` is evaluated with the same code and resources the daemon uses and its
run requests are executed in-process once per run key (`SensorRunner`, what the demo runs), on an
ephemeral instance against the upstream simulator: a request becomes runs visible in the instance,
a published variant with the factory's schematic id and the variant's aliases, or a failed
request naming the run's error. The release sensor publishes the self-service variants for new
releases in runs of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os

import dagster as dg
import pytest

from talos_pipeline.core.selfservice import (
    RequestSpec,
    SelfServiceRequest,
    Status,
    create_request,
    read_request,
    read_variant_set,
)
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import DirectoryStore
from talos_pipeline.defs.publish.release_sensor import build_release_sensor
from talos_pipeline.defs.resources import TalosDiscovery, TalosImages, TalosUpstream
from talos_pipeline.defs.selfservice.sensor import REQUEST_TAG, SELF_SERVICE_SENSOR, follow_new_releases
from talos_pipeline.launch import Launcher, publish
from talos_pipeline.sensor_runner import SensorRunner
from talos_pipeline.simulator.schematics import canonical_schematic, schematic_id

STORAGE = ("siderolabs/iscsi-tools", "siderolabs/util-linux-tools")
ONLY_NEWER = "siderolabs/nvidia-container-toolkit-production"  # offered from v1.12.0 on (simulator)


@pytest.fixture
def settings(tmp_path, simulator, monkeypatch) -> Settings:
    for name in list(os.environ):
        if name.startswith(("TALOS_", "DAGSTER_HOME", "GITHUB_TOKEN")):
            monkeypatch.delenv(name)
    values = Settings.from_env({}).replace(
        store=str(tmp_path / "store"),
        releases_url=simulator.releases_url,
        factory_url=simulator.factory_url,
        arches="amd64",
        variants="nocloud",
        self_service="on",
        self_service_tokens="t" * 20,
    )
    outcome = publish(["v1.11.6", "v1.12.0"], settings=values)
    assert outcome.ok, outcome.failed
    return values


def request(settings: Settings, name: str, *extensions: str) -> SelfServiceRequest:
    created = SelfServiceRequest.new(RequestSpec(name, "nocloud", tuple(sorted(extensions))), "requester")
    create_request(DirectoryStore(settings.store), created)
    return created


def images(settings: Settings) -> dict:
    return json.loads(DirectoryStore(settings.store).read_bytes("streams/v1/images.json"))["products"]


def test_a_request_becomes_runs_then_a_published_variant(settings, simulator):
    store = DirectoryStore(settings.store)
    storage = request(settings, "storage", *STORAGE)
    runner = SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR)
    first = runner.tick()
    assert sorted(first.launched) == [f"self-service/{storage.id}/{v}/amd64" for v in ("v1.11.6", "v1.12.0")]
    assert not first.failed and first.catalog_products == 4
    building = read_request(store, storage.id)
    assert building.status is Status.BUILDING and building.versions == ("v1.12.0", "v1.11.6")
    expected_id = schematic_id(canonical_schematic(storage.spec.schematic_bytes()))
    assert building.schematic_id == expected_id
    assert read_variant_set(store)["storage"].schematic_id == expected_id

    runs = runner.launcher.instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: storage.id}))
    assert len(runs) == 2 and all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    assert all(run.run_config["ops"]["talos_release"]["config"]["variants"] == ["storage"] for run in runs)

    second = runner.tick()
    assert not second.launched, "a run key is launched once"
    published = read_request(store, storage.id)
    assert published.status is Status.PUBLISHED and published.reason is None
    assert set(published.aliases) == {
        "talos/v1.12.0/storage", "talos/v1.11.6/storage", "talos/v1.12/storage", "talos/v1.11/storage",
        "talos/latest/storage",
    }  # fmt: skip
    products = images(settings)
    product = products["talos:v1.12.0:amd64:storage"]
    assert product["talos_schematic"] == expected_id and product["variant"] == "storage"
    assert "talos/latest" in products["talos:v1.12.0:amd64:nocloud"]["aliases"].split(","), "configured first"
    vanilla_size = next(iter(products["talos:v1.12.0:amd64:nocloud"]["versions"].values()))["items"]["disk.qcow2"]
    with_extensions = next(iter(product["versions"].values()))["items"]["disk.qcow2"]
    assert with_extensions["sha256"] != vanilla_size["sha256"], "the factory built other bytes"
    facts = json.loads(store.read_bytes(f"state/schematics/{expected_id}.json"))
    assert facts["extensions"] == list(STORAGE), "what the page shows"


def test_versions_without_an_extension_are_left_out_and_failures_are_reported(settings, simulator):
    store = DirectoryStore(settings.store)
    newer = request(settings, "toolkit", ONLY_NEWER)
    runner = SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR)
    runner.tick()
    runner.tick()
    done = read_request(store, newer.id)
    assert done.status is Status.PUBLISHED and done.versions == ("v1.12.0",)
    assert f"not built for v1.11.6 ({ONLY_NEWER})" in done.reason
    assert "talos:v1.11.6:amd64:toolkit" not in images(settings)

    zfs = request(settings, "zfs", "siderolabs/zfs")
    refused = simulator.set_fault("/image/", "403")  # the factory refuses every image from now on
    try:
        first = runner.tick()
        assert len(first.failed) == 2 and first.catalog_products is None
        runner.tick()
    finally:
        simulator.clear_faults()
    assert refused.applied
    failed = read_request(store, zfs.id)
    assert failed.status is Status.FAILED
    assert "v1.12.0 amd64: Talos v1.12.0 amd64 (zfs)" in failed.reason and "HTTP 403" in failed.reason
    assert "talos:v1.12.0:amd64:zfs" not in images(settings)


def test_a_factory_that_is_down_leaves_the_request_queued(settings, simulator):
    store = DirectoryStore(settings.store)
    storage = request(settings, "storage", *STORAGE)
    runner = SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR)
    simulator.set_fault("/schematics", "503")
    try:
        outcome = runner.tick()
    finally:
        simulator.clear_faults()
    assert not outcome.launched and read_request(store, storage.id).status is Status.QUEUED
    assert "stays queued" in outcome.skipped
    assert runner.tick().launched, "accepted once the factory answers"


def test_off_the_sensor_does_nothing(settings):
    storage = request(settings, "storage", *STORAGE)
    runner = SensorRunner(Launcher(settings.replace(self_service=False)), SELF_SERVICE_SENSOR)
    assert runner.tick().skipped == "TALOS_SELF_SERVICE is off"
    assert read_request(DirectoryStore(settings.store), storage.id).status is Status.QUEUED


def test_runs_select_self_service_variants_only_by_name(settings):
    images_resource = TalosImages(store=settings.store, variants="nocloud", self_service="on")
    assert [v.name for v in images_resource.select([])] == ["nocloud"]
    with pytest.raises(Exception, match="unknown variant 'storage'"):
        images_resource.select(["storage"])
    storage = request(settings, "storage", *STORAGE)
    SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR).tick()
    assert read_request(DirectoryStore(settings.store), storage.id).status is Status.BUILDING
    assert [v.name for v in images_resource.select([])] == ["nocloud"], "the configured runs stay as they were"
    selected = images_resource.select(["storage"])
    assert [(v.name, v.platform) for v in selected] == [("storage", "nocloud")]


def test_new_releases_publish_the_self_service_variants_in_runs_of_their_own(settings, simulator):
    for name, extensions in (("storage", STORAGE), ("toolkit", (ONLY_NEWER,))):
        request(settings, name, *extensions)
    SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR).tick()
    images_resource = TalosImages(store=settings.store, arches="amd64,arm64", self_service="on")
    factory = TalosUpstream(factory_url=simulator.factory_url).factory()
    logged: list[str] = []
    runs = follow_new_releases(images_resource, factory, ["v1.11.5", "v1.12.1"], ["amd64", "arm64"], logged.append)
    plan = {(r.run_key, tuple(r.run_config["ops"]["talos_image"]["config"]["variants"])) for r in runs}
    assert plan == {
        ("v1.11.5/amd64/self-service", ("storage",)),
        ("v1.11.5/arm64/self-service", ("storage",)),
        ("v1.12.1/amd64/self-service", ("storage", "toolkit")),
        ("v1.12.1/arm64/self-service", ("storage", "toolkit")),
    }
    assert any("'toolkit' is not published for v1.11.5" in line for line in logged)
    off = TalosImages(store=settings.store, self_service="off")
    assert follow_new_releases(off, factory, ["v1.12.1"], ["amd64"], logged.append) == []

    sensor = build_release_sensor({"GITHUB_TOKEN": "", "TALOS_SENSOR_INTERVAL_SECONDS": ""})
    resources = {
        "talos_upstream": TalosUpstream(releases_url=simulator.releases_url, factory_url=simulator.factory_url),
        "talos_discovery": TalosDiscovery(),
        "talos_images": TalosImages(store=settings.store, arches="amd64", variants="nocloud", self_service="on"),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("talos_version", ["v1.11.5", "v1.11.6", "v1.12.0"])
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)
    keys = sorted(r.run_key for r in result.run_requests)
    assert keys == ["v1.12.1/amd64", "v1.12.1/amd64/self-service"]
    (following,) = [r for r in result.run_requests if r.run_key.endswith("self-service")]
    assert following.run_config["ops"]["talos_disk_image"]["config"]["variants"] == ["storage", "toolkit"]
    assert not read_variant_set(DirectoryStore(settings.store)).keys() - {"storage", "toolkit"}


def test_a_request_the_factory_cannot_take_for_an_hour_fails(settings, simulator):
    old = SelfServiceRequest.new(RequestSpec("storage", "nocloud", STORAGE), "requester")
    old = dataclasses.replace(old, created_at="2020-01-01T00:00:00Z")
    store = DirectoryStore(settings.store)
    create_request(store, old)
    simulator.set_fault("/schematics", "503")
    try:
        SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR).tick()
    finally:
        simulator.clear_faults()
    failed = read_request(store, old.id)
    assert failed.status is Status.FAILED and "has not answered for over an hour" in failed.reason
