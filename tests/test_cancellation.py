"""Cancellation: callers that give up never wedge a batcher or leak a future.

Ray Serve users reported replicas wedged and memory held by requests whose callers
had gone (ray-project/ray#50046, #41057); these tests cancel at every stage of a
query's life and then check that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from clipperlite import Clipper, Prediction
from helpers import (
    Gate,
    async_model,
    clipperlite_threads,
    eventually,
    gated_query,
    sync_model,
    version_stats,
    worker_processes,
)

SLO = 200_000  # µs


def drained(clipper: Clipper) -> bool:
    """Every queue empty and nothing in flight in the cache."""
    m = clipper.metrics()
    queues = [v["queue_length"] for mod in m["models"].values() for v in mod.values()]
    return m["cache"]["inflight"] == 0 and not any(queues)


def batchers(clipper: Clipper) -> list[Any]:
    return [mv.batcher for mv in clipper._registry.all_versions()]


async def storm(
    clipper: Clipper, apps: list[str], n: int, seed: int, keys: int = 40
) -> tuple[list[Prediction], int]:
    """`n` callers query random keys (so many coalesce) and most cancel at a random
    moment: before the query starts, once queued, while batched, or near the deadline."""
    rng = random.Random(seed)
    returned: list[Prediction] = []
    cancelled = 0

    async def caller() -> None:
        nonlocal cancelled
        app = rng.choice(apps)
        task = asyncio.create_task(clipper.predict(app, [float(rng.randrange(keys))]))
        when = rng.randrange(6)
        if when == 0:
            pass  # cancelled before it runs
        elif when == 1:
            await asyncio.sleep(0)  # queued (or waiting on an identical query)
        elif when == 2:
            await asyncio.sleep(rng.uniform(0, 0.005))  # likely inside a batch
        elif when == 3:
            await asyncio.sleep(rng.uniform(0, SLO / 1e6 * 1.2))  # near the deadline
        if when < 4:
            task.cancel()
        try:
            returned.append(await task)
        except asyncio.CancelledError:
            cancelled += 1

    callers = []
    for _ in range(n):
        callers.append(asyncio.create_task(caller()))
        if rng.random() < 0.05:
            await asyncio.sleep(rng.uniform(0, 0.002))  # arrivals come in waves
    await asyncio.gather(*callers)
    return returned, cancelled


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("backend", "n", "batch_wait"),
    [("thread", 4000, 0), ("thread", 3000, 5_000), ("async", 3000, 0), ("process", 800, 0)],
)
async def test_storm_leaves_nothing_behind(backend: str, n: int, batch_wait: int) -> None:
    """After a cancellation storm the model serves, queues, in-flight and timer are empty."""
    func = async_model(0.001) if backend == "async" else sync_model(0.001)
    async with Clipper() as clipper:
        await clipper.create_endpoint(
            "c",
            "doubles",
            func,
            default_output=-1.0,
            slo_micros=SLO,
            backend=backend,
            num_replicas=2,
            batch_wait_micros=batch_wait,
        )
        returned, cancelled = await storm(clipper, ["c"], n, seed=n + batch_wait)
        assert cancelled >= n // 10  # the storm really cancelled
        assert await eventually(lambda: drained(clipper))
        # Every deadline has passed: the timer must have let go of every future.
        assert await eventually(lambda: len(clipper._timer) == 0, timeout=SLO / 1e6 + 2)
        for b in batchers(clipper):
            assert not b._running
            assert not b._filling
            assert len(b._idle) <= len(b.replicas)
        # Still serving: fresh keys are answered by the model.
        fresh = [await clipper.predict("c", [1000.0 + i]) for i in range(5)]
        assert [(p.default, p.output) for p in fresh] == [(False, 1000.0 + i) for i in range(5)]
        m = clipper.metrics()
    app = m["apps"]["c"]
    assert app["queries"] == len(returned) + 5
    assert app["queries"] == app["answered"] + sum(app["defaults"].values())
    assert all(p.output == -1.0 or not p.default for p in returned)
    assert all(p.default or p.output == int(p.output) for p in returned)
    assert m["models"]["c"]["1"]["num_replicas"] == 2
    assert m["models"]["c"]["1"]["queue_length"] == 0
    assert m["cache"]["inflight"] == 0


@pytest.mark.anyio
async def test_storm_on_an_ensemble_leaves_nothing_behind() -> None:
    """Cancelling callers that wait on several models at once (Exp4) leaks nothing."""
    async with Clipper() as clipper:
        clipper.register_application("e", "doubles", -1.0, SLO, policy="exp4")
        await clipper.deploy_model("a", 1, "doubles", sync_model(0.002), num_replicas=2)
        await clipper.deploy_model("b", 1, "doubles", async_model(0.001))
        clipper.link_model_to_app("e", "a")
        clipper.link_model_to_app("e", "b")
        returned, cancelled = await storm(clipper, ["e"], 3000, seed=5)
        assert cancelled >= 300
        assert await eventually(lambda: drained(clipper))
        assert await eventually(lambda: len(clipper._timer) == 0, timeout=SLO / 1e6 + 2)
        p = await clipper.predict("e", [12345.0])
        m = clipper.metrics()
    assert (p.default, p.output) == (False, 12345.0)
    app = m["apps"]["e"]
    assert app["queries"] == len(returned) + 1 == app["answered"] + sum(app["defaults"].values())


@pytest.mark.anyio
async def test_cancelled_queued_queries_never_reach_the_model() -> None:
    """Queries cancelled while queued never reach the model and leave nothing in flight."""
    gate = Gate()
    async with Clipper() as clipper:
        first = await gated_query(clipper, "g", gate, 0.0, batch_size=4)
        assert await asyncio.to_thread(gate.started.wait, 5)
        doomed = [asyncio.create_task(clipper.predict("g", [float(i)])) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert version_stats(clipper, "g")["queue_length"] == 5
        assert clipper.metrics()["cache"]["inflight"] == 6
        for t in doomed:
            t.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        gate.open.set()
        assert (await first).output == 0.0
        after = await clipper.predict("g", [9.0])
        assert await eventually(lambda: drained(clipper))
        stats = version_stats(clipper, "g")
    assert gate.seen == [0.0, 9.0]
    assert (after.default, after.output) == (False, 9.0)
    assert stats["cancelled_in_queue"] == 5
    assert stats["queue_length"] == 0


@pytest.mark.anyio
async def test_one_caller_cancelling_leaves_an_identical_query_intact() -> None:
    """One caller cancelling a coalesced query does not cancel it for the other caller."""
    gate = Gate()
    async with Clipper() as clipper:
        blocker = await gated_query(clipper, "g", gate, -1.0)
        assert await asyncio.to_thread(gate.started.wait, 5)
        a = asyncio.create_task(clipper.predict("g", [7.0]))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(clipper.predict("g", [7.0]))
        await asyncio.sleep(0.01)
        assert clipper.metrics()["cache"]["inflight"] == 2  # [-1] and one shared [7]
        a.cancel()
        gate.open.set()
        pb = await b
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await a
        assert await eventually(lambda: drained(clipper))
    assert (pb.default, pb.output) == (False, 7.0)
    assert gate.seen.count(7.0) == 1


@pytest.mark.anyio
async def test_cancel_inside_a_running_batch_leaves_the_batch_intact() -> None:
    """Cancelling inside a running batch leaves the batch intact and its output cached."""
    gate = Gate()
    async with Clipper() as clipper:
        await clipper.create_endpoint(
            "g",
            "doubles",
            gate,
            default_output=-1.0,
            slo_micros=5_000_000,
            batch_size=4,
            batch_wait_micros=100_000,
        )
        tasks = [asyncio.create_task(clipper.predict("g", [float(i)])) for i in range(4)]
        assert await asyncio.to_thread(gate.started.wait, 5)
        tasks[1].cancel()
        gate.open.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        again = await clipper.predict("g", [1.0])
        stats = version_stats(clipper, "g")
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r.output for r in results if isinstance(r, Prediction)] == [0.0, 2.0, 3.0]
    assert (again.default, again.output) == (False, 1.0)
    assert stats["cache_hits"] >= 1
    assert gate.seen == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.anyio
async def test_cancelled_predict_batch_drops_its_queries() -> None:
    """Cancelling a predict_batch drops every query it queued; the model serves on."""
    gate = Gate()
    async with Clipper() as clipper:
        blocker = await gated_query(clipper, "g", gate, -1.0, batch_size=2)
        assert await asyncio.to_thread(gate.started.wait, 5)
        many = asyncio.create_task(clipper.predict_batch("g", [[float(i)] for i in range(50)]))
        await asyncio.sleep(0.01)
        assert version_stats(clipper, "g")["queue_length"] == 50
        many.cancel()
        with pytest.raises(asyncio.CancelledError):
            await many
        gate.open.set()
        await blocker
        p = await clipper.predict("g", [99.0])
        assert await eventually(lambda: drained(clipper))
    assert (p.default, p.output) == (False, 99.0)
    assert gate.seen == [-1.0, 99.0]


@pytest.mark.anyio
async def test_cancelled_deploy_leaves_no_worker_behind() -> None:
    """Cancelling deploy_model while workers start leaves no model, thread or process behind."""
    before = set(worker_processes())
    async with Clipper() as clipper:
        with pytest.raises(asyncio.TimeoutError):  # builtin TimeoutError from 3.11 on
            await asyncio.wait_for(
                clipper.deploy_model(
                    "p", 1, "doubles", sync_model(0.001), backend="process", num_replicas=2
                ),
                0.05,
            )
        assert clipper.get_all_models() == []

        def clean() -> bool:
            return not clipperlite_threads() and not set(worker_processes()) - before

        assert await eventually(clean, timeout=3.0), (clipperlite_threads(), worker_processes())
