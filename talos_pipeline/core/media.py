"""The kinds of file a store holds: their name suffixes and the media types they are served with.

Defined once here for the stores (S3 `Content-Type`), `serve/` and the signing code.
"""

from __future__ import annotations

BUNDLE_SUFFIX = ".sigstore.json"
"""A Sigstore bundle sits next to the file it signs: `<file>.sigstore.json`."""
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
"""The bundle format sigstore-python writes and `cosign verify-blob --bundle` reads."""
ATTESTATION_SUFFIX = ".intoto.sigstore.json"
"""A signed in-toto provenance statement (a DSSE bundle) sits next to the file it describes:
`<file>.intoto.sigstore.json` (docs/provenance.md). Served as a bundle, like the signatures."""

_CONTENT_TYPES = (
    (BUNDLE_SUFFIX, BUNDLE_MEDIA_TYPE),
    (".json", "application/json"),
    (".tar.xz", "application/x-xz"),
    (".qcow2", "application/x-qemu-disk"),
    (".tar", "application/x-tar"),
)


def content_type_for(key: str) -> str:
    for suffix, content_type in _CONTENT_TYPES:
        if key.endswith(suffix):
            return content_type
    return "application/octet-stream"


def bundle_key(key: str) -> str:
    """Where the bundle of the file at `key` lives."""
    return key + BUNDLE_SUFFIX


def attestation_key(key: str) -> str:
    """Where the provenance attestation of the file at `key` lives."""
    return key + ATTESTATION_SUFFIX
