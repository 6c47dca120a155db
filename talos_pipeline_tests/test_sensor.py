"""Release discovery and the release sensor against the upstream simulator; the drift re-check.

The sensor is evaluated the way the daemon does it (`build_sensor_context` on an instance),
and the daemon's part, applying the dynamic partition requests, is done by `apply`.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.discovery import (
    DiscoveryPolicy,
    classify,
    discover,
    sensor_interval_seconds,
)
from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.settings import Settings, parse_bool
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient, ReleasesPage
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.defs.drift.assets import DRIFT_CHECK
from talos_pipeline.defs.drift.automation import drift_republish_sensor
from talos_pipeline.defs.partitions import image_partition_key, talos_versions
from talos_pipeline.defs.publish import catalog_sensor
from talos_pipeline.defs.publish.alerts import talos_publication_failure_sensor
from talos_pipeline.defs.publish.release_sensor import ReleaseCursor, build_release_sensor
from talos_pipeline.defs.resources import TalosAlerts, TalosDiscovery, TalosImages, TalosUpstream
from talos_pipeline.launch import publish
from talos_pipeline.simulator import UpstreamSimulator

# The simulator's default history (see simulator/releases.py) under the default policy:
# stable, >= v1.10.0, offered by the factory; v1.12.2 is a draft, the rest are prereleases.
ELIGIBLE = ["v1.11.5", "v1.11.6", "v1.12.0", "v1.12.1"]
ARCHES = ["amd64", "arm64"]


@pytest.fixture
def sensor():
    return build_release_sensor({"GITHUB_TOKEN": "", "TALOS_SENSOR_INTERVAL_SECONDS": ""})


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def resources(simulator, **discovery) -> dict:
    return {
        "talos_upstream": TalosUpstream(releases_url=simulator.releases_url, factory_url=simulator.factory_url),
        "talos_discovery": TalosDiscovery(**discovery),
        "talos_images": TalosImages(),
    }


def tick(sensor, instance, simulator, cursor: str | None = None, **discovery):
    with dg.build_sensor_context(instance=instance, resources=resources(simulator, **discovery), cursor=cursor) as ctx:
        return sensor(ctx)


def apply(instance, result: dg.SensorResult) -> None:
    """What the daemon does with the tick's partition requests before it submits the runs."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def added(result) -> list[str]:
    return [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]


def github_requests(simulator) -> list[tuple[str, str, int]]:
    return [r for r in simulator.requests if r[1].startswith(("/repos/", "/repositories/"))]


def skip_message(result) -> str:
    if isinstance(result, dg.SkipReason):
        return result.skip_message
    assert isinstance(result, dg.SensorResult) and result.skip_reason is not None, result
    assert not result.run_requests and not result.dynamic_partitions_requests
    return result.skip_reason.skip_message


def test_first_tick_adds_every_eligible_version_and_requests_a_run_per_arch(sensor, instance, simulator):
    result = tick(sensor, instance, simulator)
    assert isinstance(result, dg.SensorResult)
    assert added(result) == ELIGIBLE
    assert result.dynamic_partitions_requests[0].partitions_def_name == talos_versions.name
    requested = {(r.partition_key, r.run_key) for r in result.run_requests}
    assert requested == {(image_partition_key(v, a), f"{v}/{a}") for v in ELIGIBLE for a in ARCHES}
    assert all(isinstance(r.partition_key, dg.MultiPartitionKey) for r in result.run_requests)
    cursor = json.loads(result.cursor)
    assert cursor["etag"] and cursor["eligible"] == len(ELIGIBLE)
    assert len(result.cursor) < 300, "the cursor stays small whatever the history"


def test_a_tick_after_a_304_skips_and_requests_nothing(sensor, instance, simulator):
    first = tick(sensor, instance, simulator)
    apply(instance, first)
    before = len(github_requests(simulator))
    second = tick(sensor, instance, simulator, first.cursor)
    assert "304" in skip_message(second)
    assert [status for _, _, status in github_requests(simulator)[before:]] == [304], "one conditional request"
    assert json.loads(second.cursor)["etag"] == json.loads(first.cursor)["etag"]


def test_a_new_release_adds_only_that_version(sensor, instance, simulator):
    first = tick(sensor, instance, simulator)
    apply(instance, first)
    simulator.add_release("v1.12.2")  # the draft gets published
    result = tick(sensor, instance, simulator, first.cursor)
    assert added(result) == ["v1.12.2"]
    assert sorted(r.run_key for r in result.run_requests) == ["v1.12.2/amd64", "v1.12.2/arm64"]
    apply(instance, result)
    again = tick(sensor, instance, simulator, result.cursor)
    assert "304" in skip_message(again)


def test_download_counts_moving_the_etag_are_no_change(sensor, instance, qcow2_cache):
    """GitHub's ETag covers the whole listing, download counts included (the production profile
    moves them): a tick compares the release set, not the bytes, and asks the factory nothing."""
    with UpstreamSimulator(profile="production", scale=0.01, download_tick_seconds=0, cache_dir=qcow2_cache) as sim:
        first = tick(sensor, instance, sim)
        apply(instance, first)
        assert len(added(first)) > 25 and len(first.cursor) < 300
        sim.tick_downloads()
        before, factory_before = len(github_requests(sim)), sim.requests.count(("GET", "/versions", 200))
        second = tick(sensor, instance, sim, first.cursor)
        assert "only download counts moved" in skip_message(second)
        assert [status for _, _, status in github_requests(sim)[before:]] == [200], (
            "one listing, no 304: the ETag moved"
        )
        assert sim.requests.count(("GET", "/versions", 200)) == factory_before, "nothing changed: no factory lookup"
        assert json.loads(second.cursor)["etag"] != json.loads(first.cursor)["etag"]
        sim.add_release("v1.13.9", "2026-09-01T10:00:00Z")
        sim.tick_downloads()
        assert added(tick(sensor, instance, sim, second.cursor)) == ["v1.13.9"]


def test_runs_of_the_sensor_carry_their_release_facts(sensor, instance, simulator, pipeline_env):
    """The tick's one listing is shared by its runs: a run it requested asks GitHub nothing; a run
    launched by hand without the facts asks once."""
    result = tick(sensor, instance, simulator)
    apply(instance, result)
    request = next(r for r in result.run_requests if r.run_key == "v1.12.0/amd64")
    assert request.run_config["ops"]["talos_release"]["config"]["published_at"] == "2025-12-22T18:05:12Z"
    job = load_definitions().resolve_job_def("publish_images")
    before = len(github_requests(simulator))
    run = job.execute_in_process(instance=instance, partition_key=request.partition_key, run_config=request.run_config)
    assert run.success and len(github_requests(simulator)) == before
    by_hand = job.execute_in_process(instance=instance, partition_key=image_partition_key("v1.12.1", "amd64"))
    assert by_hand.success
    assert [path for _, path, _ in github_requests(simulator)[before:]] == [
        "/repos/siderolabs/talos/releases/tags/v1.12.1"
    ]


def test_versions_already_known_are_not_requested_again(sensor, instance, simulator):
    instance.add_dynamic_partitions(talos_versions.name, ["v1.11.5", "v1.12.0"])  # e.g. `talos-pipeline publish`
    result = tick(sensor, instance, simulator)
    assert added(result) == ["v1.11.6", "v1.12.1"]


def test_rate_limited_skips_with_the_reset_time_and_waits_for_it(sensor, instance, simulator):
    simulator.rate_limit(0, reset_in=120)
    reset = simulator.rate_limit_status()["reset"]
    result = tick(sensor, instance, simulator)
    when = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    message = skip_message(result)
    assert "rate limit" in message and when in message and "GITHUB_TOKEN" in message
    assert json.loads(result.cursor)["wait_until"] == reset
    before = len(github_requests(simulator))
    waiting = tick(sensor, instance, simulator, result.cursor)
    assert when in skip_message(waiting)
    assert len(github_requests(simulator)) == before, "no request is spent before the reset time"
    simulator.rate_limit(None)
    cursor = json.dumps({**json.loads(result.cursor), "wait_until": 1})  # the reset time has passed
    assert added(tick(sensor, instance, simulator, cursor)) == ELIGIBLE


def test_malformed_tags_are_reported_and_never_added(sensor, instance, simulator, capfd):
    for tag in ("v1.12", "release-x", "v1.12.0.1"):
        simulator.add_release(tag, prerelease=False)
    first = tick(sensor, instance, simulator)
    assert added(first) == ELIGIBLE
    warned = capfd.readouterr().err  # the tick's log, shown with the tick in the UI
    for tag in ("v1.12", "release-x", "v1.12.0.1"):
        assert f"'{tag}'" in warned
    apply(instance, first)
    simulator.add_release("v1.13", prerelease=False)  # the listing changes, nothing valid is new
    second = tick(sensor, instance, simulator, first.cursor)
    message = skip_message(second)
    assert "malformed" in message and "'v1.13'" in message and "'release-x'" in message
    assert sorted(instance.get_dynamic_partitions(talos_versions.name)) == sorted(ELIGIBLE)


def test_tags_that_cannot_be_partition_keys_are_invalid():
    """The simulator refuses `|` in tags (URLs); GitHub tags can hold them, Dagster drops such keys."""
    now = "2026-01-01T00:00:00Z"
    tags = ("v1.12.0|x", "v1.12.0,v1.12.1", "v1.12.0]", "V1.12.0", "v01.12.0", None, "v1.12.0")
    releases = [{"tag_name": t, "published_at": now, "draft": False, "prerelease": False} for t in tags]
    found = classify(releases, ["v1.12.0"], DiscoveryPolicy())
    assert found.eligible == ["v1.12.0"]
    assert [r.tag for r in found.invalid] == ["v1.12.0|x", "v1.12.0,v1.12.1", "v1.12.0]", "V1.12.0", "v01.12.0", "None"]


def test_prereleases_and_minimum_version_follow_the_policy(sensor, instance, simulator):
    with_pre = tick(sensor, instance, simulator, include_prereleases="true")
    # v1.11.0-rc.0 is listed by GitHub but the factory only keeps prereleases of the newest minor
    assert added(with_pre) == ["v1.11.5", "v1.11.6", "v1.12.0-beta.1", "v1.12.0", "v1.12.1"]
    newest_only = tick(sensor, instance, simulator, min_version="v1.12.0")
    assert added(newest_only) == ["v1.12.0", "v1.12.1"]


def test_a_changed_policy_lists_again_instead_of_trusting_the_etag(sensor, instance, simulator):
    first = tick(sensor, instance, simulator)
    apply(instance, first)
    result = tick(sensor, instance, simulator, first.cursor, include_prereleases="yes")
    assert added(result) == ["v1.12.0-beta.1"]


def test_an_unreadable_cursor_costs_one_full_listing(sensor, instance, simulator):
    assert added(tick(sensor, instance, simulator, "not json{")) == ELIGIBLE
    assert ReleaseCursor.loads('{"etag": "W/\\"a\\"", "pending": ["v1.12.0"]}') == ReleaseCursor()


def test_bad_policy_settings_name_the_variable(sensor, instance, simulator):
    with pytest.raises(Exception, match=re.escape("TALOS_MIN_VERSION='1.12'")):
        tick(sensor, instance, simulator, min_version="1.12")
    with pytest.raises(ConfigError, match=re.escape("TALOS_INCLUDE_PRERELEASES='maybe'")):
        parse_bool("TALOS_INCLUDE_PRERELEASES", "maybe")


def test_the_interval_respects_the_github_budget():
    def interval(environ: dict[str, str]) -> int:
        return sensor_interval_seconds(Settings.from_env(environ))

    assert interval({}) == 300
    assert interval({"GITHUB_TOKEN": "t"}) == 60
    assert interval({"TALOS_SENSOR_INTERVAL_SECONDS": "5"}) == 5
    with pytest.raises(ConfigError, match="TALOS_SENSOR_INTERVAL_SECONDS='0'"):
        interval({"TALOS_SENSOR_INTERVAL_SECONDS": "0"})
    assert build_release_sensor({}).minimum_interval_seconds == 300
    assert "12 of GitHub's 60" in build_release_sensor({}).description


def test_a_release_the_factory_does_not_list_yet_stays_pending():
    now = datetime(2026, 1, 2, tzinfo=UTC)
    fresh = (now - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    releases = [
        {"tag_name": "v1.12.3", "published_at": fresh, "prerelease": False},
        {"tag_name": "v1.12.2", "published_at": "2025-12-31T09:30:00Z", "prerelease": False},
        {"tag_name": "v1.11.0", "published_at": "2025-08-01T09:30:00Z", "prerelease": False},
    ]
    found = classify(releases, ["v1.11.0"], DiscoveryPolicy(), now=now)
    assert found.eligible == ["v1.11.0"] and found.pending == {"v1.12.3": fresh}
    assert [r.tag for r in found.excluded] == ["v1.12.2"]

    class Unchanged(ReleasesClient):
        def list_releases(self, etag=None):
            return ReleasesPage(etag=etag, not_modified=True)

    class Factory(FactoryClient):
        def versions(self):
            return ["v1.11.0", "v1.12.3"]

    later = discover(Unchanged("http://unused"), Factory("http://unused"), DiscoveryPolicy(), etag='W/"x"',
                     pending=found.pending, now=now)  # fmt: skip
    assert later.not_modified and later.eligible == ["v1.12.3"] and later.pending == {}


def test_the_definitions_run_the_automation_by_default(monkeypatch):
    monkeypatch.setenv("TALOS_SENSOR_INTERVAL_SECONDS", "7")
    defs = load_definitions()
    release = defs.resolve_sensor_def("talos_release_sensor")
    assert release.minimum_interval_seconds == 7
    assert release.default_status == dg.DefaultSensorStatus.RUNNING
    assert release.job_name == "publish_images"
    for name in ("default_automation_condition_sensor", "talos_drift_republish_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    schedule = defs.resolve_schedule_def("talos_upstream_drift_daily")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    catalog_job = defs.resolve_job_def("publish_catalog")
    assert "talos_upstream_drift" not in str(catalog_job.graph.node_dict), "catalog rebuilds never re-download"


# --------------------------------------------------------------------------- upstream drift
@pytest.fixture
def proxied(pipeline_env, monkeypatch):
    monkeypatch.setenv("TALOS_DISK_MODE", "proxy")
    monkeypatch.setenv("TALOS_VARIANTS", "nocloud,metal")
    outcome = publish(["v1.12.0"], ["amd64"])
    assert outcome.ok, outcome.failed
    return pipeline_env


def _check_drift(instance):
    result = load_definitions().resolve_job_def("check_upstream_drift").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    (materialization,) = result.asset_materializations_for_node("talos_upstream_drift")
    assert evaluation.check_name == DRIFT_CHECK
    return evaluation, materialization.metadata


def test_drift_fails_the_check_and_requests_republication(proxied, simulator, instance):
    evaluation, metadata = _check_drift(instance)
    assert evaluation.passed and metadata["checked"].value == 2 and metadata["republish"].value == []
    with dg.build_sensor_context(instance=instance) as ctx:
        quiet = list(drift_republish_sensor(ctx) or [])
    assert all(isinstance(r, dg.SkipReason) for r in quiet)

    simulator.drift("v1.12.0", "amd64", "nocloud")  # the factory rebuilt the image: same URL, other bytes
    evaluation, metadata = _check_drift(instance)
    assert not evaluation.passed
    assert metadata["drifted"].value == 1 and metadata["republish"].value == [["v1.12.0", "amd64"]]
    assert "nocloud" in evaluation.metadata["findings"].value and "metal" not in evaluation.metadata["findings"].value

    with dg.build_sensor_context(instance=instance, cursor=ctx.cursor) as ctx2:
        requests = [r for r in drift_republish_sensor(ctx2) if isinstance(r, dg.RunRequest)]
    assert [r.partition_key for r in requests] == [image_partition_key("v1.12.0", "amd64")]
    assert requests[0].tags["talos/trigger"] == "upstream-drift"

    # what the daemon then runs: the partition is republished with the factory's new bytes
    defs = load_definitions()
    instance.add_dynamic_partitions(talos_versions.name, ["v1.12.0"])
    run = defs.resolve_job_def("publish_images").execute_in_process(
        instance=instance, partition_key=requests[0].partition_key
    )
    assert run.success
    records = {r.variant: r for r in load_records(proxied.open())[0]}
    assert records["nocloud"].disk.sha256 == simulator.image_sha256("v1.12.0", "amd64", "nocloud")
    evaluation, _ = _check_drift(instance)
    assert evaluation.passed


def test_mirrored_images_are_not_refetched_by_default(pipeline_env, simulator, instance):
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok
    downloads = simulator.total_downloads()
    evaluation, metadata = _check_drift(instance)
    assert evaluation.passed and metadata["checked"].value == 0 and metadata["not_rechecked"].value == 1
    assert simulator.total_downloads() == downloads


# --------------------------------------------------------------------------- catalog backstop
def evaluate_automation(defs, instance, cursor=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Dagster's evaluator uses a beta parameter internally
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)


def test_the_catalog_sensor_rebuilds_what_eager_automation_missed(pipeline_env, tmp_path, monkeypatch):
    """Eager automation loses a `talos_image` update that lands in the same automation tick as a
    catalog materialization (shown here with Dagster's own evaluator); the backstop sensor orders
    events by storage id and run creation time instead."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setattr(catalog_sensor, "CATALOG_GRACE_SECONDS", 0)
    assert publish(["v1.12.0"], ["amd64"], ["nocloud"]).ok  # the CLI rebuilds the catalog itself
    defs = load_definitions()
    with dg.DagsterInstance.get() as instance:

        def catalog_tick(cursor=None):
            with dg.build_sensor_context(instance=instance, cursor=cursor) as ctx:
                return catalog_sensor.talos_catalog_sensor(ctx)

        covered = catalog_tick()
        assert "was created after the latest image publication" in skip_message(covered)

        # a catalog rebuild and a newly published image in the same automation tick
        evaluation = evaluate_automation(defs, instance)
        instance.add_dynamic_partitions(talos_versions.name, ["v1.12.1"])
        key = image_partition_key("v1.12.1", "amd64")
        for asset in ("talos_release", "talos_metadata_tarball", "talos_disk_image", "talos_signatures", "talos_image"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))
        instance.report_runless_asset_event(dg.AssetMaterialization("talos_catalog"))
        cursor = evaluation.cursor
        for _ in range(3):
            evaluation = evaluate_automation(defs, instance, cursor)
            cursor = evaluation.cursor
            assert evaluation.get_num_requested(dg.AssetKey("talos_catalog")) == 0, "eager never catches up"

        missed = catalog_tick(covered.cursor)
        (request,) = missed.run_requests
        assert request.run_key == f"catalog-after-{missed.cursor}"
        assert isinstance(catalog_tick(missed.cursor), dg.SkipReason)


# --------------------------------------------------------------------------- alerts
class WebhookReceiver:
    """A webhook on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/talos"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def _failure_tick(instance, alerts: TalosAlerts, cursor: str | None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"talos_alerts": alerts}) as ctx:
        result = talos_publication_failure_sensor.evaluate_tick(ctx)
        return result, ctx.cursor


def test_a_failed_publication_is_posted_to_the_webhook(pipeline_env, simulator, webhook, tmp_path, monkeypatch, capfd):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    alerts = TalosAlerts(alert_webhook=webhook.url, dagster_url="http://dagster.example:3000/")
    with dg.DagsterInstance.get() as instance:
        _, before = _failure_tick(instance, alerts, None)  # the first tick starts after what happened before
        simulator.set_fault("/image/", "500")  # transient: retried, then the step fails for good
        outcome = publish(["v1.12.0"], ["amd64"], ["nocloud"])
        assert not outcome.ok
        result, after = _failure_tick(instance, alerts, before)
        (body,) = webhook.bodies
        (run,) = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert body["run_id"] == run.run_id and body["job"] == "publish_images"
        assert body["talos_version"] == "v1.12.0" and body["arch"] == "amd64"
        assert body["partition"] == str(image_partition_key("v1.12.0", "amd64"))
        assert body["failed_steps"] == ["talos_disk_image"]
        assert body["error"] == outcome.failed["v1.12.0 amd64"], "the asset's own message, as the CLI prints it"
        assert "Talos v1.12.0 amd64 (nocloud)" in body["error"] and "max_retries" not in body["error"]
        assert body["run_url"] == f"http://dagster.example:3000/runs/{run.run_id}"
        assert [r.error for r in result.dagster_run_reactions] == [None]
        _failure_tick(instance, alerts, after)
        assert len(webhook.bodies) == 1, "each failed run is reported once"

        webhook.close()  # the receiver is down: logged, and the sensor carries on
        capfd.readouterr()
        result, _ = _failure_tick(instance, alerts, before)
        assert [r.error for r in result.dagster_run_reactions] == [None]
        assert f"TALOS_ALERT_WEBHOOK: could not report run {run.run_id}" in capfd.readouterr().err

        unusable = TalosAlerts(alert_webhook="hooks.example/talos")  # not a URL: said, never raised
        result, _ = _failure_tick(instance, unusable, before)
        assert [r.error for r in result.dagster_run_reactions] == [None]
        assert "TALOS_ALERT_WEBHOOK='hooks.example/talos' is not an http(s) URL" in capfd.readouterr().err
        assert len(webhook.bodies) == 1


def test_runs_that_publish_nothing_are_not_reported(webhook, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TALOS_STORE", str(tmp_path / "empty-store"))
    alerts = TalosAlerts(alert_webhook=webhook.url)
    with dg.DagsterInstance.get() as instance:
        _, cursor = _failure_tick(instance, alerts, None)
        prune = load_definitions().resolve_job_def("prune_store")
        failed = prune.execute_in_process(
            instance=instance, run_config={"ops": {"prune_talos_store": {"config": {"keep": 0}}}}, raise_on_error=False
        )
        assert not failed.success
        _failure_tick(instance, alerts, cursor)
    assert webhook.bodies == []
