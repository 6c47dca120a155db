"""`talos-pipeline verify`: re-check a published store, signatures (and provenance) included."""

from __future__ import annotations

import argparse
from pathlib import Path

from talos_pipeline.core.errors import ConfigError
from talos_pipeline.core.settings import Settings
from talos_pipeline.core.stores import open_store
from talos_pipeline.core.verify import VerifyPolicy, verify_store
from talos_pipeline.core.verify_ledger import VerificationLedger, default_ledger_path

from .base import EXIT_FAILED, EXIT_OK, say


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="re-check every published file, fingerprint and signature",
        description="Every catalog item exists with its size and sha256, combined fingerprints match, "
        "and the Sigstore bundles verify (identity flags mean what they mean for `cosign verify-blob`). "
        "With a policy (--key, or both identity flags) every file must carry a bundle that satisfies it. "
        "Disks re-hashed at the last successful verification and unchanged since (same ETag and size, "
        "same catalog claims) are not read again; --full re-hashes everything.",
    )
    parser.add_argument("--certificate-identity-regexp", help="as for cosign verify-blob (keyless bundles)")
    parser.add_argument("--certificate-oidc-issuer", help="as for cosign verify-blob (keyless bundles)")
    parser.add_argument("--key", help="PEM public key for key-mode bundles")
    parser.add_argument("--trust-config", help="Sigstore ClientTrustConfig or trusted_root JSON of a private instance")
    parser.add_argument("--store", help="store to check [TALOS_STORE]")
    parser.add_argument(
        "--provenance",
        action="store_true",
        help="also check every provenance attestation (<file>.intoto.sigstore.json): its signature under the same "
        "policy, its subject is the file, its predicate agrees with the catalog",
    )
    parser.add_argument("--full", action="store_true", help="re-hash every disk, whatever the ledger says")
    parser.add_argument(
        "--ledger",
        help="the verification ledger: which disks were re-hashed at the last successful verification "
        f"[{default_ledger_path()}]",
    )
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
    if args.key and args.certificate_identity_regexp:
        raise ConfigError("give --key (key-mode bundles) or the identity flags (keyless bundles), not both")
    settings = Settings.from_env()
    store = open_store(args.store or settings.store, settings)
    policy = VerifyPolicy(
        identity_regexp=args.certificate_identity_regexp,
        oidc_issuer=args.certificate_oidc_issuer,
        key_pem=_read_key(args.key),
        trust_config=args.trust_config or settings.trust_config,
    )
    ledger = VerificationLedger(args.ledger or default_ledger_path(), store.describe(), trusted=not args.full)
    report = verify_store(store, policy, provenance=args.provenance, ledger=ledger)
    say(f"store: {store.describe()}")
    say(report.summary())
    if report.ok:
        say(f"ledger: {ledger.confirmed} disks recorded in {ledger.path}")
    else:
        say(f"ledger: {ledger.path} left as it was (a verification with problems records nothing)")
    return EXIT_OK if report.ok else EXIT_FAILED
