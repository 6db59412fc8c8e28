"""Bounded statistics: a log-bucketed latency histogram whose size never grows."""

from __future__ import annotations

import math

_RATIO = 1.02  # 2% relative precision
_LOG_RATIO = math.log(_RATIO)
_BUCKETS = int(math.log(1e9) / _LOG_RATIO) + 2  # 1 µs .. ~1000 s


class LatencyHistogram:
    """Latencies in microseconds, kept as counts in ~2%-wide buckets (constant memory)."""

    __slots__ = ("_counts", "count", "max", "total")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, micros: float) -> None:
        """Add one latency."""
        i = int(math.log(micros) / _LOG_RATIO) + 1 if micros >= 1.0 else 0
        if i >= _BUCKETS:
            i = _BUCKETS - 1
        self._counts[i] += 1
        self.count += 1
        self.total += micros
        if micros > self.max:
            self.max = micros

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) in microseconds, or None with no data."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(self.count * q / 100.0))
        seen = 0
        for i, c in enumerate(self._counts):
            seen += c
            if seen >= rank:
                value = 1.0 if i == 0 else _RATIO ** (i - 0.5)
                return min(value, self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None
