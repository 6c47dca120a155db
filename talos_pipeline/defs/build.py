"""Assemble the Definitions; resources are bound from the environment at call time."""

from __future__ import annotations

import dagster as dg

from .assets import per_image_assets, talos_catalog
from .checks import catalog_files_exist
from .console import concise_console
from .jobs import publish_catalog_job, publish_images_job
from .resources import resources_from_env

automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[*per_image_assets, talos_catalog],
        asset_checks=[catalog_files_exist],
        jobs=[publish_images_job, publish_catalog_job],
        sensors=[automation_sensor],
        resources=resources_from_env(),
        loggers={"console": concise_console},
    )
