"""Sigstore bundles for published files: keyless (Fulcio + Rekor), key mode, or none.

Every published file `X` gets `X.sigstore.json` next to it, in the standard bundle format that
`cosign verify-blob --bundle` reads; large files are signed by their precomputed sha256, never
read again. Modules: `base` (the `Signer` contract, `NoSigner`), `keyless`, `key`, `bundles`
(the format), `verification`. The same signers sign the provenance attestations (in-toto
statements as DSSE bundles, `X.intoto.sigstore.json`). Background: `docs/sigstore.md`,
`docs/provenance.md`.
"""

from __future__ import annotations

import os

from ..errors import SigningError
from ..settings import Settings, SigningMode
from .base import ENV_KEY, ENV_MODE, NoSigner, Signer
from .bundles import bundle_kind
from .key import KeySigner, generate_key_pair
from .keyless import SigstoreSigner
from .verification import verify_attestation, verify_bundle

__all__ = [
    "KeySigner",
    "NoSigner",
    "Signer",
    "SigningError",
    "SigstoreSigner",
    "bundle_kind",
    "generate_key_pair",
    "make_signer",
    "signer_for",
    "verify_attestation",
    "verify_bundle",
]


def make_signer(
    mode: SigningMode | str,
    *,
    key: str | bytes | None = None,
    key_password: str | None = None,
    trust_config_path: str | os.PathLike[str] | None = None,
) -> Signer:
    """The signer for `mode`; raises `SigningError` naming what is missing."""
    try:
        chosen = SigningMode(str(mode).strip().lower())
    except ValueError:
        raise SigningError(
            f"unknown signing mode {mode!r}: {ENV_MODE} must be one of {', '.join(SigningMode)}"
        ) from None
    if chosen is SigningMode.NONE:
        return NoSigner()
    if chosen is SigningMode.KEY:
        if not key:
            raise SigningError(
                f"{ENV_MODE}=key needs {ENV_KEY} (the PEM text or the path of a PEM file); "
                "create a key pair with `talos-pipeline keygen`"
            )
        return KeySigner(key, key_password)
    return SigstoreSigner(trust_config_path=trust_config_path)


def signer_for(settings: Settings) -> Signer:
    """The signer `TALOS_SIGNING` and its companion settings describe."""
    return make_signer(
        settings.signing,
        key=settings.signing_key,
        key_password=settings.signing_key_password,
        trust_config_path=settings.trust_config,
    )
