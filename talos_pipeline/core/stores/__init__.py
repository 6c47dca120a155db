"""Stores: where published objects live (a directory or an S3-compatible bucket).

`open_store` picks the implementation from `TALOS_STORE`; everything else programs against the
`Store` contract in `base.py`.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..settings import Settings
from .base import CHUNK, ObjectInfo, ObjectMissing, Store, Temporary, Upload, check_key
from .directory import DirectoryStore
from .s3 import S3Store

__all__ = [
    "CHUNK",
    "DirectoryStore",
    "ObjectInfo",
    "ObjectMissing",
    "S3Store",
    "Store",
    "Temporary",
    "Upload",
    "check_key",
    "open_store",
]


def open_store(location: str, settings: Settings | None = None) -> Store:
    """The store at `location` (`s3://bucket[/prefix]` or a directory path, as in `TALOS_STORE`);
    S3 tuning (`TALOS_S3_*`) comes from `settings`, else from the environment."""
    if not location or not location.strip():
        raise ConfigError("TALOS_STORE is empty: give a directory path or s3://bucket[/prefix]")
    if location.startswith("s3://"):
        settings = settings or Settings.from_env()
        return S3Store.from_url(
            location,
            part_size_mib=settings.s3_part_size_mib,
            concurrency=settings.s3_concurrency,
            upload_mode=settings.s3_upload,
        )
    if "://" in location:
        raise ConfigError(f"TALOS_STORE={location!r}: unsupported scheme; use a directory path or s3://bucket[/prefix]")
    return DirectoryStore(location)
