"""`talos_upstream_drift`: re-downloads and hashes the images the catalog serves in proxy mode.

Their bytes stream from the factory, whose builds are not reproducible; drift fails the
`proxied_disks_match_upstream` check and lists the partitions to republish.
"""

import json

import dagster as dg
from pydantic import Field

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.drift import recheck_records
from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.hashing import sha256_hex
from talos_pipeline.core.settings import DiskMode

from ..metadata import bullets, column, short, table
from ..publish.catalog import talos_catalog
from ..resources import TalosStore, TalosUpstream

DRIFT_CHECK = "proxied_disks_match_upstream"
DRIFT_GROUP = "upstream_checks"

IMAGE_COLUMNS = [
    column("product"),
    column("mode", description="proxy or mirror"),
    column("published", description="sha256 in the product record, first 12 digits"),
    column("upstream", description="sha256 of the factory's bytes now, first 12 digits"),
    column("verdict", description="ok, drifted, or error (could not re-download)"),
]


class DriftCheckConfig(dg.Config):
    modes: list[str] = Field(
        default_factory=lambda: ["proxy"],
        description="Disk modes to re-check: proxy (served from the factory; the default) and/or mirror.",
    )
    versions: list[str] = Field(default_factory=list, description="Only these versions (empty: every published one).")


@dg.asset(
    group_name=DRIFT_GROUP,
    deps=[talos_catalog],
    kinds={"python"},
    pool="talos_factory",
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset="talos_upstream_drift",
            description="The Image Factory still serves the bytes each proxied image was published with.",
        )
    ],
)
def talos_upstream_drift(
    context: dg.AssetExecutionContext, config: DriftCheckConfig, talos_store: TalosStore, talos_upstream: TalosUpstream
) -> dg.MaterializeResult:
    """Re-downloads and hashes the images the catalog serves in proxy mode (they stream from the
    factory, whose builds are not reproducible) and compares them with the published sha256.
    Drifted partitions are listed in `republish`; `talos_drift_republish_sensor` re-publishes them."""
    unknown = [m for m in config.modes if m not in set(DiskMode)]
    if unknown:
        raise dg.Failure(f"unknown disk mode {', '.join(map(repr, unknown))} in modes: use {' or '.join(DiskMode)}")
    try:
        records, problems = load_records(talos_store.open())
        selected = [r for r in records if not config.versions or r.version in config.versions]
        reports = recheck_records(
            talos_upstream.factory(context.log.warning), selected, modes=config.modes, log=context.log.info
        )
    except PipelineError as exc:
        raise dg.Failure(description=str(exc)) from None
    drifted = [r for r in reports if r.drifted]
    unreadable = [r for r in reports if r.problem]
    republish = sorted({(r.record.version, r.record.arch) for r in drifted})
    for report in drifted + unreadable:
        context.log.warning(report.describe())
    rows = [
        {
            "product": r.record.product_key,
            "mode": r.record.disk_mode,
            "published": short(r.record.disk.sha256),
            "upstream": short(r.upstream_sha256),
            "verdict": "drifted" if r.drifted else ("error" if r.problem else "ok"),
        }
        for r in reports
    ]
    digests = {
        r.record.product_key: {"published": r.record.disk.sha256, "upstream": r.upstream_sha256} for r in reports
    }
    return dg.MaterializeResult(
        metadata={
            "checked": dg.MetadataValue.int(len(reports)),
            "drifted": dg.MetadataValue.int(len(drifted)),
            "not_rechecked": dg.MetadataValue.int(len(selected) - len(reports)),
            "republish": dg.MetadataValue.json([list(pair) for pair in republish]),
            "images": table(IMAGE_COLUMNS, rows) if rows else "no image to re-check",
            "sha256": dg.MetadataValue.json(digests),
            "left_out_of_catalog": bullets(problems),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not drifted and not unreadable,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "drifted": dg.MetadataValue.int(len(drifted)),
                    "unreadable": dg.MetadataValue.int(len(unreadable)),
                    "findings": bullets(r.describe() for r in drifted + unreadable),
                },
            )
        ],
        data_version=dg.DataVersion(sha256_hex(json.dumps(digests, sort_keys=True).encode())),
    )
