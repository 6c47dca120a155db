"""Alerts: failed publications reported to the log and, when `TALOS_ALERT_WEBHOOK` is set, to a webhook.

The report is a small JSON object an operator can route anywhere (a chat webhook, an incident
tool): run id, job, partition, the failing asset's own message, and a link to the run when
`TALOS_DAGSTER_URL` is set. It covers every run of this code location that publishes (the jobs
below, and UI or automation runs of the same assets); `talos-pipeline publish` prints its failures
itself.
"""

from typing import Any

import dagster as dg

from talos_pipeline.core.errors import PipelineError

from ..failures import asset_error
from ..resources import TalosAlerts
from .catalog import talos_catalog
from .jobs import per_image_assets, publish_catalog_job, publish_images_job, sign_images_job

ALERT_SENSOR = "talos_publication_failure_sensor"
PUBLICATION_JOBS = {publish_images_job.name, sign_images_job.name, publish_catalog_job.name}
PUBLICATION_ASSETS = {a.key for a in per_image_assets} | {talos_catalog.key}


def is_publication(run: dg.DagsterRun) -> bool:
    return run.job_name in PUBLICATION_JOBS or bool(set(run.asset_selection or ()) & PUBLICATION_ASSETS)


def failure_report(context: dg.RunFailureSensorContext, alerts: TalosAlerts) -> dict[str, Any]:
    """What the webhook receives for one failed run."""
    run = context.dagster_run
    steps = context.get_step_failure_events()
    return {
        "event": "talos_publication_failed",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": run.tags.get("dagster/partition"),
        "talos_version": run.tags.get("dagster/partition/talos_version"),
        "arch": run.tags.get("dagster/partition/arch"),
        "failed_steps": [event.step_key for event in steps],
        "error": asset_error(steps) or context.failure_event.message or "the run failed",
        "run_url": alerts.run_url(run.run_id),
    }


@dg.run_failure_sensor(
    name=ALERT_SENSOR,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Reports every failed publication run (publish_images, sign_images, publish_catalog, and UI or "
        "automation runs of those assets) to the log and, when TALOS_ALERT_WEBHOOK is set, as JSON to it."
    ),
)
def talos_publication_failure_sensor(context: dg.RunFailureSensorContext, talos_alerts: TalosAlerts) -> None:
    run = context.dagster_run
    if not is_publication(run):
        return
    try:
        report = failure_report(context, talos_alerts)
        where = f"Talos {report['talos_version']} {report['arch']}" if report["talos_version"] else run.job_name
        context.log.error(f"publication failed: {where} (run {run.run_id}, job {run.job_name}): {report['error']}")
        talos_alerts.post(report, context.log.warning)
    except PipelineError as exc:  # e.g. an unusable TALOS_ALERT_WEBHOOK: say so, keep reporting the next runs
        context.log.warning(f"could not report run {run.run_id}: {exc}")
