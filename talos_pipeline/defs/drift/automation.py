"""The daily re-check and the re-publication of what drifted.

`talos_upstream_drift_daily` materializes `talos_upstream_drift`; after each materialization
`talos_drift_republish_sensor` requests a `publish_images` run for every drifted partition.
"""

import dagster as dg

from ..partitions import image_partition_key
from ..publish.jobs import publish_images_job
from .assets import talos_upstream_drift

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
    pairs: list[list[str]] = value.value if isinstance(value, dg.JsonMetadataValue) else []  # type: ignore[assignment]
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
