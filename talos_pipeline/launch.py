"""Run the Dagster jobs for the CLI: `publish` and the demo.

Uses the same Definitions as `dagster dev`, on `$DAGSTER_HOME`'s instance when it is set (so the
runs show in the UI) or a private one, with resources built from the caller's `Settings`.
Everything a publication needs is checked before any partition is added or anything downloaded
(`plan_publication`): a typo never leaves a dynamic partition behind, a bad store or signer never
costs a download.

Concurrency: several version × arch partitions at once
-------------------------------------------------------
`publish` runs up to `TALOS_PUBLISH_JOBS` partitions at once, each a `publish_images` run of its
own on the instance, so the UI shows them like any other run and the `talos_factory` pool limits
of the instance apply (a step waits for a slot). The runs execute in **worker processes**
(`workers.py`), not in threads of this process:

* a process can be stopped at any point, and publication is safe to kill (objects are written
  atomically, records last); a thread cannot: a partition waiting on a 20-minute cold build could
  only be abandoned by leaving the whole command, without the final catalog rebuild an
  interrupted publication owes;
* Dagster executes one run per process: in the main thread it replaces the SIGINT handler for the
  length of a run (and turns an interrupt inside a step into a retry of the step), and on an
  instance that captures compute logs it redirects the process's stdout and stderr file
  descriptors for the length of a run (CLI runs do not capture: `instance_for_cli`);
* Dagster's own per-run work (about 0.5 s of CPU per partition here) runs on every core instead
  of taking turns under the GIL.

The price is start-up: the workers' forkserver imports Dagster and loads the definitions once
(measured on 2 cores: 4-5 s before the first worker runs, overlapped with the checks before any
download), which threads would not pay. Against a first publication's hour that is nothing.

The workers open `$DAGSTER_HOME`'s instance when it is set: the runs show in the UI, and pool
limits (`dagster instance concurrency set talos_factory N`, or `pools:` in its dagster.yaml) bind
them together with the daemon's runs, since pools live in the instance's storage. Without
`$DAGSTER_HOME` nothing outlives the command and no other run shares its instance, so there is
no pool to honour: each worker takes an ephemeral in-memory instance, and `TALOS_PUBLISH_JOBS`
alone bounds the downloads. A temporary SQLite instance shared by the workers was measured
instead: 0.8 s of Dagster overhead per partition on tmpfs and 2.2 s on disk (SQLite commits
every event), against 0.4 s in memory, for no pool to enforce. One partition runs in this
process, as before.

The catalog grows as the run goes: it is rebuilt (its own `publish_catalog` run) as soon as every
arch of a version is done, at least every `CATALOG_INTERVAL_SECONDS` while images keep arriving,
and at the end, so a run killed or timed out halfway leaves every completed version published.

Interruption (SIGINT, e.g. Ctrl-C or `timeout --signal=INT`, or SIGTERM): no new partition
starts; running ones get `INTERRUPT_GRACE_SECONDS` to finish, then (or at a second signal) their
worker processes are killed, which publishes nothing partial (objects are written atomically and
records last; an interrupted upload is an invisible leftover `talos-pipeline prune` collects),
and their runs are marked canceled on a persistent instance. The catalog is then rebuilt from
what completed, and the publication reports itself interrupted (the CLI exits 130). The workers
ignore SIGINT and SIGTERM, which `timeout` and a terminal send to the whole process group: the
parent decides. A SIGKILL of the group kills everything at once; what completed before is
already in the catalog.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

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
from talos_pipeline.workers import Abandoned, Result, WorkerPool, in_thread, start_forkserver

Log = Callable[[str], None]
WORKER_MODULE = "talos_pipeline.publish_worker"
"""Where a worker process's life is written; its forkserver imports it (and warms up) once."""
WORKER_SETUP = f"{WORKER_MODULE}:start"
CATALOG_INTERVAL_SECONDS = 180.0
PUBLICATION_TAG = "talos/publication"
NO_CAPTURED_LOGS: Any = {
    "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
}
UNFINISHED_RUNS = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
INTERRUPT_GRACE_SECONDS = 60.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def instance_for_cli() -> dg.DagsterInstance:
    """`$DAGSTER_HOME`'s instance, its runs shown in the UI, minus the capture of the runs'
    stdout and stderr (a CLI run's output is on the terminal; capturing redirects the whole
    process's file descriptors for the length of a run and costs two helper processes per run;
    the event log is complete either way). Without `$DAGSTER_HOME`, an ephemeral instance."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    if not (os.path.isabs(home) and os.path.isdir(home)):
        return dg.DagsterInstance.get()  # raises Dagster's own explanation of what is wrong with it
    return dg.DagsterInstance.local_temp(home, overrides=NO_CAPTURED_LOGS)


@dataclass
class PublishOutcome:
    versions: list[str] = field(default_factory=list)
    """What was asked for (with `new`: what was found missing), in order."""
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    catalog_products: int | None = None
    interrupted: bool = False
    not_started: list[str] = field(default_factory=list)
    """Partitions an interruption kept from starting."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


@dataclass(frozen=True)
class PartitionTask:
    """One version × arch to publish: the variants to build, and the release's facts."""

    tag: str
    arch: str
    variants: list[str]
    release: ReleaseFacts

    @property
    def label(self) -> str:
        return f"{self.tag} {self.arch}"


@dataclass(frozen=True)
class PublishPlan:
    """What one CLI publication does, every part checked before anything is downloaded."""

    tasks: list[PartitionTask]
    """Named versions: every arch and variant; found by `new`: what is missing of them here."""

    @property
    def tags(self) -> list[str]:
        return list(dict.fromkeys(task.tag for task in self.tasks))


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
    named = [TalosVersion.parse(v).tag for v in versions]
    arch_list = parse_arches(arches) if arches else settings.arch_list()
    variant_list = select_variants(settings.variant_list(), variants)
    if not named and not new:
        raise InputError("name at least one Talos version, e.g. `talos-pipeline publish v1.12.0`")
    factory = FactoryClient.from_settings(settings)
    listing = ReleaseListing.fetch(ReleasesClient.from_settings(settings))
    offered = factory.versions()
    every = [v.name for v in variant_list]
    work = {(tag, arch): every for tag in named for arch in arch_list}
    if new:
        for (tag, arch), missing in unpublished(settings, listing, offered, arch_list, variant_list, log).items():
            work.setdefault((tag, arch), missing)
    tags = list(dict.fromkeys(tag for tag, _ in work))
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
    return PublishPlan([PartitionTask(tag, arch, names, releases[tag]) for (tag, arch), names in work.items()])


def unpublished(
    settings: Settings,
    listing: ReleaseListing,
    offered: list[str],
    arches: list[str],
    variants: list[Variant],
    log: Log = _stderr,
) -> dict[tuple[str, str], list[str]]:
    """What is missing here of the eligible upstream releases (the sensor's policy): (version,
    arch) → the variants without a product record, in configured order. What is published is not
    published again (a partition killed between two variants' records redoes only the other)."""
    policy = DiscoveryPolicy.from_settings(settings)
    found = classify(listing.releases, offered, policy)
    log(f"upstream: {found.summary()} ({policy.describe()})")
    records, _ = load_records(open_store(settings.store, settings))
    published = {(r.version, r.arch, r.variant) for r in records}
    missing = {
        (tag, arch): [v.name for v in variants if (tag, arch, v.name) not in published]
        for tag in found.eligible
        for arch in arches
    }
    return {partition: names for partition, names in missing.items() if names}


@dataclass
class Launcher:
    """The Definitions, the instance and the resources of one CLI publication."""

    settings: Settings
    definitions: dg.Definitions = field(default_factory=load_definitions)
    instance: dg.DagsterInstance = field(default_factory=instance_for_cli)
    run_tags: dict[str, str] = field(default_factory=dict)
    """On every run (`talos/publication`: which CLI publication it belongs to)."""

    def _execute(self, job: dg.UnresolvedAssetJobDefinition, **options) -> dg.ExecuteInProcessResult:
        return self.definitions.resolve_job_def(job.name).execute_in_process(
            instance=self.instance,
            resources=resources_from_settings(self.settings),
            raise_on_error=False,
            tags=self.run_tags,
            **options,
        )

    def cancel_unfinished_runs(self, reason: str) -> int:
        """Mark this publication's runs that were left running (their process was killed) canceled."""
        if not self.instance.is_persistent or not self.run_tags:
            return 0
        runs = self.instance.get_runs(dg.RunsFilter(tags=self.run_tags, statuses=UNFINISHED_RUNS))
        for run in runs:
            self.instance.report_run_canceled(run, message=reason)
        return len(runs)

    def add_partitions(self, tags: list[str]) -> None:
        missing = [tag for tag in tags if not self.instance.has_dynamic_partition(TALOS_VERSIONS, tag)]
        if missing:
            self.instance.add_dynamic_partitions(TALOS_VERSIONS, missing)

    def publish_partition(
        self, tag: str, arch: str, variant_names: list[str], release: ReleaseFacts | None = None
    ) -> str | None:
        """Run `publish_images` for one version × arch; the asset's error message, or None.
        `release`: the facts from the caller's releases listing (else the run asks GitHub)."""
        self.add_partitions([tag])
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


@dataclass
class CatalogFollower:
    """When to rebuild the catalog during a publication: once every arch of a version is done,
    at least every `CATALOG_INTERVAL_SECONDS` while images keep arriving, and at the end."""

    remaining: dict[str, set[str]]
    """Version → arches not done yet."""
    fresh: bool = False
    """Something was published since the last rebuild."""
    last: float = field(default_factory=time.monotonic)

    def done(self, task: PartitionTask, succeeded: bool) -> bool:
        """Record a finished partition; whether the catalog should be rebuilt now."""
        self.remaining[task.tag].discard(task.arch)
        self.fresh = self.fresh or succeeded
        return (self.fresh and not self.remaining[task.tag]) or self.due()

    def due(self) -> bool:
        return self.fresh and time.monotonic() - self.last >= CATALOG_INTERVAL_SECONDS

    def rebuilt(self) -> None:
        self.fresh, self.last = False, time.monotonic()


class Interruption:
    """SIGINT and SIGTERM while partitions run: the first signal stops the publication, a second
    one, or `INTERRUPT_GRACE_SECONDS` after the first, aborts the running partitions. Handlers are
    installed only in the main thread (elsewhere Python does not deliver signals)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    NOTICE = (
        f"interrupted: no new partition starts; running ones get {INTERRUPT_GRACE_SECONDS:.0f}s to finish "
        "(interrupt again to abort them now)"
    )

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.first_at: float | None = None
        self._previous: dict[int, Any] = {}
        self._told = False

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)
        self.first_at = self.first_at or time.monotonic()

    def noticed(self, log: Log) -> bool:
        """Whether a signal came; says once what happens now."""
        if self.signals and not self._told:
            self._told = True
            log(self.NOTICE)
        return bool(self.signals)

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    @property
    def aborting(self) -> bool:
        grace_over = self.first_at is not None and time.monotonic() - self.first_at >= INTERRUPT_GRACE_SECONDS
        return len(self.signals) > 1 or grace_over

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class Publication:
    """One CLI publication under way: its plan, its launcher, what happened so far."""

    plan: PublishPlan
    settings: Settings
    launcher: Launcher
    log: Log
    outcome: PublishOutcome
    follower: CatalogFollower = field(init=False)

    def __post_init__(self) -> None:
        remaining: dict[str, set[str]] = {}
        for task in self.plan.tasks:
            remaining.setdefault(task.tag, set()).add(task.arch)
        self.follower = CatalogFollower(remaining)

    def finished(self, task: PartitionTask, error: str | None) -> None:
        if error is None:
            self.outcome.succeeded.append(task.label)
            self.log(f"published Talos {task.label}")
        else:
            self.outcome.failed[task.label] = error
            self.log(f"FAILED Talos {task.label}: {error}")
        if self.follower.done(task, error is None):
            self.rebuild_catalog()

    def rebuild_catalog(self) -> None:
        """A `publish_catalog` run, in a thread: the main thread keeps handling signals meanwhile."""
        self.follower.rebuilt()
        products, error = in_thread(self.launcher.rebuild_catalog)
        if error is not None:
            self.outcome.failed["catalog"] = error
            self.log(f"FAILED catalog: {error}")
            return
        self.outcome.failed.pop("catalog", None)
        self.outcome.catalog_products = products
        self.log(f"catalog: {products} products")

    def run_here(self) -> None:
        """A single partition, in a thread of this process; signals as in the workers' case (a
        run abandoned at the end of the grace period or at a second signal ends with the process)."""
        (task,) = self.plan.tasks
        self.log(f"publishing Talos {task.label} ({', '.join(task.variants)}) into {self.settings.store}")
        with Interruption() as interruption:
            try:
                error = in_thread(
                    lambda: self.launcher.publish_partition(task.tag, task.arch, task.variants, task.release),
                    give_up=lambda: interruption.noticed(self.log) and interruption.aborting,
                )
            except Abandoned:
                error = "aborted: the publication was interrupted"
                self.launcher.cancel_unfinished_runs(error)
            self.outcome.interrupted = interruption.requested
            self.finished(task, error)

    def run_in_workers(self, jobs: int) -> None:
        """The partitions in `jobs` worker processes, the catalog following (see the module docstring)."""
        tasks = self.plan.tasks
        self.launcher.add_partitions(self.plan.tags)
        setup_args = (
            self.settings,
            self.launcher.instance.get_ref() if self.launcher.instance.is_persistent else None,
            dict(os.environ),
            os.getcwd(),
            self.launcher.run_tags,
        )
        self.log(
            f"publishing {len(tasks)} partitions of {len(self.plan.tags)} versions into {self.settings.store}, "
            f"{jobs} at a time"
        )
        with (
            Interruption() as interruption,
            WorkerPool(jobs, tasks, WORKER_SETUP, setup_args, [WORKER_MODULE]) as pool,
        ):
            aborted = False
            while pool.busy:
                if interruption.noticed(self.log) and not pool.stopping:
                    pool.stop()
                if interruption.aborting and not aborted:
                    self.log("aborting the running partitions: nothing partial is published")
                    pool.abort()
                    aborted = True
                result: Result | None = pool.next(timeout=0.5)
                if result is not None:
                    self.finished(result.task, result.error)
                elif self.follower.due():
                    self.rebuild_catalog()
            self.outcome.interrupted = interruption.requested
            for task in pool.not_started():
                if interruption.requested:
                    self.outcome.not_started.append(task.label)
                else:
                    self.outcome.failed[task.label] = "not started: every worker process ended before it"
        if aborted:
            self.launcher.cancel_unfinished_runs("aborted: the publication was interrupted")
        if self.follower.fresh:
            self.rebuild_catalog()


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
    eligible release not yet published here, up to `TALOS_PUBLISH_JOBS` partitions at once; the
    catalog is rebuilt as versions complete (see the module docstring). `settings` default to the
    environment's."""
    settings = settings or Settings.from_env()
    if new or len(versions) * len(arches or settings.arch_list()) > 1:
        start_forkserver([WORKER_MODULE])  # its imports overlap with the checks below
    plan = plan_publication(settings, versions, arches, variants, new=new, log=log)
    outcome = PublishOutcome(versions=plan.tags)
    jobs = min(settings.publish_jobs, len(plan.tasks))
    if jobs == 0:
        return outcome
    launcher = Launcher(settings, run_tags={PUBLICATION_TAG: uuid.uuid4().hex[:12]})
    publication = Publication(plan, settings, launcher, log, outcome)
    if len(plan.tasks) == 1:
        publication.run_here()
    else:
        publication.run_in_workers(jobs)
    return outcome
