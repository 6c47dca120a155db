"""`talos-pipeline verify`: re-check a published store, signatures included."""

from __future__ import annotations

import argparse
from pathlib import Path

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.verify import VerifyPolicy, verify_store

from .base import EXIT_FAILED, EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="re-check every published file, fingerprint and signature",
        description="Every catalog item exists with its size and sha256, combined fingerprints match, "
        "and the Sigstore bundles verify (identity flags mean what they mean for `cosign verify-blob`).",
    )
    parser.add_argument("--certificate-identity-regexp", help="as for cosign verify-blob (keyless bundles)")
    parser.add_argument("--certificate-oidc-issuer", help="as for cosign verify-blob (keyless bundles)")
    parser.add_argument("--key", help="PEM public key for key-mode bundles")
    parser.add_argument("--trust-config", help="Sigstore ClientTrustConfig or trusted_root JSON of a private instance")
    parser.add_argument("--store", help="store to check [TALOS_STORE]")
    parser.set_defaults(run=run)


def _read_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--key {path}: cannot read the public key ({exc.strerror})") from None


def run(args: argparse.Namespace) -> int:
    if bool(args.certificate_identity_regexp) != bool(args.certificate_oidc_issuer):
        raise ConfigError("give both --certificate-identity-regexp and --certificate-oidc-issuer, or neither")
    settings = Settings.from_env()
    store = open_store(args.store or settings.store, settings)
    policy = VerifyPolicy(
        identity_regexp=args.certificate_identity_regexp,
        oidc_issuer=args.certificate_oidc_issuer,
        key_pem=_read_key(args.key),
        trust_config=args.trust_config or settings.trust_config,
    )
    report = verify_store(store, policy)
    say(f"store: {store.describe()}")
    say(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED
