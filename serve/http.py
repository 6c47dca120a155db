"""HTTP helpers with no framework in them: entity tags, conditional requests, byte ranges.

RFC 9110 is the reference: strong ETags are the quoted sha256 of the bytes (so they are the same
on every replica), `If-None-Match` uses the weak comparison, and a single `bytes=` range is
served as 206 while anything else (multi-range, malformed) gets the whole body.
"""

from __future__ import annotations

import hashlib
import re

# The catalog changes when something is published; a minute of shared caching (CDN, proxies) takes
# the load off while bounding how stale an answer can be. Clients revalidate cheaply with the ETag.
# (Incus itself caches the index for an hour regardless.)
CATALOG_CACHE = "public, max-age=60"
# Objects named by their own sha256 never change bytes.
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
# Signature bundles keep their name when an image is re-signed, so they are not immutable.
SIGNATURE_CACHE = "public, max-age=300"
NO_STORE = "no-store"


def strong_etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*` or a list of (possibly weak) entity tags; weak comparison."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


class Unsatisfiable(Exception):
    """A syntactically valid range that selects nothing (→ 416)."""


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end exclusive), or None for the whole body.

    Multi-range and malformed headers are ignored (RFC 9110 allows answering 200 with the full
    body); a syntactically valid range that selects nothing raises `Unsatisfiable` (→ 416).
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - length), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None  # invalid (last < first): ignore the header
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size)
