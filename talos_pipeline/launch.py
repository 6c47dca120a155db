"""Run the Dagster jobs in-process for the CLI: `publish` and the demo.

Uses the same Definitions as `dagster dev`, on `$DAGSTER_HOME`'s instance when it is set (so
the runs show in the UI) or an ephemeral one. Inputs are validated before any partition is
added, so a typo never leaves a dynamic partition behind.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.discovery import DiscoveryPolicy, discover
from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import parse_arches, select_variants
from talos_pipeline.core.versions import TalosVersion
from talos_pipeline.defs.assets import per_image_assets
from talos_pipeline.defs.partitions import image_partition_key, talos_versions

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def instance_for_cli() -> dg.DagsterInstance:
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


@dataclass
class PublishOutcome:
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    catalog_products: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def validate_request(
    settings: Settings, versions: list[str], arches: list[str], variants: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Strict tags, known arches and variants, a usable store, and versions upstream offers."""
    tags = [TalosVersion.parse(v).tag for v in versions]
    if not tags:
        raise PipelineError("name at least one Talos version, e.g. `talos-pipeline publish v1.12.0`")
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_names = [v.name for v in select_variants(settings.variant_list(), variants)]
    open_store(settings.store).check_ready()
    factory = FactoryClient(settings.factory_url)
    offered = set(factory.versions())
    releases = ReleasesClient(settings.releases_url, settings.github_token)
    for tag in tags:
        if tag not in offered:
            raise PipelineError(
                f"the Image Factory at {settings.factory_url} does not offer Talos {tag}; "
                "check the version (`talos-pipeline releases` lists what is available)"
            )
        releases.release(tag)
    return list(dict.fromkeys(tags)), arch_list, variant_names


def unpublished_versions(
    settings: Settings, arches: list[str] | None = None, variants: list[str] | None = None, log: Log = _stderr
) -> list[str]:
    """Eligible upstream releases (the sensor's policy) missing any of these arches × variants here."""
    policy = DiscoveryPolicy.from_settings(settings)
    found = discover(
        ReleasesClient(settings.releases_url, settings.github_token), FactoryClient(settings.factory_url), policy
    )
    log(f"upstream: {found.summary()} ({policy.describe()})")
    records, _ = load_records(open_store(settings.store))
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_list = select_variants(settings.variant_list(), variants)
    wanted = {(arch, variant.name) for arch in arch_list for variant in variant_list}
    published: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        published.setdefault(record.version, set()).add((record.arch, record.variant))
    return [tag for tag in found.eligible if not wanted <= published.get(tag, set())]


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The asset's own error, not the retry wrapper's "Exceeded max_retries" nor its causes."""
    message = "run failed"
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None and error.message.startswith("Exceeded max_retries"):
            error = error.cause
        if error is not None:
            message = re.sub(r"^[\w.]+: ", "", error.message.strip())
    return message


def publish(
    versions: list[str], arches: list[str] | None = None, variants: list[str] | None = None, *, log: Log = _stderr
) -> PublishOutcome:
    from talos_pipeline.defs.build import build_definitions

    settings = Settings.from_env()
    tags, arch_list, variant_names = validate_request(settings, versions, arches or [], variants or [])
    defs = build_definitions()
    instance = instance_for_cli()
    instance.add_dynamic_partitions(
        talos_versions.name, [t for t in tags if not instance.has_dynamic_partition(talos_versions.name, t)]
    )
    run_config = {
        "ops": {
            asset.op.name: {"config": {"variants": variant_names}}
            for asset in per_image_assets
            if asset.op.name != "talos_release"
        },
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    outcome = PublishOutcome()
    job = defs.resolve_job_def("publish_images")
    for tag in tags:
        for arch in arch_list:
            key = image_partition_key(tag, arch)
            log(f"publishing Talos {tag} {arch} ({', '.join(variant_names)}) into {settings.store}")
            result = job.execute_in_process(
                partition_key=key, instance=instance, run_config=run_config, raise_on_error=False
            )
            label = f"{tag} {arch}"
            if result.success:
                outcome.succeeded.append(label)
            else:
                outcome.failed[label] = _failure_message(result)
                log(f"FAILED Talos {label}: {outcome.failed[label]}")
    if outcome.succeeded:
        catalog = defs.resolve_job_def("publish_catalog").execute_in_process(
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        if not catalog.success:
            outcome.failed["catalog"] = _failure_message(catalog)
        else:
            products = catalog.asset_materializations_for_node("talos_catalog")[0].metadata["products"].value
            outcome.catalog_products = int(products)
    return outcome
