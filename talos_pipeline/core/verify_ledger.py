"""The verification ledger: which disks `verify` has already re-hashed, so it need not again.

Re-hashing every disk on every run does not scale (a store of 140 images is ~19 GiB). After a
successful verification the ledger records, per disk, the object as the store described it
(ETag and size) and what hashing its bytes established (sha256, Incus fingerprint, unified
tarball sha256, against which metadata tarball). The next run re-hashes only disks whose object
or catalog claims differ; `verify --full` re-hashes everything.

Where it lives matters. Whoever can write the bucket is exactly who `verify` guards against, and
could forge a ledger kept in the bucket; so the ledger is a local file of the user running
`verify` (default `$XDG_CACHE_HOME/talos-pipeline/verify-ledger.json`, else
`~/.cache/...`), keyed by store location + object key, and written only after a run that found
no problem. A changed object gets a new ETag: on S3 the server computes it (an MD5 of the content
or of its parts), so a writer cannot keep it while changing the bytes; on a directory store the
ETag is inode, size and mtime, which someone with write access to the directory can restore
after rewriting a file in place: there, run `verify --full` when that matters. docs/provenance.md
has the trade-off.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError
from .stores import ObjectInfo

LEDGER_SCHEMA = 1


def default_ledger_path(environ: dict[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/talos-pipeline/verify-ledger.json`, else under `~/.cache`."""
    env = os.environ if environ is None else environ
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "talos-pipeline" / "verify-ledger.json"


@dataclass(frozen=True)
class HashedDisk:
    """What re-hashing one disk object established, and which object it was."""

    etag: str
    size: int
    sha256: str
    fingerprint: str
    unified_sha256: str
    metadata_sha256: str


class VerificationLedger:
    """The ledger file of one store location: read once, written back after a clean run."""

    def __init__(self, path: str | os.PathLike[str], store_location: str, *, trusted: bool = True) -> None:
        """`trusted=False` (`verify --full`): vouch for nothing, re-hash everything, record anew."""
        self.path = Path(path)
        self.store_location = store_location
        self._stores = self._read()
        self._known = _entries(self._stores.get(store_location)) if trusted else {}
        self._confirmed: dict[str, HashedDisk] = {}

    def _read(self) -> dict[str, dict[str, dict[str, object]]]:
        try:
            body = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError):
            return {}  # unreadable: start over (a missing entry only means one more re-hash)
        if not isinstance(body, dict) or body.get("schema") != LEDGER_SCHEMA:
            return {}
        stores = body.get("stores")
        return stores if isinstance(stores, dict) else {}

    @property
    def confirmed(self) -> int:
        """Disks this run hashed or found unchanged: what `save` will write."""
        return len(self._confirmed)

    def vouches_for(self, key: str, info: ObjectInfo, claims: HashedDisk) -> bool:
        """Whether the disk at `key`, as the store describes it now, was hashed to `claims` before."""
        known = self._known.get(key)
        if known is None or (known.etag, known.size) != (info.etag, info.size) or known != claims:
            return False
        self._confirmed[key] = known
        return True

    def confirm(self, key: str, hashed: HashedDisk) -> None:
        """`key` was just hashed to `hashed` (and its ETag did not change meanwhile)."""
        self._confirmed[key] = hashed

    def save(self) -> None:
        """Write the disks of this run (only those: a disk no longer published leaves the ledger)."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self._stores[self.store_location] = {
            key: {**asdict(hashed), "verified_at": stamp} for key, hashed in sorted(self._confirmed.items())
        }
        body = {"schema": LEDGER_SCHEMA, "stores": self._stores}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".verify-ledger.", delete=False) as out:
                json.dump(body, out, indent=1, sort_keys=True)
                out.write("\n")
            os.replace(out.name, self.path)
        except OSError as exc:
            raise ConfigError(f"cannot write the verification ledger {self.path}: {exc}; use --ledger PATH") from None


def _entries(raw: object) -> dict[str, HashedDisk]:
    """The well-formed entries of one store location (others are dropped: they only cost a re-hash)."""
    entries = {}
    for key, entry in (raw if isinstance(raw, dict) else {}).items():
        try:
            fields = {name: entry[name] for name in HashedDisk.__dataclass_fields__}
            entries[key] = HashedDisk(**fields)
        except (KeyError, TypeError):
            continue
    return entries
