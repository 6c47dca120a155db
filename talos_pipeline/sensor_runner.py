"""What the Dagster daemon does for one sensor, done in this process (the demo has no daemon).

`SensorRunner.tick` evaluates the sensor of the code location with the same code and resources
the daemon would use, applies its dynamic-partition requests, and executes each run request
in-process once per run key (the daemon launches a run key once per sensor), tagged as the daemon
tags sensor runs. When runs published images it rebuilds the catalog, which the eager automation
condition of `talos_catalog` does under the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from talos_pipeline.defs.failures import asset_error
from talos_pipeline.defs.publish.jobs import publish_images_job
from talos_pipeline.defs.resources import resources_from_settings
from talos_pipeline.launch import Launcher

RUN_KEY_TAG = "dagster/run_key"
SENSOR_TAG = "dagster/sensor_name"


@dataclass
class TickOutcome:
    skipped: str | None = None
    launched: list[str] = field(default_factory=list)
    """Run keys executed in this tick."""
    failed: dict[str, str] = field(default_factory=dict)
    """Run key → the failing asset's message."""
    catalog_products: int | None = None


@dataclass
class SensorRunner:
    launcher: Launcher
    sensor_name: str
    cursor: str | None = None

    def tick(self) -> TickOutcome:
        instance = self.launcher.instance
        sensor = self.launcher.definitions.resolve_sensor_def(self.sensor_name)
        resources = resources_from_settings(self.launcher.settings)
        with dg.build_sensor_context(
            instance=instance,
            cursor=self.cursor,
            sensor_name=self.sensor_name,
            resources=resources,
            definitions=self.launcher.definitions,
        ) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return TickOutcome(skipped=result.skip_message)
        if not isinstance(result, dg.SensorResult):
            raise TypeError(f"{self.sensor_name} returned {type(result).__name__}, not a SensorResult")
        self.cursor = result.cursor if result.cursor is not None else self.cursor
        for request in result.dynamic_partitions_requests or []:  # first, as the daemon does
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        skipped = result.skip_reason.skip_message if result.skip_reason else None
        outcome = TickOutcome(skipped=skipped)
        job = self.launcher.definitions.resolve_job_def(sensor.job_name or publish_images_job.name)
        for run in result.run_requests or []:
            if run.run_key and instance.get_runs(
                filters=dg.RunsFilter(tags={RUN_KEY_TAG: run.run_key, SENSOR_TAG: self.sensor_name}), limit=1
            ):
                continue
            result = job.execute_in_process(
                instance=instance,
                resources=resources,
                partition_key=run.partition_key,
                run_config=run.run_config,
                tags={**run.tags, RUN_KEY_TAG: run.run_key or "", SENSOR_TAG: self.sensor_name},
                raise_on_error=False,
            )
            key = run.run_key or result.run_id
            outcome.launched.append(key)
            if not result.success:
                outcome.failed[key] = asset_error(result.all_events) or "run failed"
        if len(outcome.launched) > len(outcome.failed):
            outcome.catalog_products, error = self.launcher.rebuild_catalog()
            if error is not None:
                outcome.failed["catalog"] = error
        return outcome
