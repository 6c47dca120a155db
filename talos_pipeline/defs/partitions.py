"""The partitions every per-image asset, job and sensor shares: Talos version × arch."""

from __future__ import annotations

import dagster as dg

from talos_pipeline.core.variants import ARCHES
from talos_pipeline.core.versions import TalosVersion

TALOS_VERSIONS = "talos_version"
"""The dynamic partitions' name (instance-global: the sensor and the CLI add versions to it)."""
talos_versions = dg.DynamicPartitionsDefinition(name=TALOS_VERSIONS)
arches = dg.StaticPartitionsDefinition(list(ARCHES))
image_partitions = dg.MultiPartitionsDefinition({"talos_version": talos_versions, "arch": arches})


def image_partition_key(version: str, arch: str) -> dg.MultiPartitionKey:
    """Build keys this way only: the string form is `arch|version` (dimensions sort by name)."""
    return dg.MultiPartitionKey({"talos_version": TalosVersion.parse(version).tag, "arch": arch})


def version_and_arch(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["talos_version"], keys["arch"]
