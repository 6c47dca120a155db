"""Faults tests inject into the simulator's answers, chosen by URL path prefix.

Kinds, and where `server.py` applies them:

* status faults (``500``, ``503``, ``429``, ``403``) replace the answer before routing; the
  ``429``/``403`` bodies and headers are GitHub's rate-limit refusals;
* ``slow_first_byte`` waits before routing;
* ``redirect_chain`` answers a few 302s to the same URL before the real answer;
* body faults apply to the next matching 200 answer that has a body: ``truncate`` (close after
  half of Content-Length), ``reset`` (TCP RST after a quarter), ``overlong`` (junk after
  Content-Length bytes), ``stall`` (a pause mid-body: longer than a client's read timeout, the
  connection looks dead).
"""

from __future__ import annotations

import math
import threading
import time

from .messages import Response, json_answer, text
from .ratelimit import RATE_LIMIT_DOCS, exhausted_headers

__all__ = ["BODY_FAULTS", "DELAY_FAULTS", "FAULTS", "REDIRECT_FAULTS", "STATUS_FAULTS", "FaultBoard", "InjectedFault"]

STATUS_FAULTS = ("500", "503", "429", "403")
BODY_FAULTS = ("truncate", "reset", "overlong", "stall")
DELAY_FAULTS = ("slow_first_byte",)
REDIRECT_FAULTS = ("redirect_chain",)
FAULTS = frozenset(STATUS_FAULTS + BODY_FAULTS + DELAY_FAULTS + REDIRECT_FAULTS)
TIMED_FAULTS = ("stall", "slow_first_byte")


class InjectedFault:
    """One injected fault; `wait` lets a test block until the simulator has applied it."""

    def __init__(self, prefix: str, kind: str, remaining: int | None, seconds: float | None) -> None:
        self.prefix, self.kind, self.remaining, self.seconds = prefix, kind, remaining, seconds
        self._applied = 0
        self._event = threading.Event()

    @property
    def applied(self) -> int:
        """How many answers this fault has changed so far."""
        return self._applied

    def wait(self, timeout: float | None = None) -> bool:
        """True once the fault has been applied at least once (False after ``timeout`` seconds)."""
        return self._event.wait(timeout)

    def __repr__(self) -> str:
        return f"<InjectedFault {self.kind} on {self.prefix}* remaining={self.remaining} applied={self._applied}>"


class FaultBoard:
    def __init__(
        self,
        *,
        slow_first_byte_seconds: float = 2.0,
        stall_seconds: float = 2.0,
        redirect_hops: int = 3,
        retry_after: int = 1,
        reset_in: float = 1.0,
    ) -> None:
        self.slow_first_byte_seconds = slow_first_byte_seconds
        self.stall_seconds = stall_seconds
        self.redirect_hops = redirect_hops
        self.retry_after = retry_after  # `retry-after` of the 429 fault
        self.reset_in = reset_in  # seconds until `x-ratelimit-reset` of the 403/429 faults
        self._lock = threading.Lock()
        self._faults: list[InjectedFault] = []

    def inject(
        self, path_prefix: str, kind: str, count: int | None = None, *, seconds: float | None = None
    ) -> InjectedFault:
        """Replace any fault of the same kind and prefix; see `UpstreamSimulator.set_fault`."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(sorted(FAULTS))}")
        if not isinstance(path_prefix, str) or not path_prefix.startswith("/"):
            raise ValueError(f"path_prefix must start with '/', got {path_prefix!r}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be None (persistent) or a positive integer, got {count!r}")
        if seconds is not None:
            if kind not in TIMED_FAULTS:
                raise ValueError(f"seconds applies to the {' and '.join(TIMED_FAULTS)} faults, not {kind!r}")
            if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
        fault = InjectedFault(path_prefix, kind, count, seconds)
        with self._lock:
            self._faults = [f for f in self._faults if not (f.prefix == path_prefix and f.kind == kind)]
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, path: str, kinds: tuple[str, ...]) -> InjectedFault | None:
        """The longest-prefix fault of one of ``kinds`` for ``path``, counted as applied."""
        with self._lock:
            best: InjectedFault | None = None
            for fault in self._faults:
                matches = fault.kind in kinds and path.startswith(fault.prefix)
                if matches and (best is None or len(fault.prefix) >= len(best.prefix)):
                    best = fault
            if best is None:
                return None
            if best.remaining is not None:
                best.remaining -= 1
                if best.remaining <= 0:
                    self._faults.remove(best)
            best._applied += 1
        best._event.set()
        return best

    def seconds(self, fault: InjectedFault) -> float:
        """How long a ``stall`` or ``slow_first_byte`` fault pauses."""
        if fault.seconds is not None:
            return fault.seconds
        return self.stall_seconds if fault.kind == "stall" else self.slow_first_byte_seconds

    def status_answer(self, fault: InjectedFault, *, client_host: str, limit: int) -> Response:
        if fault.kind == "500":
            return text(500, "500 internal server error")
        if fault.kind == "503":
            return text(503, "503 service unavailable")
        headers = exhausted_headers(limit, math.ceil(time.time() + self.reset_in))
        if fault.kind == "429":
            headers["retry-after"] = str(self.retry_after)
            message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
        else:
            message = f"API rate limit exceeded for {client_host}."
        body = {"message": message, "documentation_url": RATE_LIMIT_DOCS, "status": fault.kind}
        return json_answer(int(fault.kind), body, headers)
