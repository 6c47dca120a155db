"""The signer contract shared by every signing mode, and the mode that signs nothing.

Every published file `X` gets `X.sigstore.json` next to it (see `core/media.py`); `make_signer`
(in `__init__.py`) picks the implementation for `TALOS_SIGNING`: `keyless.SigstoreSigner`,
`key.KeySigner` or `NoSigner`. The same signer signs the provenance attestations (in-toto
statements in DSSE envelopes, `<file>.intoto.sigstore.json`, see docs/provenance.md).
Signatures are not deterministic, so `would_keep` decides whether an existing bundle of an
unchanged file can stay (republishing then rewrites nothing).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from ..errors import SigningError
from ..media import BUNDLE_SUFFIX
from ..settings import SETTING_BY_NAME, SigningMode
from .bundles import bundle_kind

ENV_MODE = SETTING_BY_NAME["signing"].env
ENV_KEY = SETTING_BY_NAME["signing_key"].env
ENV_KEY_PASSWORD = SETTING_BY_NAME["signing_key_password"].env
ENV_TRUST_CONFIG = SETTING_BY_NAME["trust_config"].env
GITHUB_ACTIONS_ISSUER = "https://token.actions.githubusercontent.com"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_digest(sha256_hex: str) -> str:
    if not isinstance(sha256_hex, str):
        raise SigningError(f"a sha256 digest must be a hex string, got {type(sha256_hex).__name__}")
    value = sha256_hex.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not _HEX64.fullmatch(value):
        raise SigningError(
            f"invalid sha256 digest {sha256_hex!r}: expected 64 hex characters (optionally prefixed with 'sha256:')"
        )
    return value


class Signer(ABC):
    """Writes Sigstore bundles. ``sign_*`` return the bundle JSON bytes (None in mode none).

    Use as a context manager (or call `close`) so a keyless signer releases its session.
    """

    mode: SigningMode

    @abstractmethod
    def sign_bytes(self, data: bytes) -> bytes | None:
        """Sign a small artifact given by its content."""

    @abstractmethod
    def sign_digest(self, sha256_hex: str) -> bytes | None:
        """Sign an artifact by its precomputed sha256 (hex, optionally ``sha256:``-prefixed)."""

    @abstractmethod
    def sign_statement(self, statement: bytes) -> bytes | None:
        """Sign an in-toto statement (its exact JSON bytes) as a DSSE envelope in a bundle."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs: what kind of signature, by whom, verified how."""

    def would_keep(self, bundle_json: bytes) -> bool:
        """Whether an existing bundle of an unchanged artifact can stay as it is.

        Signatures are not deterministic (ECDSA nonces, fresh certificates), so re-signing on every
        republish would rewrite objects that must not change. A bundle of the same kind (and, in key
        mode, the same key) stays; a change of mode or key replaces it.
        """
        try:
            return bundle_kind(bundle_json) == self.mode
        except SigningError:
            return False

    def open(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Acquire credentials now (fail fast) instead of at the first signature."""

    def close(self) -> None:  # noqa: B027 - an optional hook, empty on purpose
        """Release credentials and sessions."""

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoSigner(Signer):
    """Mode ``none``: writes no bundles."""

    mode = SigningMode.NONE

    def sign_bytes(self, data: bytes) -> None:
        return None

    def sign_digest(self, sha256_hex: str) -> None:
        normalize_digest(sha256_hex)
        return None

    def sign_statement(self, statement: bytes) -> None:
        return None

    def describe(self) -> str:
        return f"signing disabled ({ENV_MODE}=none): no {BUNDLE_SUFFIX} bundles are written"
