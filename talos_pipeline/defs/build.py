"""Assemble the Definitions; resources are bound from the environment at call time."""

from __future__ import annotations

import dagster as dg

from .assets import per_image_assets, talos_catalog
from .checks import catalog_files_exist
from .console import concise_console
from .jobs import publish_catalog_job, publish_images_job
from .prune import daily_prune_schedule, prune_job
from .resources import resources_from_env
from .sensors import release_automation_sensors, talos_upstream_drift, upstream_drift_job, upstream_drift_schedule

automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[*per_image_assets, talos_catalog, talos_upstream_drift],
        asset_checks=[catalog_files_exist],
        jobs=[publish_images_job, publish_catalog_job, upstream_drift_job, prune_job],
        sensors=[automation_sensor, *release_automation_sensors()],
        schedules=[upstream_drift_schedule, daily_prune_schedule],
        resources=resources_from_env(),
        loggers={"console": concise_console},
        executor=dg.in_process_executor,  # per-image steps form a chain: one process per run, not per step
    )
