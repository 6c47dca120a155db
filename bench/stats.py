"""Medians with their spread: how every benchmark reports repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one figure (seconds, MB/s, requests/s, ...)."""

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
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def show(self, fmt: str = "{:.3f}", unit: str = "") -> str:
        """`median unit (min–max, n=N)`; a single measurement shows just its value."""
        middle = fmt.format(self.median) + unit
        if len(self.values) == 1:
            return middle
        return f"{middle} ({fmt.format(self.low)}–{fmt.format(self.high)}, n={len(self.values)})"

    def ratio_to(self, baseline: Sample) -> float:
        """Median over median (not median over the best run)."""
        return self.median / baseline.median
