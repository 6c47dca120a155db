"""GitHub's REST rate limits, as the releases API enforces them (docs/talos-upstream.md, "Rate limits").

Budgets are per caller: per client address without a token, per token with one. A window opens
with the first request and resets after `window` seconds. Tests can also force an early
exhaustion (`force`), which applies to every caller until its own reset time.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

__all__ = ["GITHUB_DOCS", "RATE_LIMIT_DOCS", "RateLimiter", "exhausted_headers"]

GITHUB_DOCS = "https://docs.github.com/rest"
RATE_LIMIT_DOCS = f"{GITHUB_DOCS}/overview/rate-limits-for-the-rest-api"


@dataclass
class _Bucket:
    limit: int
    used: int
    reset: int  # epoch seconds


@dataclass
class _Override:
    remaining: int
    reset: int


def _headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-used": str(limit - remaining),
        "x-ratelimit-reset": str(reset),
        "x-ratelimit-resource": "core",
    }


def exhausted_headers(limit: int, reset: int) -> dict[str, str]:
    """The headers of an answer refused for lack of budget."""
    return _headers(limit, 0, reset)


class RateLimiter:
    def __init__(self, *, unauthenticated: int = 60, authenticated: int = 5000, window: float = 3600.0) -> None:
        self.unauthenticated = unauthenticated
        self.authenticated = authenticated
        self.window = window
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._override: _Override | None = None

    def force(self, remaining: int | None, *, reset_in: float = 60.0) -> None:
        """After ``remaining`` more requests, refuse every caller until ``reset_in`` seconds pass; ``None`` lifts it."""
        if remaining is not None and (not isinstance(remaining, int) or remaining < 0):
            raise ValueError(f"remaining must be a non-negative integer, got {remaining!r}")
        with self._lock:
            self._override = None if remaining is None else _Override(remaining, math.ceil(time.time() + reset_in))

    def admit(self, identity: str, *, authenticated: bool) -> tuple[bool, dict[str, str]]:
        """Charge one request to ``identity`` if budget is left; return (admitted, headers)."""
        with self._lock:
            now = time.time()
            bucket = self._buckets.get(identity)
            if bucket is None or now >= bucket.reset:
                bucket = self._buckets[identity] = self._new_bucket(authenticated, now)
            if self._override is not None and now >= self._override.reset:
                self._override = None
            admitted = self._remaining(bucket)[0] > 0
            if admitted:
                bucket.used += 1
                if self._override is not None:
                    self._override.remaining -= 1
            return admitted, self._headers(bucket)

    def refund(self, identity: str) -> dict[str, str]:
        """Give back the request just charged (a 304 with a token is free); return the new headers."""
        with self._lock:
            bucket = self._buckets[identity]
            bucket.used = max(0, bucket.used - 1)
            if self._override is not None:
                self._override.remaining += 1
            return self._headers(bucket)

    def status(self, token: str | None = None) -> dict[str, int]:
        """The budget GitHub would report to anonymous callers on loopback (or ``token``), without spending it."""
        identity = f"token:{token}" if token else "ip:127.0.0.1"
        with self._lock:
            bucket = self._buckets.get(identity) or self._new_bucket(bool(token), time.time())
            headers = self._headers(bucket)
        return {k.removeprefix("x-ratelimit-"): int(v) for k, v in headers.items() if v.isdigit()}

    def _new_bucket(self, authenticated: bool, now: float) -> _Bucket:
        limit = self.authenticated if authenticated else self.unauthenticated
        return _Bucket(limit=limit, used=0, reset=math.ceil(now + self.window))

    def _remaining(self, bucket: _Bucket) -> tuple[int, int]:
        remaining, reset = bucket.limit - bucket.used, bucket.reset
        override = self._override
        if override is not None and override.remaining < remaining:
            remaining, reset = override.remaining, override.reset
        return max(0, remaining), reset

    def _headers(self, bucket: _Bucket) -> dict[str, str]:
        remaining, reset = self._remaining(bucket)
        return _headers(bucket.limit, remaining, reset)
