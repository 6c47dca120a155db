"""Declarative automation for every asset: on by default, so the catalog follows new images."""

import dagster as dg

default_automation_condition_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the assets' automation conditions (talos_catalog: eager) every 30 s.",
)
