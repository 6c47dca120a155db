"""`talos-pipeline`: a thin command line over the core, the Dagster jobs and `serve/`.

User mistakes (`PipelineError`) print one clear line and exit 2; failures of the work itself
exit 1; success exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from talos_pipeline.core.catalog import load_records
from talos_pipeline.core.errors import PipelineError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.upstream import FactoryClient, ReleasesClient
from talos_pipeline.core.versions import TalosVersion

EXIT_FAILED = 1
EXIT_USAGE = 2


def _say(message: str) -> None:
    print(message, flush=True)


def cmd_publish(args: argparse.Namespace) -> int:
    from talos_pipeline.core.settings import Settings
    from talos_pipeline.launch import publish, unpublished_versions

    versions = list(args.versions)
    if args.new:
        versions += unpublished_versions(Settings.from_env(), args.arch, args.variant)
        if not versions:
            _say("nothing new: every eligible release is published for every configured arch and variant")
            return 0
    elif not versions:
        raise PipelineError("name at least one Talos version (e.g. v1.12.0), or pass --new")
    outcome = publish(versions, args.arch, args.variant)
    for label in outcome.succeeded:
        _say(f"published Talos {label}")
    for label, message in outcome.failed.items():
        _say(f"FAILED {label}: {message}")
    if outcome.catalog_products is None:
        _say("catalog unchanged (nothing new was published)")
    else:
        _say(f"catalog: {outcome.catalog_products} products")
    return 0 if outcome.ok else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    from talos_pipeline.core.settings import Settings
    from talos_pipeline.core.stores import open_store
    from talos_pipeline.core.verify import VerifyPolicy, verify_store

    settings = Settings.from_env()
    store = open_store(args.store or settings.store)
    key_pem = Path(args.key).read_bytes() if args.key else None
    if bool(args.certificate_identity_regexp) != bool(args.certificate_oidc_issuer):
        raise PipelineError("give both --certificate-identity-regexp and --certificate-oidc-issuer, or neither")
    policy = VerifyPolicy(
        identity_regexp=args.certificate_identity_regexp,
        oidc_issuer=args.certificate_oidc_issuer,
        key_pem=key_pem,
        trust_config=args.trust_config or settings.trust_config,
    )
    report = verify_store(store, policy)
    _say(f"store: {store.describe()}")
    _say(report.summary())
    return 0 if report.ok else EXIT_FAILED


def cmd_prune(args: argparse.Namespace) -> int:
    from talos_pipeline.core.prune import RetentionPolicy, prune_store

    settings = Settings.from_env()
    defaults = RetentionPolicy.from_settings(settings)  # TALOS_PRUNE_KEEP, _KEEP_PER_MINOR, _GRACE_SECONDS
    policy = RetentionPolicy(
        args.keep if args.keep is not None else defaults.keep,
        args.keep_per_minor if args.keep_per_minor is not None else defaults.keep_per_minor,
        args.grace_seconds if args.grace_seconds is not None else defaults.grace_seconds,
    ).validated()
    store = open_store(args.store or settings.store, settings)
    store.check_ready()
    report = prune_store(store, policy, [v.name for v in settings.variant_list()], dry_run=args.dry_run)
    _say(report.summary())
    return 0 if report.ok else EXIT_FAILED


def cmd_releases(args: argparse.Namespace) -> int:
    _say(release_table())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from talos_pipeline.simulator.__main__ import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from talos_pipeline.demo import run_demo

    return run_demo(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from serve.command import run

    return run(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    from talos_pipeline.core.signing import generate_key_pair

    private, public = Path(args.output + ".key"), Path(args.output + ".pub")
    for path in (private, public):
        if path.exists() and not args.force:
            raise PipelineError(f"{path} exists; pass --force to overwrite it")
    generate_key_pair(private, public)
    _say(f"wrote {private} (keep secret; TALOS_SIGNING_KEY) and {public} (give to users: cosign verify-blob --key)")
    return 0


def release_rows(settings: Settings) -> list[dict]:
    releases = ReleasesClient(settings.releases_url, settings.github_token).list_releases().releases
    offered = set(FactoryClient(settings.factory_url).versions())
    records, _ = load_records(open_store(settings.store))
    published: dict[str, list[str]] = {}
    for record in records:
        published.setdefault(record.version, []).append(f"{record.arch}/{record.variant}")
    rows = []
    for release in releases:
        tag = release.get("tag_name", "")
        valid = TalosVersion.is_valid(tag)
        rows.append(
            {
                "version": tag,
                "published_at": release.get("published_at") or "(draft)",
                "prerelease": bool(release.get("prerelease")) or (valid and TalosVersion.parse(tag).is_prerelease),
                "factory": "yes" if tag in offered else "no",
                "published_here": ", ".join(sorted(published.get(tag, []))) or "-",
                "note": "" if valid else "not a Talos release tag: ignored",
            }
        )
    rows.sort(
        key=lambda r: TalosVersion.parse(r["version"]).sort_key() if TalosVersion.is_valid(r["version"]) else (0,),
        reverse=True,
    )
    return rows


def release_table(settings: Settings | None = None) -> str:
    rows = release_rows(settings or Settings.from_env())
    if not rows:
        return "no releases found"
    return pd.DataFrame(rows).to_string(index=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="talos-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="offline end-to-end demo: simulator → publish → HTTPS server")
    demo.add_argument("--once", action="store_true", help="exit after publishing (do not serve)")
    demo.add_argument("--port", type=int, default=8443, help="HTTPS port of the demo server [8443]")
    demo.add_argument("--disk-size", default="8MiB", help="size of each simulated disk image [8MiB]")
    demo.add_argument("--data-dir", default="data/demo", help="where the demo keeps its store and keys [data/demo]")
    demo.set_defaults(func=cmd_demo)

    publish = commands.add_parser("publish", help="publish Talos versions (all configured arches and variants)")
    publish.add_argument("versions", nargs="*", metavar="VERSION", help="release tags, e.g. v1.12.0")
    publish.add_argument(
        "--new",
        action="store_true",
        help="also every eligible upstream release not yet published here (the sensor's policy)",
    )
    publish.add_argument("--arch", action="append", choices=None, help="amd64 or arm64 (repeatable) [TALOS_ARCHES]")
    publish.add_argument("--variant", action="append", help="a configured variant name (repeatable) [all]")
    publish.set_defaults(func=cmd_publish)

    serve = commands.add_parser("serve", help="serve the store to Incus (simplestreams + direct URL import)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    verify = commands.add_parser("verify", help="re-check every published file, fingerprint and signature")
    verify.add_argument("--certificate-identity-regexp", help="as for cosign verify-blob (keyless bundles)")
    verify.add_argument("--certificate-oidc-issuer", help="as for cosign verify-blob (keyless bundles)")
    verify.add_argument("--key", help="PEM public key for key-mode bundles")
    verify.add_argument("--trust-config", help="Sigstore ClientTrustConfig or trusted_root JSON of a private instance")
    verify.add_argument("--store", help="store to check [TALOS_STORE]")
    verify.set_defaults(func=cmd_verify)

    prune = commands.add_parser(
        "prune", help="retention: drop old versions from the catalog, delete files out of it for over an hour"
    )
    prune.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep the newest N versions of each product line (arch × variant) [TALOS_PRUNE_KEEP; all]",
    )
    prune.add_argument(
        "--keep-per-minor",
        type=int,
        metavar="N",
        help="keep the newest N versions of each minor line, e.g. v1.12 [TALOS_PRUNE_KEEP_PER_MINOR; all]",
    )
    prune.add_argument(
        "--grace-seconds",
        type=float,
        metavar="S",
        help="delete files only after this long out of the catalog [TALOS_PRUNE_GRACE_SECONDS; 3600]",
    )
    prune.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
    prune.add_argument("--store", help="store to prune [TALOS_STORE]")
    prune.set_defaults(func=cmd_prune)

    releases = commands.add_parser("releases", help="upstream releases, factory availability, publication status")
    releases.set_defaults(func=cmd_releases)

    simulate = commands.add_parser("simulate-upstream", help="run the GitHub + Image Factory simulator alone")
    from talos_pipeline.simulator.__main__ import add_arguments

    add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)

    keygen = commands.add_parser("keygen", help="write an ECDSA P-256 key pair for TALOS_SIGNING=key")
    keygen.add_argument("--output", default="talos-signing", help="file name stem [talos-signing] → .key/.pub")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=cmd_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"talos-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
