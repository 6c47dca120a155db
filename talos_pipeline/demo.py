"""`talos-pipeline demo`: the whole product offline, on loopback, in one command.

Starts the upstream simulator, publishes every release it offers (both arches, the configured
variants) with the same Dagster jobs production uses, verifies the result, and serves it over
HTTPS with a generated certificate, printing the exact Incus commands to try it. Self-service is on
with a generated token: the demo prints a `curl` line that requests a variant, and picks requests
up by running the self-service sensor in this process (`sensor_runner.py`: the sensor's own code,
its runs executed in-process as the daemon would launch them). The demo's own choices (store,
upstream, signing key, token) are a `Settings` passed along; the environment is only read.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve import generate_self_signed, serve_forever
from serve.selfservice import SelfServiceOptions
from talos_pipeline.core.settings import SETTING_BY_NAME, Settings, SigningMode
from talos_pipeline.core.signing import generate_key_pair
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.core.versions import TalosVersion, sorted_tags
from talos_pipeline.defs.selfservice.sensor import SELF_SERVICE_SENSOR
from talos_pipeline.launch import Launcher, publish
from talos_pipeline.sensor_runner import SensorRunner
from talos_pipeline.simulator import UpstreamSimulator

PICKUP_SECONDS = 1.0
EXAMPLE_REQUEST = {
    "name": "storage",
    "platform": "nocloud",
    "schematic": {
        "customization": {
            "systemExtensions": {"officialExtensions": ["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"]}
        }
    },
}


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    disk_size: int
    port: int = 8443
    once: bool = False


def _say(message: str) -> None:
    print(message, flush=True)


def offered_versions(settings: Settings) -> list[str]:
    """Releases GitHub shows that the factory also offers (drafts and old prereleases drop out)."""
    listed = ReleasesClient.from_settings(settings).list_releases().releases
    offered = set(FactoryClient.from_settings(settings).versions())
    tags = [r["tag_name"] for r in listed if TalosVersion.is_valid(r.get("tag_name", "")) and r["tag_name"] in offered]
    return sorted_tags(tags)


def _is_set(name: str, environ: Mapping[str, str]) -> bool:
    return bool(environ.get(SETTING_BY_NAME[name].env))


def demo_settings(data_dir: Path, sim: UpstreamSimulator, environ: Mapping[str, str]) -> tuple[Settings, Path | None]:
    """The environment's settings pointed at the simulator, a store under `data_dir` unless
    TALOS_STORE is set, key-mode signing with a generated key unless TALOS_SIGNING is set, and
    self-service on with a generated token unless TALOS_SELF_SERVICE is set.
    Returns the settings and the public key to verify with (None when the operator chose)."""
    changes: dict[str, object] = {"releases_url": sim.releases_url, "factory_url": sim.factory_url}
    if not _is_set("self_service", environ):
        changes |= {"self_service": True, "self_service_tokens": secrets.token_hex(24)}
    if not _is_set("store", environ):
        changes["store"] = str(data_dir / "store")
    public = None
    if not _is_set("signing", environ):
        private, public = data_dir / "keys" / "talos-signing.key", data_dir / "keys" / "talos-signing.pub"
        if not private.exists():
            generate_key_pair(private, public)
        changes |= {"signing": SigningMode.KEY, "signing_key": str(private)}
    return Settings.from_env(environ).replace(**changes), public


def run_demo(options: DemoOptions, environ: Mapping[str, str] = os.environ) -> int:
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with UpstreamSimulator(disk_size=options.disk_size, cache_dir=str(data_dir / "upstream-cache")) as sim:
        settings, public_key = demo_settings(data_dir, sim, environ)
        versions = offered_versions(settings)
        _say(f"upstream simulator at {sim.url}: {len(versions)} releases offered ({', '.join(versions)})")
        outcome = publish(versions, settings=settings)
        _say(
            f"published {len(outcome.succeeded)} version×arch partitions into {settings.store}; "
            f"catalog has {outcome.catalog_products} products"
        )
        if not outcome.ok:
            for label, message in outcome.failed.items():
                _say(f"FAILED {label}: {message}")
            return 1
        key_pem = public_key.read_bytes() if public_key else None
        report = verify_store(
            open_store(settings.store, settings), VerifyPolicy(key_pem=key_pem, trust_config=settings.trust_config)
        )
        bad = [p for p in report.products if p.problems]
        _say(f"verify: {len(report.products)} products, {len(bad)} with problems")
        if not report.ok:
            _say(report.summary())
            return 1
        if options.once:
            _say("done (--once): run `talos-pipeline verify` or `talos-pipeline serve` on this store")
            return 0
        _serve_demo(options.port, data_dir, settings, sim, environ)
        return 0


def _incus_conf(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("INCUS_CONF") or Path.home() / ".config" / "incus")


def _serve_demo(
    port: int, data_dir: Path, settings: Settings, sim: UpstreamSimulator, environ: Mapping[str, str]
) -> None:
    """Serve the demo store over HTTPS and tell the user exactly how to point Incus at it."""
    cert, key = data_dir / "tls" / "server.crt", data_dir / "tls" / "server.key"
    if not cert.exists():
        cert.parent.mkdir(parents=True, exist_ok=True)
        generate_self_signed(cert, key)
    url = settings.public_url or f"https://127.0.0.1:{port}"
    pinned = _incus_conf(environ) / "servercerts" / "talos-demo.crt"
    latest = offered_versions(settings)[-1]
    self_service = SelfServiceOptions.from_settings(settings)
    stop = threading.Event()
    if self_service is not None:
        threading.Thread(target=_pick_up_requests, args=(settings, stop), name="self-service", daemon=True).start()
    _say(f"""
serving {settings.store} at {url} (TLS 1.3, certificate {cert}); Ctrl-C stops.

Try it with Incus (the remote name must match the pinned certificate's file name):
  mkdir -p {pinned.parent} && cp {cert} {pinned}
  incus remote add talos-demo {url} --protocol simplestreams --public
  incus image list talos-demo:
  incus image alias list talos-demo:
  incus launch talos-demo:talos/latest node1 --vm -c security.secureboot=false -c limits.cpu=2 -c limits.memory=4GiB
Direct URL import (incusd checks the certificate against the system CAs, so start it with
SSL_CERT_FILE pointing at a bundle that contains {cert}):
  incus image import {url}/talos/{latest}/amd64 --alias talos-demo-{latest}
The page with every image and its commands: {url}/
""")
    if self_service is not None:
        token, body = self_service.tokens[0], json.dumps(EXAMPLE_REQUEST, separators=(",", ":"))
        curl = (
            f"curl -fsS --cacert {cert} -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
            f"-d '{body}' {url}/requests"
        )
        _say(f"""Self-service is on (token {token}). Request a variant with extensions:
  {curl}
then follow its status_url; once published: incus image info talos-demo:talos/{latest}/storage
""")
    try:
        _serve(port, cert, key, url, settings, sim, self_service)
    finally:
        stop.set()


def _pick_up_requests(settings: Settings, stop: threading.Event) -> None:
    """The self-service sensor's ticks, in a loop, with its runs executed here (no daemon)."""
    runner = SensorRunner(Launcher(settings), SELF_SERVICE_SENSOR)
    while not stop.wait(PICKUP_SECONDS):
        try:
            started = time.monotonic()
            outcome = runner.tick()
        except Exception as exc:  # the demo keeps serving; the next tick tries again
            _say(f"self-service: the sensor's tick failed: {type(exc).__name__}: {exc}")
            continue
        if outcome.launched:
            _say(
                f"self-service: {len(outcome.launched)} runs in {time.monotonic() - started:.1f}s "
                f"({len(outcome.failed)} failed); catalog has {outcome.catalog_products} products"
            )
        for key, error in outcome.failed.items():
            _say(f"self-service: FAILED {key}: {error}")


def _serve(
    port: int,
    cert: Path,
    key: Path,
    url: str,
    settings: Settings,
    sim: UpstreamSimulator,
    self_service: SelfServiceOptions | None,
) -> None:
    serve_forever(
        open_store(settings.store, settings),
        "127.0.0.1",
        port,
        str(cert),
        str(key),
        public_url=url,
        disk_mode=settings.disk_mode,
        factory_url=sim.factory_url,
        self_service=self_service,
    )
