"""The catalog's backstop: rebuild it when eager automation missed a newly published image.

The catalog follows by itself: `talos_catalog` is `AutomationCondition.eager()` and the
automation sensor (`defs/automation.py`) is running by default; `talos_catalog_sensor` rebuilds
it when eager automation misses an update (see its docstring).
"""

import time
from datetime import UTC, datetime

import dagster as dg

from .catalog import talos_catalog
from .jobs import per_image_assets, publish_catalog_job, publish_images_job

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
