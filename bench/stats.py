"""Medians with their spread: how every benchmark reports repeated measurements.

One rule for every table in docs/performance.md: a figure measured more than once is shown as its
median with the spread (`median (min–max, n=N)`); ratios are median over median and differences
median minus median (never against the best run, which flatters whichever side got lucky).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one figure (seconds, MB/s, requests/s, MiB, ...)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        if not values:
            raise ValueError("a sample needs at least one measurement")
        return cls(tuple(values))

    @classmethod
    def measure(cls, repeat: int, fn: Callable[[], float]) -> Sample:
        return cls.of([fn() for _ in range(repeat)])

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def map(self, fn: Callable[[float], float]) -> Sample:
        """The same runs in another unit, run by run (seconds → MB/s, KiB → MiB): the spread follows."""
        return Sample.of([fn(value) for value in self.values])

    def show(self, fmt: str = "{:.3f}", unit: str = "") -> str:
        """`median unit (min–max, n=N)`; a single measurement shows just its value."""
        middle = fmt.format(self.median) + unit
        if self.n == 1:
            return middle
        return f"{middle} ({fmt.format(self.low)}–{fmt.format(self.high)}, n={self.n})"

    def ratio_to(self, baseline: Sample) -> float:
        """Median over median (not median over the best run)."""
        return self.median / baseline.median

    def minus(self, baseline: Sample) -> float:
        """Median minus median (not median minus the best run)."""
        return self.median - baseline.median


def rate(amount: float, seconds: Sample) -> Sample:
    """`amount` per second, run by run (MB and wall seconds → MB/s)."""
    return seconds.map(lambda value: amount / value)


def medians_of(count: int, what: str = "interleaved rounds") -> str:
    """How a table's figures were taken, for its title: `medians (min–max, n) of 5 interleaved rounds`."""
    if count == 1:
        return "single measurements (n=1)"
    return f"medians (min–max, n) of {count} {what}"


def times(ratio: float) -> str:
    """A ratio as the tables print it."""
    return f"{ratio:.2f}×"
