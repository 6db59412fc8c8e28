"""The public seams: `DefaultCause`, `statistics()` records with histogram buckets,
`metrics()` rendered from them, `history()`, and stopped versions' final figures."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest

import clipperlite
from clipperlite import (
    Clipper,
    ClipperStatistics,
    DefaultCause,
    HistogramStatistics,
    UnknownModelError,
)
from clipperlite import testing as fake

pytestmark = pytest.mark.anyio

CAUSES = {
    "no_model",
    "no_replica",
    "deadline",
    "model_error",
    "wrong_length",
    "worker_died",
    "queue_full",
    "would_miss",
    "low_confidence",
    "policy_error",
    "shutdown",
}


def _sum(xs: list[Any]) -> list[float]:
    return [float(x.sum()) for x in xs]


def test_default_cause_is_a_str_enum_of_design_causes() -> None:
    """DefaultCause has exactly DESIGN's causes, each equal to its string."""
    assert {c.value for c in DefaultCause} == CAUSES
    assert DefaultCause.DEADLINE == "deadline"
    assert isinstance(DefaultCause.DEADLINE, str)
    assert str(DefaultCause.MODEL_ERROR) == "model_error"
    assert json.dumps({DefaultCause.SHUTDOWN: 1}) == '{"shutdown": 1}'


def _check_histogram(h: HistogramStatistics, count: int) -> None:
    assert h.count == count
    assert h.counts[-1] == count
    assert math.isinf(h.bounds[-1])
    assert list(h.bounds) == sorted(h.bounds)
    assert list(h.counts) == sorted(h.counts)  # cumulative
    assert len(h.bounds) == len(h.counts)


async def test_statistics_records_match_metrics_after_traffic() -> None:
    """After known traffic, the typed records and metrics() give the same figures."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", _sum, default_output=-1.0)
        clipper.register_application("lonely", "doubles", 0.0, 100_000)
        for i in range(10):
            await clipper.predict("a", [float(i), 1.0])
        await clipper.predict("a", [0.0, 1.0])  # a cache hit
        p = await clipper.predict("lonely", [1.0])
        stats = clipper.statistics()
        m = clipper.metrics()
    assert isinstance(stats, ClipperStatistics)
    assert p.default and p.default_cause is DefaultCause.NO_MODEL
    a = next(s for s in stats.apps if s.name == "a")
    assert (a.queries, a.answered, a.defaults_total) == (11, 11, 0)
    assert a.linked_models == ("a",)
    _check_histogram(a.latency, 11)
    assert 0 < a.latency.sum < 11 * 3.0  # seconds
    lonely = next(s for s in stats.apps if s.name == "lonely")
    assert lonely.defaults == {DefaultCause.NO_MODEL: 1}
    (model,) = stats.models
    assert (model.name, model.version, model.is_current, model.stopped) == ("a", 1, True, False)
    assert model.backend == "thread"
    assert model.items == 10 and model.cache_hits == 1 and model.cache_misses == 10
    _check_histogram(model.batch_size, model.batches)
    _check_histogram(model.batch_latency, model.batches)
    assert model.batch_size.sum == 10
    assert m["apps"]["a"]["queries"] == 11
    assert m["apps"]["lonely"]["defaults"] == {"no_model": 1}
    assert m["models"]["a"]["1"]["cache_hits"] == 1
    assert m["models"]["a"]["1"]["batches"] == model.batches
    json.dumps(m)  # plain values only
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.state = "x"  # type: ignore[misc]


async def test_latency_buckets_count_observations_at_or_below_each_bound() -> None:
    """A query's latency lands in every bucket whose bound is at or above it."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("slow", "doubles", fake.slow(0.02, fake.constant(1.0)))
        p = await clipper.predict("slow", [1.0])
        (a,) = clipper.statistics().apps
    seconds = p.latency_micros / 1e6
    for bound, n in zip(a.latency.bounds, a.latency.counts, strict=True):
        assert n == (1 if bound >= seconds * 1.03 else n)  # 2% buckets: at worst one off
        if bound < seconds * 0.97:
            assert n == 0


async def test_history_is_a_bounded_ring_of_batches() -> None:
    """history() gives the last history_size batches, oldest first, with their figures."""
    async with Clipper(history_size=5, cache_size=0) as clipper:
        await clipper.create_endpoint("a", "doubles", _sum, batch_size=1)
        for i in range(8):
            await clipper.predict("a", [float(i)])
        h = clipper.history("a")
        h1 = clipper.history("a", 1)
    assert len(h) == 5 and h == h1
    assert [r.time for r in h] == sorted(r.time for r in h)
    assert all(r.size == 1 and r.max_batch == 1 and not r.failed for r in h)
    assert all(r.latency >= 0 for r in h)


async def test_failed_batches_are_marked_in_history() -> None:
    """A batch whose model raised is recorded as failed."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", fake.flaky(1))
        await clipper.predict("a", [1.0])
        (record,) = clipper.history("a")
    assert record.failed


async def test_stopped_versions_keep_final_figures_until_redeployed() -> None:
    """A stopped version stays in statistics() and metrics() marked stopped; deploying that
    version again starts fresh figures."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", _sum)
        await clipper.predict("a", [1.0])
        await clipper.stop_model("a")
        (stopped,) = clipper.statistics().models
        assert stopped.stopped and not stopped.is_current and stopped.items == 1
        assert clipper.metrics()["models"]["a"]["1"]["stopped"] is True
        assert len(clipper.history("a", 1)) == 1
        await clipper.deploy_model("a", 1, "doubles", _sum)
        (fresh,) = clipper.statistics().models
        assert not fresh.stopped and fresh.items == 0
    with pytest.raises(UnknownModelError):
        Clipper().history("nope")


async def test_statistics_is_cheap_and_safe_before_start() -> None:
    """statistics() of a Clipper never started has no apps and no models."""
    s = Clipper().statistics()
    assert s.state == "not started" and s.apps == () and s.models == ()
    assert clipperlite.CacheStatistics is type(s.cache)
