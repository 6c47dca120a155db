"""Retention in Dagster: the `prune_store` job and its daily schedule (see `core/prune.py`).

The schedule is STOPPED by default because it deletes: turn it on in the UI (Automation) once
the retention settings are what you want. Each tick reads them from the environment of the code
location: `TALOS_PRUNE_KEEP` (newest N versions per product line), `TALOS_PRUNE_KEEP_PER_MINOR`
(newest N per minor line), `TALOS_PRUNE_GRACE_SECONDS` [3600]. With neither keep setting the job
drops no product and only collects files that have been out of the catalog past the grace period.
Launched by hand from the launchpad, the same fields are run config (`dry_run: true` to preview).
"""

import dagster as dg
from pydantic import Field

from talos_pipeline.core.errors import ConfigError, PipelineError
from talos_pipeline.core.prune import (
    DEFAULT_GRACE_SECONDS,
    RetentionPolicy,
    prune_store,
)
from talos_pipeline.core.settings import Settings

from ..metadata import bullets
from ..resources import TalosImages, TalosStore


class PruneConfig(dg.Config):
    keep: int | None = Field(
        default=None, description="Keep the newest N versions of each product line (arch × variant)."
    )
    keep_per_minor: int | None = Field(
        default=None, description="Keep the newest N versions of each minor line (v1.12)."
    )
    grace_seconds: float = Field(
        default=DEFAULT_GRACE_SECONDS, description="Delete files only after this long out of the catalog."
    )
    dry_run: bool = Field(default=False, description="Report what would go; change nothing.")


@dg.op(
    description=(
        "Drop products beyond the retention policy, rebuild the catalog, "
        "delete files out of the catalog past the grace period."
    )
)
def prune_talos_store(
    context: dg.OpExecutionContext, config: PruneConfig, talos_store: TalosStore, talos_images: TalosImages
):
    policy = RetentionPolicy(config.keep, config.keep_per_minor, config.grace_seconds)
    try:
        store = talos_store.open()
        report = prune_store(
            store, policy, [v.name for v in talos_images.variant_list()], dry_run=config.dry_run, log=context.log.info
        )
    except PipelineError as exc:
        context.log.error(str(exc))
        raise dg.Failure(description=str(exc)) from None
    for line in report.summary().splitlines():
        context.log.info(line)
    if report.catalog_products is not None:
        yield dg.AssetMaterialization(
            asset_key="talos_catalog",
            description="Rebuilt by prune_store after dropping products.",
            metadata={
                "products": dg.MetadataValue.int(report.catalog_products),
                "dropped": bullets(report.dropped),
                "store": store.describe(),
            },
        )
    yield dg.Output(
        None,
        metadata={
            "dry_run": dg.MetadataValue.bool(config.dry_run),
            "products_kept": dg.MetadataValue.int(len(report.kept)),
            "products_dropped": bullets(report.dropped),
            "files_deleted": dg.MetadataValue.int(len(report.deleted)),
            "files_waiting": dg.MetadataValue.int(len(report.waiting)),
            "uploads_removed": dg.MetadataValue.int(len(report.temporaries_removed)),
            "problems": bullets(report.problems),
        },
    )
    if report.problems:
        raise dg.Failure(description="; ".join(report.problems))


@dg.job(
    name="prune_store",
    description=(
        "Retention: drop old products from the catalog and delete files out of it for longer than the grace period."
    ),
)
def prune_job():
    prune_talos_store()


@dg.schedule(
    job=prune_job,
    cron_schedule="45 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily retention run with TALOS_PRUNE_* (stopped by default: it deletes).",
)
def daily_prune_schedule(context: dg.ScheduleEvaluationContext):
    try:
        policy = RetentionPolicy.from_settings(Settings.from_env())
    except ConfigError as exc:
        return dg.SkipReason(str(exc))
    config = {"keep": policy.keep, "keep_per_minor": policy.keep_per_minor, "grace_seconds": policy.grace_seconds}
    config = {name: value for name, value in config.items() if value is not None}
    return dg.RunRequest(run_config={"ops": {"prune_talos_store": {"config": config}}})
