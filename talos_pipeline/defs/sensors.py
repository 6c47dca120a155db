"""Automation: the release sensor, the daily upstream re-check and its re-publication sensor.

* `talos_release_sensor` polls GitHub's releases (conditionally, with the ETag in its cursor),
  cross-checks the Image Factory, adds new versions as dynamic partitions and requests one
  `publish_images` run per version × configured arch. Running by default.
* The catalog follows by itself: `talos_catalog` is `AutomationCondition.eager()` and the
  automation sensor in `build.py` is running by default; `talos_catalog_sensor` rebuilds it
  when eager automation misses an update (see its docstring).
* `talos_upstream_drift` (materialized daily by `talos_upstream_drift_daily`) re-hashes the
  images published in proxy mode from the factory; drift fails its asset check, and
  `talos_drift_republish_sensor` requests a `publish_images` run for each drifted partition.

Sensors decide; the heavy work (downloads) happens in runs.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.discovery import budget_note, discover, sensor_interval_seconds
from talos_pipeline.core.drift import recheck_records
from talos_pipeline.core.errors import PipelineError, UpstreamError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.settings import DiskMode, Settings
from talos_pipeline.core.upstream import RateLimited

from .assets import per_image_assets, talos_catalog
from .jobs import publish_catalog_job, publish_images_job
from .partitions import image_partition_key, talos_versions
from .resources import TalosDiscovery, TalosImages, TalosStore, TalosUpstream

RELEASE_SENSOR = "talos_release_sensor"
# When GitHub says "rate limited" without a reset time, wait this long before asking again.
RATE_LIMIT_FALLBACK_SECONDS = 600


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class ReleaseCursor:
    """The sensor's memory between ticks, a few hundred bytes of JSON.

    `etag` of the last releases listing (sent as If-None-Match), the `policy` it was read under
    (another policy re-reads the full list), tags `pending` in the factory (tag → published_at),
    how many versions were `eligible`, and `wait_until` (epoch seconds) after a rate limit.
    Which versions are already known is the instance's dynamic partitions, not the cursor.
    """

    etag: str | None = None
    policy: str | None = None
    pending: dict[str, str] = field(default_factory=dict)
    eligible: int = 0
    wait_until: float | None = None

    @classmethod
    def loads(cls, text: str | None) -> "ReleaseCursor":
        if not text:
            return cls()
        try:
            body = json.loads(text)
            return cls(
                etag=body.get("etag"),
                policy=body.get("policy"),
                pending={str(k): str(v) for k, v in (body.get("pending") or {}).items()},
                eligible=int(body.get("eligible") or 0),
                wait_until=float(body["wait_until"]) if body.get("wait_until") else None,
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor costs one full listing, nothing else

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v}, sort_keys=True, separators=(",", ":"))


def release_sensor_tick(
    context: dg.SensorEvaluationContext,
    talos_upstream: TalosUpstream,
    talos_discovery: TalosDiscovery,
    talos_images: TalosImages,
) -> dg.SensorResult | dg.SkipReason:
    cursor = ReleaseCursor.loads(context.cursor)
    policy = talos_discovery.policy()  # a bad setting fails the tick with a message naming it
    arches = talos_images.arch_list()
    now = time.time()
    if cursor.wait_until and now < cursor.wait_until:
        return dg.SkipReason(f"GitHub rate limit: not asking again before {_utc(cursor.wait_until)}")
    etag = cursor.etag if cursor.policy == policy.fingerprint else None
    try:
        found = discover(
            talos_upstream.releases(context.log.warning),
            talos_upstream.factory(context.log.warning),
            policy,
            etag=etag,
            pending=cursor.pending,
        )
    except RateLimited as exc:
        wait_until = exc.reset_at.timestamp() if exc.reset_at else now + RATE_LIMIT_FALLBACK_SECONDS
        context.log.warning(str(exc))
        cursor.wait_until = wait_until
        return dg.SensorResult(skip_reason=dg.SkipReason(str(exc)), cursor=cursor.dumps())
    except UpstreamError as exc:
        if not exc.transient:
            raise
        return dg.SkipReason(f"upstream unavailable, trying again next tick: {exc}")

    for rejected in found.invalid:
        context.log.warning(f"GitHub release tag {rejected}; not added")
    next_cursor = ReleaseCursor(
        etag=found.etag,
        policy=policy.fingerprint,
        pending=found.pending,
        eligible=cursor.eligible if found.not_modified else len(found.eligible),
    )
    known = set(context.instance.get_dynamic_partitions(talos_versions.name))
    new = [v for v in found.eligible if v not in known]
    if not new:
        if found.not_modified and not found.pending:
            reason = f"GitHub releases unchanged (304 Not Modified); {len(known)} Talos versions known"
        else:
            reason = f"no new Talos versions ({policy.describe()}): {found.summary()}; {len(known)} known"
            if found.invalid:
                reason += ". Malformed tags are never added: fix or ignore them upstream"
        return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=next_cursor.dumps())

    context.log.info(
        f"new Talos versions {', '.join(new)} → runs for {', '.join(arches)} ({policy.describe()}; {found.summary()})"
    )
    return dg.SensorResult(
        dynamic_partitions_requests=[talos_versions.build_add_request(new)],
        run_requests=[
            dg.RunRequest(
                partition_key=image_partition_key(version, arch),
                run_key=f"{version}/{arch}",
                tags={"talos/trigger": RELEASE_SENSOR},
            )
            for version in new
            for arch in arches
        ],
        cursor=next_cursor.dumps(),
    )


def build_release_sensor(environ: Mapping[str, str] | None = None) -> dg.SensorDefinition:
    """The release sensor; its interval comes from the environment when the definitions load
    (`TALOS_SENSOR_INTERVAL_SECONDS`, else 60 s with `GITHUB_TOKEN` and 300 s without)."""
    settings = Settings.from_env(environ)
    interval = sensor_interval_seconds(settings)
    note = budget_note(interval, bool(settings.github_token))
    return dg.sensor(
        name=RELEASE_SENSOR,
        job=publish_images_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {interval} s ({note}): lists GitHub's Talos releases with If-None-Match, keeps the "
            "versions TALOS_INCLUDE_PRERELEASES / TALOS_MIN_VERSION allow that the Image Factory offers, "
            "adds new ones as talos_version partitions and requests a publish_images run per arch."
        ),
    )(release_sensor_tick)


# --------------------------------------------------------------------------- catalog backstop
CATALOG_SENSOR = "talos_catalog_sensor"
# Give the automation sensor (every 30 s) the first chance; this one acts only on what it missed.
CATALOG_GRACE_SECONDS = 45
_IMAGE_ASSET = dg.AssetKey("talos_image")
_PER_IMAGE_KEYS = {a.key for a in per_image_assets}
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
]  # fmt: skip
_GAVE_UP = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.CANCELING}


def _touches(run: dg.DagsterRun, keys: set[dg.AssetKey], job_name: str) -> bool:
    return run.job_name == job_name or bool(set(run.asset_selection or ()) & keys)


@dg.sensor(
    name=CATALOG_SENSOR,
    job=publish_catalog_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Backstop for the catalog's eager automation: when a talos_image partition was published after "
        "the last catalog run was created and no per-image run is still queued or running, rebuild the catalog."
    ),
)
def talos_catalog_sensor(context: dg.SensorEvaluationContext):
    """`AutomationCondition.eager()` evaluates per tick: when the catalog's own materialization and
    a new `talos_image` materialization land in the same automation tick (a catalog rebuild that
    started just before new images were published), it counts the update as handled and never
    rebuilds. This sensor compares event order instead: every `talos_image` materialization must be
    followed by a catalog run *created* after it (the run reads the records once it starts)."""
    latest = context.instance.fetch_materializations(_IMAGE_ASSET, limit=1).records
    handled = int(context.cursor or 0)
    if not latest or latest[0].storage_id <= handled:
        return dg.SkipReason("the catalog has been requested after the latest image publication")
    image = latest[0]
    if time.time() - image.timestamp < CATALOG_GRACE_SECONDS:
        return dg.SkipReason(
            f"an image was published {time.time() - image.timestamp:.0f}s ago; leaving it to the automation sensor"
        )
    active = context.instance.get_run_records(dg.RunsFilter(statuses=_ACTIVE), limit=200)
    publishing = [r for r in active if _touches(r.dagster_run, _PER_IMAGE_KEYS, publish_images_job.name)]
    if publishing:
        return dg.SkipReason(f"waiting for {len(publishing)} image run(s) before rebuilding the catalog")
    since = datetime.fromtimestamp(image.timestamp, UTC)
    for record in context.instance.get_run_records(dg.RunsFilter(created_after=since), limit=200):
        run = record.dagster_run
        if run.status not in _GAVE_UP and _touches(run, {talos_catalog.key}, publish_catalog_job.name):
            return dg.SensorResult(
                skip_reason=dg.SkipReason(
                    f"catalog run {run.run_id[:8]} was created after the latest image publication"
                ),
                cursor=str(image.storage_id),
            )
    context.log.info(
        f"rebuilding the catalog: talos_image {image.partition_key} was published after the last catalog run"
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"catalog-after-{image.storage_id}", tags={"talos/trigger": CATALOG_SENSOR})
        ],
        cursor=str(image.storage_id),
    )


# --------------------------------------------------------------------------- upstream drift
DRIFT_CHECK = "proxied_disks_match_upstream"
DRIFT_GROUP = "upstream_checks"


class DriftCheckConfig(dg.Config):
    modes: list[str] = Field(
        default_factory=lambda: ["proxy"],
        description="Disk modes to re-check: proxy (served from the factory; the default) and/or mirror.",
    )
    versions: list[str] = Field(default_factory=list, description="Only these versions (empty: every published one).")


@dg.asset(
    group_name=DRIFT_GROUP,
    deps=[talos_catalog],
    kinds={"python"},
    pool="talos_factory",
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset="talos_upstream_drift",
            description="The Image Factory still serves the bytes each proxied image was published with.",
        )
    ],
)
def talos_upstream_drift(
    context: dg.AssetExecutionContext, config: DriftCheckConfig, talos_store: TalosStore, talos_upstream: TalosUpstream
) -> dg.MaterializeResult:
    """Re-downloads and hashes the images the catalog serves in proxy mode (they stream from the
    factory, whose builds are not reproducible) and compares them with the published sha256.
    Drifted partitions are listed in `republish`; `talos_drift_republish_sensor` re-publishes them."""
    unknown = [m for m in config.modes if m not in set(DiskMode)]
    if unknown:
        raise dg.Failure(f"unknown disk mode {', '.join(map(repr, unknown))} in modes: use {' or '.join(DiskMode)}")
    try:
        records, problems = load_records(talos_store.open())
        selected = [r for r in records if not config.versions or r.version in config.versions]
        reports = recheck_records(
            talos_upstream.factory(context.log.warning), selected, modes=config.modes, log=context.log.info
        )
    except PipelineError as exc:
        raise dg.Failure(description=str(exc)) from None
    drifted = [r for r in reports if r.drifted]
    unreadable = [r for r in reports if r.problem]
    republish = sorted({(r.record.version, r.record.arch) for r in drifted})
    for report in drifted + unreadable:
        context.log.warning(report.describe())
    rows = [
        {"product": r.record.product_key, "published sha256": r.record.disk.sha256[:16],
         "upstream sha256": (r.upstream_sha256 or "-")[:16], "verdict": "drifted" if r.drifted else ("error" if r.problem else "ok")}
        for r in reports
    ]  # fmt: skip
    findings = "\n".join(f"- {r.describe()}" for r in drifted + unreadable) or "none"
    return dg.MaterializeResult(
        metadata={
            "checked": dg.MetadataValue.int(len(reports)),
            "drifted": dg.MetadataValue.int(len(drifted)),
            "not_rechecked": dg.MetadataValue.int(len(selected) - len(reports)),
            "republish": dg.MetadataValue.json([list(pair) for pair in republish]),
            "images": dg.MetadataValue.md(_markdown_table(rows)) if rows else "no image to re-check",
            "left_out_of_catalog": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not drifted and not unreadable,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "drifted": dg.MetadataValue.int(len(drifted)),
                    "unreadable": dg.MetadataValue.int(len(unreadable)),
                    "findings": dg.MetadataValue.md(findings),
                },
            )
        ],
        data_version=dg.DataVersion(sha256_hex(json.dumps(rows, sort_keys=True).encode())),
    )


def _markdown_table(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines)


upstream_drift_job = dg.define_asset_job(
    "check_upstream_drift",
    selection=dg.AssetSelection.assets(talos_upstream_drift),
    description="Re-hash the proxied images from the Image Factory and flag drift.",
)

upstream_drift_schedule = dg.ScheduleDefinition(
    name="talos_upstream_drift_daily",
    job=upstream_drift_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: re-check proxied images against the Image Factory.",
)


@dg.asset_sensor(
    asset_key=talos_upstream_drift.key,
    job=publish_images_job,
    name="talos_drift_republish_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After each talos_upstream_drift materialization: a publish_images run per drifted partition.",
)
def drift_republish_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    materialization = asset_event.asset_materialization
    value = materialization.metadata.get("republish") if materialization else None
    pairs = value.value if value is not None else []
    if not pairs:
        yield dg.SkipReason("the last upstream re-check found no drift")
        return
    for version, arch in pairs:
        context.log.info(f"Talos {version} {arch}: upstream bytes drifted; re-publishing")
        yield dg.RunRequest(
            partition_key=image_partition_key(version, arch),
            run_key=f"drift/{asset_event.run_id}/{version}/{arch}",
            tags={"talos/trigger": "upstream-drift"},
        )


def release_automation_sensors(environ: Mapping[str, str] | None = None) -> list[dg.SensorDefinition]:
    return [build_release_sensor(environ), talos_catalog_sensor, drift_republish_sensor]
