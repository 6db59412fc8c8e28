"""Memory: internal tables stay bounded however many queries go through.

A Clipper serving for days must not keep anything per query once the query is
answered: the pending-query tables, the cache's in-flight table, the deadline
timer's heap, the EDF queue and the statistics all have to stay the same size
after 2k and after 20k queries. (The long run with RSS figures is
``benchmarks/memory.py``.)
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Sized
from typing import Any

import pytest

from clipperlite import Clipper
from clipperlite._timers import _COMPACT_MIN

#: How much a table may differ between two snapshots taken under the same load.
SLACK = 256
CONCURRENCY = 50


def _attrs(obj: Any) -> dict[str, Any]:
    names: list[str] = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names.extend(getattr(klass, "__slots__", ()))
    missing = object()
    values = {name: getattr(obj, name, missing) for name in names}
    return {name: v for name, v in values.items() if v is not missing}


def table_sizes(clipper: Clipper) -> dict[str, int]:
    """The length of every container held by the Clipper's internal objects."""
    objects: dict[str, Any] = {"clipper": clipper, "cache": clipper._cache, "timer": clipper._timer}
    for name, app in clipper._registry.apps.items():
        objects[f"app:{name}"] = app
        objects[f"app:{name}:stats"] = app.stats
        objects[f"app:{name}:latency"] = app.stats.latency
    for name, model in clipper._registry.models.items():
        for key, mv in model.versions.items():
            objects[f"model:{name}:{key}"] = mv
            objects[f"model:{name}:{key}:batcher"] = mv.batcher
            objects[f"model:{name}:{key}:queue"] = mv.batcher.queue
            objects[f"model:{name}:{key}:sizer"] = mv.sizer
    sizes = {}
    for where, obj in objects.items():
        for attr, value in _attrs(obj).items():
            if getattr(value, "maxlen", None) is not None:
                continue  # bounded by construction (the batch history ring)
            if isinstance(value, Sized) and not isinstance(value, str | bytes):
                sizes[f"{where}.{attr}"] = len(value)
    return sizes


async def drive(clipper: Clipper, app: str, n: int, keys: int, seed: int) -> int:
    """Send n queries from CONCURRENCY callers, on random keys; return how many answered."""
    rng = random.Random(seed)
    answered = 0

    async def caller(count: int) -> None:
        nonlocal answered
        for _ in range(count):
            k = float(rng.randrange(keys))
            p = await clipper.predict(app, [k, k + 1.0, k + 2.0, k + 3.0])
            answered += not p.default

    await asyncio.gather(*(caller(n // CONCURRENCY) for _ in range(CONCURRENCY)))
    return answered


def _sum(xs: list[Any]) -> list[float]:
    return [float(x.sum()) for x in xs]


@pytest.mark.anyio
@pytest.mark.parametrize("batch_wait", [0, 200], ids=["no-batch-wait", "batch-wait"])
async def test_internal_tables_do_not_grow_with_queries(batch_wait: int) -> None:
    """Internal tables are no larger after 20k queries than after 2k, nothing in flight."""
    async with Clipper(cache_size=1000) as clipper:
        # create_endpoint's default SLO (3 s): the whole run fits in one SLO window.
        await clipper.create_endpoint(
            "m", "doubles", _sum, default_output=-1.0, batch_wait_micros=batch_wait
        )
        answered = await drive(clipper, "m", 2_000, keys=5_000, seed=1)
        early = table_sizes(clipper)
        answered += await drive(clipper, "m", 18_000, keys=5_000, seed=2)
        late = table_sizes(clipper)
        m = clipper.metrics()
    assert answered == 20_000
    assert m["apps"]["m"]["queries"] == 20_000
    assert m["cache"]["inflight"] == 0
    assert m["cache"]["size"] <= 1000
    assert m["models"]["m"]["1"]["queue_length"] == 0
    grown = {
        k: (early.get(k, 0), v)
        for k, v in late.items()
        if v > early.get(k, 0) + SLACK and k != "cache._lru"
    }
    assert grown == {}, f"tables that grew with the number of queries: {grown}"
    assert late["cache._inflight"] == 0
    # Answered entries are compacted away once the heap reaches its compaction floor.
    assert late.get("timer._heap", 0) <= max(_COMPACT_MIN, 2 * CONCURRENCY) + SLACK


@pytest.mark.anyio
async def test_nothing_in_flight_after_defaults_and_failures() -> None:
    """Queries answered with defaults leave nothing in flight or queued."""
    calls = deque(maxlen=1)

    def flaky(xs: list[Any]) -> list[float]:
        calls.append(len(xs))
        if any(x[0] < 0 for x in xs):
            raise ValueError("negative")
        return _sum(xs)

    async with Clipper(cache_size=100) as clipper:
        await clipper.create_endpoint(
            "f", "doubles", flaky, default_output=-1.0, slo_micros=1_000_000, max_queue=20
        )
        rng = random.Random(3)
        xs = [[float(rng.choice([-1, 1]) * rng.randrange(1, 500))] for _ in range(3000)]
        ps = await asyncio.gather(*(clipper.predict("f", x) for x in xs))
        for _ in range(100):
            if clipper.metrics()["cache"]["inflight"] == 0:
                break
            await asyncio.sleep(0.01)
        m = clipper.metrics()
    assert any(p.default for p in ps) and not all(p.default for p in ps)
    assert m["cache"]["inflight"] == 0
    assert m["models"]["f"]["1"]["queue_length"] == 0
