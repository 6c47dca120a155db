"""`talos-pipeline demo`: the whole product offline, on loopback, in one command.

Starts the upstream simulator, publishes every release it offers (both arches, the configured
variants) with the same Dagster jobs production uses, verifies the result, and serves it over
HTTPS with a generated certificate, printing the exact Incus commands to try it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.core.versions import TalosVersion, sorted_tags


def _say(message: str) -> None:
    print(message, flush=True)


def offered_versions(settings: Settings) -> list[str]:
    """Releases GitHub shows that the factory also offers (drafts and old prereleases drop out)."""
    listed = ReleasesClient(settings.releases_url).list_releases().releases
    offered = set(FactoryClient(settings.factory_url).versions())
    tags = [r["tag_name"] for r in listed if TalosVersion.is_valid(r.get("tag_name", "")) and r["tag_name"] in offered]
    return sorted_tags(tags)


def _configure_signing(data_dir: Path) -> Path | None:
    """Key mode with a generated key unless the operator chose a mode."""
    if os.environ.get("TALOS_SIGNING"):
        return None
    from talos_pipeline.core.signing import generate_key_pair

    private, public = data_dir / "keys" / "talos-signing.key", data_dir / "keys" / "talos-signing.pub"
    if not private.exists():
        private.parent.mkdir(parents=True, exist_ok=True)
        generate_key_pair(private, public)
    os.environ["TALOS_SIGNING"] = "key"
    os.environ["TALOS_SIGNING_KEY"] = str(private)
    return public


def run_demo(args: argparse.Namespace) -> int:
    from talos_pipeline.launch import publish
    from talos_pipeline.simulator import UpstreamSimulator
    from talos_pipeline.simulator.__main__ import parse_size

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TALOS_STORE", str(data_dir / "store"))
    public_key = _configure_signing(data_dir)
    with UpstreamSimulator(disk_size=parse_size(args.disk_size), cache_dir=str(data_dir / "upstream-cache")) as sim:
        os.environ["TALOS_RELEASES_URL"] = sim.releases_url
        os.environ["TALOS_FACTORY_URL"] = sim.factory_url
        settings = Settings.from_env()
        versions = offered_versions(settings)
        _say(f"upstream simulator at {sim.url}: {len(versions)} releases offered ({', '.join(versions)})")
        outcome = publish(versions)
        _say(
            f"published {len(outcome.succeeded)} version×arch partitions into {settings.store}; catalog has {outcome.catalog_products} products"
        )
        if not outcome.ok:
            for label, message in outcome.failed.items():
                _say(f"FAILED {label}: {message}")
            return 1
        key_pem = public_key.read_bytes() if public_key else None
        report = verify_store(
            open_store(settings.store), VerifyPolicy(key_pem=key_pem, trust_config=settings.trust_config)
        )
        bad = [p for p in report.products if p.problems]
        _say(f"verify: {len(report.products)} products, {len(bad)} with problems")
        if not report.ok:
            _say(report.summary())
            return 1
        if args.once:
            _say("done (--once): run `talos-pipeline verify` or `talos-pipeline serve` on this store")
            return 0
        return _serve_demo(args, data_dir, settings, sim)


def _incus_conf() -> Path:
    return Path(os.environ.get("INCUS_CONF") or Path.home() / ".config" / "incus")


def _serve_demo(args: argparse.Namespace, data_dir: Path, settings: Settings, sim) -> int:
    """Serve the demo store over HTTPS and tell the user exactly how to point Incus at it."""
    from serve import generate_self_signed, serve_forever

    cert, key = data_dir / "tls" / "server.crt", data_dir / "tls" / "server.key"
    if not cert.exists():
        cert.parent.mkdir(parents=True, exist_ok=True)
        generate_self_signed(cert, key)
    url = settings.public_url or f"https://127.0.0.1:{args.port}"
    pinned = _incus_conf() / "servercerts" / "talos-demo.crt"
    latest = offered_versions(settings)[-1]
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
""")
    serve_forever(
        open_store(settings.store),
        "127.0.0.1",
        args.port,
        str(cert),
        str(key),
        public_url=url,
        disk_mode=settings.disk_mode,
        factory_url=sim.factory_url,
    )
    return 0
