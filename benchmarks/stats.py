"""Median and spread of repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """Values of one measurement over the repetitions."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Sample:
        collected = tuple(values)
        if not collected:
            raise ValueError("a sample needs at least one value")
        return cls(collected)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        """``median (min-max)``, or just the value for a single repetition."""
        median = f"{self.median * scale:.{digits}f}"
        if len(self.values) == 1:
            return median
        return f"{median} ({self.low * scale:.{digits}f}-{self.high * scale:.{digits}f})"


def ratio(numerators: Iterable[float], denominators: Iterable[float]) -> Sample:
    """Per-repetition ratios of paired measurements (taken in the same repetition)."""
    return Sample.of(a / b for a, b in zip(numerators, denominators, strict=True))
