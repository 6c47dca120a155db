"""The self-service sensor: requests users posted to `serve/` become `publish_images` runs.

Each tick reads the requests in the store (`requests/`, docs/self-service.md). A queued request is
accepted into the build (`core.selfservice.Pickup.accept`: its schematic registered with the
factory, its variant added to the self-service set, the request marked building with the versions
and arches it is built for) and gets one `publish_images` run per version × arch, whose run config
selects its variant; the runs are tagged `talos/request=<id>` and show in the UI like any other. A
building request whose runs have all ended is concluded from their outcomes and the catalog
(`core.selfservice.conclude`): published with its versions and aliases, or failed with the runs'
own error. A run that was never launched (a tick that died after marking the request) is
requested again under the same run key, which the daemon launches at most once.

`follow_new_releases` is what the release sensor calls so that self-service variants are
published for new releases too, in runs of their own (a user's variant never fails a run of the
configured ones).
"""

from collections.abc import Callable

import dagster as dg

from talos_pipeline.core.errors import UpstreamError
from talos_pipeline.core.selfservice import (
    Pickup,
    RequestBook,
    SelfServiceRequest,
    Status,
    catalog_images,
    conclude,
    follow,
    images_of,
)
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient

from ..failures import asset_error
from ..partitions import TALOS_VERSIONS, image_partition_key, talos_versions
from ..publish.jobs import publish_images_job, variant_selection
from ..resources import TalosImages, TalosStore, TalosUpstream

SELF_SERVICE_SENSOR = "talos_self_service_sensor"
REQUEST_TAG = "talos/request"
_VERSION_TAG = "dagster/partition/talos_version"
_ARCH_TAG = "dagster/partition/arch"
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def request_runs(request: SelfServiceRequest) -> list[dg.RunRequest]:
    """One `publish_images` run per version × arch of a building request, selecting its variant."""
    return [
        dg.RunRequest(
            partition_key=image_partition_key(version, arch),
            run_key=f"self-service/{request.id}/{version}/{arch}",
            run_config=variant_selection([request.name]),
            tags={"talos/trigger": SELF_SERVICE_SENSOR, REQUEST_TAG: request.id, "talos/variant": request.name},
        )
        for version, arch in images_of(request)
    ]


def run_outcomes(instance: dg.DagsterInstance, request: SelfServiceRequest) -> tuple[dict, set]:
    """((version, arch) → None | error) of the runs that ended, and the (version, arch) of every
    run launched for the request; the newest run of each counts (a re-execution from the UI too)."""
    ended: dict[tuple[str, str], str | None] = {}
    launched: set[tuple[str, str]] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: request.id})):  # newest first
        key = (run.tags.get(_VERSION_TAG, ""), run.tags.get(_ARCH_TAG, ""))
        if key in launched:
            continue
        launched.add(key)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            ended[key] = None
        elif run.status in _FAILED:
            records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            events = [record.dagster_event for record in records if record.dagster_event is not None]
            ended[key] = asset_error(events) or f"run {run.run_id} {run.status.value.lower()}"
    return ended, launched


def self_service_tick(
    context: dg.SensorEvaluationContext,
    talos_store: TalosStore,
    talos_upstream: TalosUpstream,
    talos_images: TalosImages,
) -> dg.SensorResult | dg.SkipReason:
    settings = talos_images.settings()
    if not settings.self_service:
        return dg.SkipReason("TALOS_SELF_SERVICE is off")
    store = talos_store.open()
    pending = [request for request in RequestBook(store).all() if request.pending]
    if not pending:
        return dg.SkipReason("no self-service request is queued or building")
    catalog = catalog_images(store)
    pickup = Pickup(
        store=store,
        factory=talos_upstream.factory(context.log.warning),
        configured=talos_images.variant_list(),
        arches=talos_images.arch_list(),
        versions=settings.self_service_versions,
    )
    runs: list[dg.RunRequest] = []
    run_versions: set[str] = set()
    waiting = []
    for request in pending:
        current: SelfServiceRequest | None = request
        if request.status is Status.QUEUED:
            try:
                current = pickup.accept(request, catalog)
            except UpstreamError as exc:
                waiting.append(f"request {request.id} ({request.name}) stays queued: {exc}")
                continue
            if current is None or current.status is not Status.BUILDING:
                reason = current.reason if current else "it disappeared from the store"
                context.log.warning(f"request {request.id} ({request.name}) failed: {reason}")
                continue
            context.log.info(
                f"request {current.id} ({current.name}): building {', '.join(current.versions)} × "
                f"{', '.join(current.arches)} with schematic {current.schematic_id}"
            )
        assert current is not None
        ended, launched = run_outcomes(context.instance, current)
        for run, key in zip(request_runs(current), images_of(current), strict=True):
            if key not in launched:
                runs.append(run)
                run_versions.add(key[0])
        if len(ended) == len(images_of(current)):
            done = conclude(store, current, ended, catalog)
            if done is None:
                waiting.append(f"request {current.id} ({current.name}): runs ended, waiting for the catalog")
            else:
                context.log.info(f"request {done.id} ({done.name}) {done.status}: {done.reason or ''}".rstrip(": "))
    for note in waiting:
        context.log.info(note)
    known = set(context.instance.get_dynamic_partitions(TALOS_VERSIONS))
    versions = sorted(run_versions - known)
    if not runs:
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(waiting) or "requests updated; no run to launch"))
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[talos_versions.build_add_request(versions)] if versions else [],
    )


talos_self_service_sensor = dg.sensor(
    name=SELF_SERVICE_SENSOR,
    job=publish_images_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "With TALOS_SELF_SERVICE=on: accepts the requests users posted to serve/ (registers the schematic, "
        "adds the variant to the self-service set in the store), requests a publish_images run per version × "
        "arch selecting it, and marks each request published or failed from its runs and the catalog."
    ),
)(self_service_tick)


def follow_new_releases(
    talos_images: TalosImages,
    factory: FactoryClient,
    versions: list[str],
    arches: list[str],
    log: Callable[[str], None],
) -> list[dg.RunRequest]:
    """Runs that publish the self-service variants for new releases (one per version × arch,
    selecting every self-service variant the version offers the extensions of)."""
    settings = talos_images.settings()
    if not settings.self_service or not versions:
        return []
    plan = follow(open_store(settings.store, settings), factory, versions, log)
    return [
        dg.RunRequest(
            partition_key=image_partition_key(version, arch),
            run_key=f"{version}/{arch}/self-service",
            run_config=variant_selection(names),
            tags={"talos/trigger": "talos_release_sensor", "talos/self-service": ",".join(names)},
        )
        for version, names in plan.items()
        for arch in arches
    ]
