"""The latency histogram: percentiles within its bucket precision, in constant memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipperlite._stats import LatencyHistogram

PERCENTILES = [0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100]


def histogram_of(values: list[float] | np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.record(float(v))
    return h


@pytest.mark.parametrize(
    "sample",
    [
        pytest.param(lambda rng: rng.lognormal(mean=8.0, sigma=1.5, size=20_000), id="lognormal"),
        pytest.param(lambda rng: rng.uniform(1.0, 1e6, size=20_000), id="uniform"),
        pytest.param(lambda rng: 100.0 + rng.exponential(5_000.0, size=20_000), id="exponential"),
    ],
)
def test_percentiles_are_within_two_percent_of_numpys(
    sample: Callable[[np.random.Generator], Any],
) -> None:
    """On random latencies, every percentile is within 2% of numpy's exact one."""
    rng = np.random.default_rng(20240601)
    data = sample(rng)
    h = histogram_of(data)
    for q in PERCENTILES:
        exact = float(np.percentile(data, q, method="inverted_cdf"))
        assert h.percentile(q) == pytest.approx(exact, rel=0.02), q


@given(
    st.lists(st.floats(min_value=1.0, max_value=1e8), min_size=1, max_size=300),
    st.floats(min_value=0.0, max_value=100.0),
)
def test_percentile_is_a_recorded_value_up_to_two_percent(values: list[float], q: float) -> None:
    """Any percentile lies within 2% of a recorded value near its rank, and within [min, max]."""
    h = histogram_of(values)
    got = h.percentile(q)
    assert got is not None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(values) * q / 100.0))
    nearby = ordered[max(0, rank - 2) : rank + 1]  # allow for rounding of the rank
    assert any(got == pytest.approx(v, rel=0.02) for v in nearby), (got, nearby)
    assert ordered[0] / 1.02 <= got <= ordered[-1]


def test_empty_histogram_has_no_percentiles_and_no_mean() -> None:
    """With no data, percentiles and the mean are None, not zero."""
    h = LatencyHistogram()
    assert h.percentile(50) is None
    assert h.percentile(99) is None
    assert h.mean is None
    assert h.count == 0


def test_count_total_mean_and_max_are_exact() -> None:
    """The count, total, mean and max are kept exactly, not bucketed."""
    h = histogram_of([10.0, 20.0, 33.0])
    assert h.count == 3
    assert h.total == 63.0
    assert h.mean == pytest.approx(21.0)
    assert h.max == 33.0


def test_single_value_is_every_percentile() -> None:
    """With one latency recorded, every percentile is that latency (to bucket precision)."""
    h = histogram_of([1234.0])
    for q in PERCENTILES:
        assert h.percentile(q) == pytest.approx(1234.0, rel=0.02)


def test_percentiles_never_exceed_the_max() -> None:
    """The top percentile is capped at the largest recorded latency."""
    h = histogram_of([100.0, 100.0, 100.0])
    assert h.percentile(100) is not None
    assert h.percentile(100) <= 100.0  # type: ignore[operator]


def test_percentiles_are_monotonic() -> None:
    """A higher percentile is never smaller than a lower one."""
    rng = np.random.default_rng(7)
    h = histogram_of(rng.lognormal(6.0, 2.0, size=5_000))
    values = [h.percentile(q) for q in range(101)]
    assert values == sorted(values)  # type: ignore[type-var]


def test_tail_percentile_sees_rare_slow_requests() -> None:
    """p99 reflects the slow 2% of requests while p50 stays at the fast ones."""
    h = histogram_of([100.0] * 980 + [50_000.0] * 20)
    assert h.percentile(50) == pytest.approx(100.0, rel=0.02)
    assert h.percentile(99) == pytest.approx(50_000.0, rel=0.02)


def test_sub_microsecond_and_huge_latencies_are_recorded_without_error() -> None:
    """Latencies below 1 µs or beyond the top bucket are counted, never raising."""
    h = histogram_of([0.0, 0.5, 1e15])
    assert h.count == 3
    assert h.max == 1e15
    assert h.percentile(0) is not None


def test_memory_does_not_grow_with_the_count() -> None:
    """The bucket list has the same length after 100 000 recordings as when empty."""
    h = LatencyHistogram()
    buckets = len(h._counts)
    rng = np.random.default_rng(3)
    for v in rng.lognormal(8.0, 3.0, size=100_000):
        h.record(float(v))
    assert len(h._counts) == buckets
    assert h.count == 100_000
    assert not hasattr(h, "__dict__")
