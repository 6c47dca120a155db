"""HTTP helpers with no framework in them: entity tags, conditional requests, byte ranges.

RFC 9110 is the reference: strong ETags are the quoted sha256 of the bytes (so they are the same
on every replica), `If-None-Match` uses the weak comparison, and a single `bytes=` range is
served as 206 while anything else (multi-range, malformed) gets the whole body.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from collections.abc import Callable

# The catalog changes when something is published; a minute of shared caching (CDN, proxies) takes
# the load off while bounding how stale an answer can be. Clients revalidate cheaply with the ETag.
# (Incus itself caches the index for an hour regardless.)
CATALOG_CACHE = "public, max-age=60"
# Objects named by their own sha256 never change bytes.
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"
# Signature bundles keep their name when an image is re-signed, so they are not immutable.
SIGNATURE_CACHE = "public, max-age=300"
NO_STORE = "no-store"


def accepts_gzip(header: str | None) -> bool:
    """Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3: `gzip`/`x-gzip` or `*` with q > 0)."""
    if not header:
        return False
    gzip = star = None
    for part in header.split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding in ("gzip", "x-gzip"):
            gzip = quality > 0
        elif coding == "*":
            star = quality > 0
    return gzip if gzip is not None else bool(star)


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


def strong_match(header: str, etag: str) -> bool:
    """If-Match: `*` or a list of entity tags; strong comparison (weak tags never match)."""
    if header.strip() == "*":
        return True
    return not etag.startswith("W/") and any(tag.strip() == etag for tag in header.split(","))


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def preconditions(
    method: str, header: Callable[[str], str | None], etag: str, last_modified: float | None
) -> int | None:
    """RFC 9110 §13.2.2, in its order: 412 when If-Match / If-Unmodified-Since fail, 304 when
    If-None-Match / If-Modified-Since say the client's copy is current, else None."""
    if_match = header("if-match")
    if if_match is not None:
        if not strong_match(if_match, etag):
            return 412
    elif (since := header("if-unmodified-since")) is not None and last_modified is not None:
        date = parse_http_date(since)
        if date is not None and int(last_modified) > date:
            return 412
    if_none_match = header("if-none-match")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            return 304 if method in ("GET", "HEAD") else 412
    elif (since := header("if-modified-since")) is not None and last_modified is not None:
        date = parse_http_date(since)
        if date is not None and method in ("GET", "HEAD") and int(last_modified) <= date:
            return 304
    return None


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
