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
from talos_pipeline.core.discovery import DiscoveryPolicy, ReleaseListing, classify
from talos_pipeline.core.errors import InputError
from talos_pipeline.core.preflight import check_configuration
from talos_pipeline.core.releases import ReleaseFacts
from talos_pipeline.core.schematics import VariantResolver
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.variants import Variant, parse_arches, select_variants
from talos_pipeline.core.versions import TalosVersion
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.defs.failures import asset_error
from talos_pipeline.defs.partitions import TALOS_VERSIONS, image_partition_key
from talos_pipeline.defs.publish.jobs import publish_catalog_job, publish_images_job, publish_run_config
from talos_pipeline.defs.resources import resources_from_settings

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def instance_for_cli() -> dg.DagsterInstance:
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


@dataclass
class PublishOutcome:
    versions: list[str] = field(default_factory=list)
    """What was asked for (with `new`: what was found missing), in order."""
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    catalog_products: int | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class PublishPlan:
    """What one CLI publication does, every part checked before anything is downloaded."""

    tags: list[str]
    arches: list[str]
    variants: list[str]
    releases: dict[str, ReleaseFacts]
    """Each tag's facts, from the run's one releases listing (handed to its partitions)."""

    @property
    def partitions(self) -> list[tuple[str, str]]:
        return [(tag, arch) for tag in self.tags for arch in self.arches]


def plan_publication(
    settings: Settings,
    versions: list[str],
    arches: list[str] | None = None,
    variants: list[str] | None = None,
    *,
    new: bool = False,
    log: Log = _stderr,
) -> PublishPlan:
    """Strict tags, known arches and variants (local checks first); then one GitHub releases listing
    (and, with `new`, the eligible releases not yet published here); the factory offers each
    version; the store takes a test write and the signer opens; each version has the extensions
    every variant asks for. Nothing is downloaded before all of it holds."""
    tags = [TalosVersion.parse(v).tag for v in versions]
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_list = select_variants(settings.variant_list(), variants)
    if not tags and not new:
        raise InputError("name at least one Talos version, e.g. `talos-pipeline publish v1.12.0`")
    factory = FactoryClient(settings.factory_url)
    listing = ReleaseListing.fetch(ReleasesClient(settings.releases_url, settings.github_token))
    offered = factory.versions()
    if new:
        tags += unpublished_versions(settings, listing, offered, arch_list, variant_list, log)
    tags = list(dict.fromkeys(tags))
    releases = {}
    for tag in tags:
        if tag not in offered:
            raise InputError(
                f"the Image Factory at {settings.factory_url} does not offer Talos {tag}; "
                "check the version (`talos-pipeline releases` lists what is available)"
            )
        releases[tag] = listing.facts(tag)
    if tags:
        check_configuration(settings, open_store(settings.store, settings))
        resolver = VariantResolver(factory)
        for tag in tags:
            resolver.for_version(variant_list, tag)
    return PublishPlan(tags, arch_list, [v.name for v in variant_list], releases)


def unpublished_versions(
    settings: Settings,
    listing: ReleaseListing,
    offered: list[str],
    arches: list[str],
    variants: list[Variant],
    log: Log = _stderr,
) -> list[str]:
    """Eligible upstream releases (the sensor's policy) missing any of these arches × variants here."""
    policy = DiscoveryPolicy.from_settings(settings)
    found = classify(listing.releases, offered, policy)
    log(f"upstream: {found.summary()} ({policy.describe()})")
    records, _ = load_records(open_store(settings.store, settings))
    wanted = {(arch, variant.name) for arch in arches for variant in variants}
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

    def publish_partition(
        self, tag: str, arch: str, variant_names: list[str], release: ReleaseFacts | None = None
    ) -> str | None:
        """Run `publish_images` for one version × arch; the asset's error message, or None.
        `release`: the facts from the caller's releases listing (else the run asks GitHub)."""
        if not self.instance.has_dynamic_partition(TALOS_VERSIONS, tag):
            self.instance.add_dynamic_partitions(TALOS_VERSIONS, [tag])
        run_config = {
            **publish_run_config(release, variant_names),
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
    new: bool = False,
    log: Log = _stderr,
) -> PublishOutcome:
    """Publish every version × arch (each configured or selected variant), with `new` also every
    eligible release not yet published here, then rebuild the catalog once if anything was
    published. `settings` default to the environment's."""
    settings = settings or Settings.from_env()
    plan = plan_publication(settings, versions, arches, variants, new=new, log=log)
    outcome = PublishOutcome(versions=plan.tags)
    if not plan.tags:
        return outcome
    launcher = Launcher(settings)
    for tag in plan.tags:
        for arch in plan.arches:
            label = f"{tag} {arch}"
            log(f"publishing Talos {label} ({', '.join(plan.variants)}) into {settings.store}")
            error = launcher.publish_partition(tag, arch, plan.variants, plan.releases[tag])
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
