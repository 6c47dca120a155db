"""One worker process of a concurrent publication (`launch.py`, `workers.py`).

The workers' forkserver imports this module once, before it forks any worker, and the import
warms up what every worker needs: the definitions are loaded here and kept (a forked worker
inherits them), and one throwaway ephemeral instance makes Dagster import what it imports lazily
on first use. Measured on 2 cores: a worker then starts its first run in a fraction of a second
instead of ~2 s of CPU each. Nothing else here runs at import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import dagster as dg

from talos_pipeline.core.settings import Settings
from talos_pipeline.definitions import defs as load_definitions
from talos_pipeline.launch import Launcher, PartitionTask

DEFINITIONS = load_definitions()
with dg.DagsterInstance.ephemeral():
    pass


def start(
    settings: Settings,
    instance_ref: Any,
    environ: dict[str, str],
    cwd: str,
    run_tags: dict[str, str],
) -> Callable[[PartitionTask], str | None]:
    """Set up this worker: the caller's environment and directory (a forked worker starts with the
    forkserver's), its instance (`$DAGSTER_HOME`'s, else an ephemeral one); then it publishes one
    partition per task."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    instance = dg.DagsterInstance.from_ref(instance_ref) if instance_ref else dg.DagsterInstance.ephemeral()
    launcher = Launcher(settings, definitions=DEFINITIONS, instance=instance, run_tags=run_tags)
    return lambda task: launcher.publish_partition(task.tag, task.arch, task.variants, task.release)
