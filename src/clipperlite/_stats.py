"""Bounded statistics: log-bucketed latency and batch-size histograms of fixed size,
and their rendering as Prometheus-style cumulative buckets."""

from __future__ import annotations

import bisect
import math

from ._types import HistogramStatistics

_RATIO = 1.02  # 2% relative precision
_LOG_RATIO = math.log(_RATIO)
_BUCKETS = int(math.log(1e9) / _LOG_RATIO) + 2  # 1 µs .. ~1000 s


def _edge_index(seconds: float) -> int:
    """The fine bucket whose lower edge is nearest `seconds`: bucket i holds [R^(i-1), R^i) µs."""
    return round(math.log(seconds * 1e6) / _LOG_RATIO) + 1


#: Exported latency bounds: fine-bucket edges nearest 100 µs .. 10 s in 1-2.5-5 steps, so
#: cumulative counts at them are exact (every value below an edge is counted, none above).
_EXPORT_EDGES = (
    *(_edge_index(m * 10.0**e) for e in range(-4, 1) for m in (1.0, 2.5, 5.0)),
    _edge_index(10.0),
)
LATENCY_BOUNDS = (*(_RATIO ** (i - 1) / 1e6 for i in _EXPORT_EDGES), math.inf)


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

    def export(self) -> HistogramStatistics:
        """Cumulative counts at `LATENCY_BOUNDS` (seconds), as Prometheus keeps them."""
        counts = self._counts
        cumulative: list[int] = []
        seen = 0
        last = 0
        for edge in _EXPORT_EDGES:
            seen += sum(counts[last:edge])
            last = edge
            cumulative.append(seen)
        cumulative.append(self.count)
        return HistogramStatistics(LATENCY_BOUNDS, tuple(cumulative), self.count, self.total / 1e6)


#: Batch-size bounds: powers of two up to 4096 items.
SIZE_BOUNDS: tuple[float, ...] = (*(float(2**k) for k in range(13)), math.inf)


class SizeHistogram:
    """Batch sizes counted in power-of-two buckets (constant memory)."""

    __slots__ = ("_counts", "count", "total")

    def __init__(self) -> None:
        self._counts = [0] * len(SIZE_BOUNDS)
        self.count = 0
        self.total = 0

    def record(self, n: int) -> None:
        """Add one batch of `n` items."""
        self._counts[bisect.bisect_left(SIZE_BOUNDS, n)] += 1
        self.count += 1
        self.total += n

    def export(self) -> HistogramStatistics:
        """Cumulative counts at `SIZE_BOUNDS` (items)."""
        cumulative: list[int] = []
        seen = 0
        for c in self._counts:
            seen += c
            cumulative.append(seen)
        return HistogramStatistics(SIZE_BOUNDS, tuple(cumulative), self.count, float(self.total))
