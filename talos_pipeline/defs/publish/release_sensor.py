"""The release sensor: new upstream Talos releases become partitions and publish runs.

`talos_release_sensor` polls GitHub's releases (conditionally, with the ETag in its cursor),
cross-checks the Image Factory, adds new versions as dynamic partitions and requests one
`publish_images` run per version × configured arch, each given its release's facts from the
tick's listing (so no run asks GitHub again). A listing whose ETag moved only because download
counts did (same release set) counts as unchanged. Running by default; its interval is read
from the environment when the code location loads (hence a `@dg.definitions` function).
Sensors decide; the heavy work (downloads) happens in runs.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import dagster as dg

from talos_pipeline.core.discovery import budget_note, discover, sensor_interval_seconds
from talos_pipeline.core.errors import UpstreamError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.upstream import RateLimited

from ..partitions import TALOS_VERSIONS, image_partition_key, talos_versions
from ..resources import TalosDiscovery, TalosImages, TalosUpstream
from ..selfservice.sensor import follow_new_releases
from .jobs import publish_images_job, publish_run_config

RELEASE_SENSOR = "talos_release_sensor"
# When GitHub says "rate limited" without a reset time, wait this long before asking again.
RATE_LIMIT_FALLBACK_SECONDS = 600


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class ReleaseCursor:
    """The sensor's memory between ticks, a few hundred bytes of JSON.

    `etag` of the last releases listing (sent as If-None-Match), the fingerprint of its release
    set (`releases`: a new ETag with the same set is no change), the `policy` it was read under
    (another policy re-reads the full list), tags `pending` in the factory (tag → published_at),
    how many versions were `eligible`, and `wait_until` (epoch seconds) after a rate limit.
    Which versions are already known is the instance's dynamic partitions, not the cursor.
    """

    etag: str | None = None
    releases: str | None = None
    policy: str | None = None
    pending: dict[str, str] = field(default_factory=dict)
    eligible: int = 0
    wait_until: float | None = None

    @classmethod
    def loads(cls, text: str | None) -> "ReleaseCursor":
        if not text:
            return cls()
        try:
            body = json.loads(text)
            return cls(
                etag=body.get("etag"),
                releases=body.get("releases"),
                policy=body.get("policy"),
                pending={str(k): str(v) for k, v in (body.get("pending") or {}).items()},
                eligible=int(body.get("eligible") or 0),
                wait_until=float(body["wait_until"]) if body.get("wait_until") else None,
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor costs one full listing, nothing else

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v}, sort_keys=True, separators=(",", ":"))


def release_sensor_tick(
    context: dg.SensorEvaluationContext,
    talos_upstream: TalosUpstream,
    talos_discovery: TalosDiscovery,
    talos_images: TalosImages,
) -> dg.SensorResult | dg.SkipReason:
    cursor = ReleaseCursor.loads(context.cursor)
    policy = talos_discovery.policy()  # a bad setting fails the tick with a message naming it
    arches = talos_images.arch_list()
    now = time.time()
    if cursor.wait_until and now < cursor.wait_until:
        return dg.SkipReason(f"GitHub rate limit: not asking again before {_utc(cursor.wait_until)}")
    same_policy = cursor.policy == policy.fingerprint
    try:
        found = discover(
            talos_upstream.releases(context.log.warning),
            talos_upstream.factory(context.log.warning),
            policy,
            etag=cursor.etag if same_policy else None,
            known_set=cursor.releases if same_policy else None,
            pending=cursor.pending,
        )
    except RateLimited as exc:
        wait_until = exc.reset_at.timestamp() if exc.reset_at else now + RATE_LIMIT_FALLBACK_SECONDS
        context.log.warning(str(exc))
        cursor.wait_until = wait_until
        return dg.SensorResult(skip_reason=dg.SkipReason(str(exc)), cursor=cursor.dumps())
    except UpstreamError as exc:
        if not exc.transient:
            raise
        return dg.SkipReason(f"upstream unavailable, trying again next tick: {exc}")

    for rejected in found.invalid:
        context.log.warning(f"GitHub release tag {rejected}; not added")
    next_cursor = ReleaseCursor(
        etag=found.etag,
        releases=found.release_set,
        policy=policy.fingerprint,
        pending=found.pending,
        eligible=cursor.eligible if found.not_modified else len(found.eligible),
    )
    known = set(context.instance.get_dynamic_partitions(TALOS_VERSIONS))
    new = [v for v in found.eligible if v not in known]
    if not new:
        if found.not_modified and not found.pending:
            how = "304 Not Modified" if found.etag == cursor.etag else "same releases, only download counts moved"
            reason = f"GitHub releases unchanged ({how}); {len(known)} Talos versions known"
        else:
            reason = f"no new Talos versions ({policy.describe()}): {found.summary()}; {len(known)} known"
            if found.invalid:
                reason += ". Malformed tags are never added: fix or ignore them upstream"
        return dg.SensorResult(skip_reason=dg.SkipReason(reason), cursor=next_cursor.dumps())

    context.log.info(
        f"new Talos versions {', '.join(new)} → runs for {', '.join(arches)} ({policy.describe()}; {found.summary()})"
    )
    return dg.SensorResult(
        dynamic_partitions_requests=[talos_versions.build_add_request(new)],
        run_requests=[
            dg.RunRequest(
                partition_key=image_partition_key(version, arch),
                run_key=f"{version}/{arch}",
                run_config=publish_run_config(found.facts.get(version)),
                tags={"talos/trigger": RELEASE_SENSOR},
            )
            for version in new
            for arch in arches
        ]
        + follow_new_releases(talos_images, talos_upstream.factory(context.log.warning), new, arches, context.log.info),
        cursor=next_cursor.dumps(),
    )


def build_release_sensor(environ: Mapping[str, str] | None = None) -> dg.SensorDefinition:
    """The release sensor; its interval comes from the environment when the definitions load
    (`TALOS_SENSOR_INTERVAL_SECONDS`, else 60 s with `GITHUB_TOKEN` and 300 s without)."""
    settings = Settings.from_env(environ)
    interval = sensor_interval_seconds(settings)
    note = budget_note(interval, bool(settings.github_token))
    return dg.sensor(
        name=RELEASE_SENSOR,
        job=publish_images_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {interval} s ({note}): lists GitHub's Talos releases with If-None-Match, keeps the "
            "versions TALOS_INCLUDE_PRERELEASES / TALOS_MIN_VERSION allow that the Image Factory offers, "
            "adds new ones as talos_version partitions and requests a publish_images run per arch."
        ),
    )(release_sensor_tick)


@dg.definitions
def release_sensor() -> dg.Definitions:
    return dg.Definitions(sensors=[build_release_sensor()])
