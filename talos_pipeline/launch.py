"""Run the Dagster jobs in-process for the CLI: `publish` and the demo.

Uses the same Definitions as `dagster dev`, on `$DAGSTER_HOME`'s instance when it is set (so
the runs show in the UI) or an ephemeral one, with resources built from the caller's
`Settings`. Inputs are validated before any partition is added, so a typo never leaves a dynamic
partition behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.discovery import DiscoveryPolicy, discover
from talos_pipeline.core.errors import InputError
from talos_pipeline.core.schematics import VariantResolver
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import parse_arches, select_variants
from talos_pipeline.core.versions import TalosVersion
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.defs.failures import asset_error
from talos_pipeline.defs.partitions import TALOS_VERSIONS, image_partition_key
from talos_pipeline.defs.publish.jobs import per_image_assets, publish_catalog_job, publish_images_job
from talos_pipeline.defs.resources import resources_from_settings

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
        raise InputError("name at least one Talos version, e.g. `talos-pipeline publish v1.12.0`")
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_list = select_variants(settings.variant_list(), variants)
    open_store(settings.store, settings).check_ready()
    factory = FactoryClient(settings.factory_url)
    offered = set(factory.versions())
    releases = ReleasesClient(settings.releases_url, settings.github_token)
    resolver = VariantResolver(factory)
    for tag in tags:
        if tag not in offered:
            raise InputError(
                f"the Image Factory at {settings.factory_url} does not offer Talos {tag}; "
                "check the version (`talos-pipeline releases` lists what is available)"
            )
        resolver.for_version(variant_list, tag)
        releases.release(tag)
    return list(dict.fromkeys(tags)), arch_list, [v.name for v in variant_list]


def unpublished_versions(
    settings: Settings, arches: list[str] | None = None, variants: list[str] | None = None, log: Log = _stderr
) -> list[str]:
    """Eligible upstream releases (the sensor's policy) missing any of these arches × variants here."""
    policy = DiscoveryPolicy.from_settings(settings)
    found = discover(
        ReleasesClient(settings.releases_url, settings.github_token), FactoryClient(settings.factory_url), policy
    )
    log(f"upstream: {found.summary()} ({policy.describe()})")
    records, _ = load_records(open_store(settings.store, settings))
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_list = select_variants(settings.variant_list(), variants)
    wanted = {(arch, variant.name) for arch in arch_list for variant in variant_list}
    published: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        published.setdefault(record.version, set()).add((record.arch, record.variant))
    return [tag for tag in found.eligible if not wanted <= published.get(tag, set())]


@dataclass
class Launcher:
    """The Definitions, the instance and the resources of one CLI publication."""

    settings: Settings
    definitions: dg.Definitions = field(default_factory=load_definitions)
    instance: dg.DagsterInstance = field(default_factory=instance_for_cli)

    def _execute(self, job: dg.UnresolvedAssetJobDefinition, **options) -> dg.ExecuteInProcessResult:
        return self.definitions.resolve_job_def(job.name).execute_in_process(
            instance=self.instance, resources=resources_from_settings(self.settings), raise_on_error=False, **options
        )

    def publish_partition(self, tag: str, arch: str, variant_names: list[str]) -> str | None:
        """Run `publish_images` for one version × arch; the asset's error message, or None."""
        if not self.instance.has_dynamic_partition(TALOS_VERSIONS, tag):
            self.instance.add_dynamic_partitions(TALOS_VERSIONS, [tag])
        selection = {"config": {"variants": variant_names}}
        run_config = {
            "ops": {asset.op.name: selection for asset in per_image_assets},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        }
        result = self._execute(publish_images_job, partition_key=image_partition_key(tag, arch), run_config=run_config)
        return None if result.success else asset_error(result.all_events) or "run failed"

    def rebuild_catalog(self) -> tuple[int | None, str | None]:
        """Run `publish_catalog`: (products in the catalog, None), or (None, the error message)."""
        result = self._execute(
            publish_catalog_job, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        )
        if not result.success:
            return None, asset_error(result.all_events) or "run failed"
        products = result.asset_materializations_for_node("talos_catalog")[0].metadata["products"]
        return (products.value if isinstance(products, dg.IntMetadataValue) else None), None


def publish(
    versions: list[str],
    arches: list[str] | None = None,
    variants: list[str] | None = None,
    *,
    settings: Settings | None = None,
    log: Log = _stderr,
) -> PublishOutcome:
    """Publish every version × arch (each configured or selected variant), then rebuild the
    catalog once if anything was published. `settings` default to the environment's."""
    settings = settings or Settings.from_env()
    tags, arch_list, variant_names = validate_request(settings, versions, arches or [], variants or [])
    launcher = Launcher(settings)
    outcome = PublishOutcome()
    for tag in tags:
        for arch in arch_list:
            label = f"{tag} {arch}"
            log(f"publishing Talos {label} ({', '.join(variant_names)}) into {settings.store}")
            error = launcher.publish_partition(tag, arch, variant_names)
            if error is None:
                outcome.succeeded.append(label)
            else:
                outcome.failed[label] = error
                log(f"FAILED Talos {label}: {error}")
    if outcome.succeeded:
        outcome.catalog_products, error = launcher.rebuild_catalog()
        if error is not None:
            outcome.failed["catalog"] = error
    return outcome
