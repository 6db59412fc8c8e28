"""Admission control: a full queue and a hopeless deadline are answered at once."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from clipperlite import Clipper, ClipperError, Prediction
from helpers import Gate, gated_query, sync_model, version_stats


# -- the queue bound ---------------------------------------------------------------------------
@pytest.mark.anyio
async def test_full_queue_answers_default_at_once() -> None:
    """Beyond max_queue queued queries, a query gets the "queue is full" default at once."""
    gate = Gate()
    async with Clipper(cache_size=0) as clipper:
        first = await gated_query(clipper, "q", gate, 0.0, batch_size=1, max_queue=5)
        # The replica holds query 0; the queue is empty.
        assert await asyncio.to_thread(gate.started.wait, 5)
        queued = [asyncio.create_task(clipper.predict("q", [float(i)])) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert version_stats(clipper, "q")["queue_length"] == 5
        t0 = time.perf_counter()
        refused = await clipper.predict("q", [6.0])
        assert time.perf_counter() - t0 < 0.5  # at once, not at the 5 s deadline
        assert refused.default
        assert refused.output == -1.0
        assert refused.default_explanation is not None
        assert "app 'q'" in refused.default_explanation
        assert "model 'q'" in refused.default_explanation
        assert re.search(r"queue is full|full queue", refused.default_explanation)
        assert "5" in refused.default_explanation  # the bound it hit
        gate.open.set()
        done = await asyncio.gather(first, *queued)
        assert [p.output for p in done] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert not any(p.default for p in done)
        again = await clipper.predict("q", [7.0])  # room again
        assert (again.default, again.output) == (False, 7.0)
        m = clipper.metrics()
    assert m["models"]["q"]["1"]["rejected_queue_full"] == 1
    assert m["apps"]["q"]["defaults"] == {"queue_full": 1}
    assert m["apps"]["q"]["queries"] == 8


@pytest.mark.anyio
async def test_expired_queries_do_not_count_against_the_bound() -> None:
    """Queries whose deadline passed are shed to make room: the bound counts live ones."""
    gate = Gate()
    async with Clipper(cache_size=0) as clipper:
        first = await gated_query(clipper, "q", gate, 0.0, batch_size=1, max_queue=3)
        assert await asyncio.to_thread(gate.started.wait, 5)
        short = [
            asyncio.create_task(clipper.predict("q", [float(i)], slo_micros=50_000))
            for i in range(1, 4)
        ]
        late = await asyncio.gather(*short)  # each answered at its 50 ms deadline
        assert all(p.default for p in late)
        admitted = asyncio.create_task(clipper.predict("q", [9.0]))
        await asyncio.sleep(0.01)
        assert not admitted.done()  # queued, not refused
        gate.open.set()
        p = await admitted
        await first
    assert (p.default, p.output) == (False, 9.0)


@pytest.mark.anyio
async def test_max_queue_is_validated_and_reported() -> None:
    """max_queue must be an int >= 1; the default is large (thousands) and is reported."""
    async with Clipper() as clipper:
        for bad in (0, -1, 2.5, True, "10"):
            with pytest.raises(ClipperError, match="max_queue"):
                await clipper.deploy_model("m", 1, "doubles", sync_model(0), max_queue=bad)
        await clipper.deploy_model("m", 1, "doubles", sync_model(0))
        assert clipper.get_model_info("m")["max_queue"] >= 1000
        await clipper.deploy_model("m", 2, "doubles", sync_model(0), max_queue=7)
        assert clipper.get_model_info("m")["max_queue"] == 7


# -- would-miss admission ------------------------------------------------------------------
async def _warm(clipper: Clipper, app: str, n: int = 3) -> None:
    """Run a few batches so the model's batch latency is measured."""
    for i in range(n):
        p = await clipper.predict(app, [float(-1 - i)])
        assert not p.default


@pytest.mark.anyio
async def test_query_that_would_miss_is_answered_at_once() -> None:
    """A query the batches queued ahead would make late gets the would-miss default at once."""
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint(
            "w", "doubles", sync_model(0.05), default_output=-1.0, slo_micros=400_000, batch_size=1
        )
        await _warm(clipper, "w")
        ps: list[Prediction] = await asyncio.gather(
            *(clipper.predict("w", [float(i)]) for i in range(30))
        )
        m = clipper.metrics()
    refused = [p for p in ps if p.default and "could not meet its deadline" in str(p)]
    # The estimate leaves out the batch now running (it is optimistic), so the query at
    # the boundary may be admitted and then miss; nothing else may.
    missed = [p for p in ps if p.default and p not in refused]
    assert len(missed) <= 3
    assert all("did not answer within the deadline" in str(p) for p in missed)
    answered = [p for p in ps if not p.default]
    # 30 x 50 ms of work against a 400 ms SLO: most cannot make it.
    assert len(refused) >= 15
    assert len(answered) >= 4
    for p in refused:
        assert p.latency_micros < 100_000  # at once, not at the deadline
        assert p.default_explanation is not None
        assert p.default_explanation.startswith("app 'w': model 'w' (version 1) could not")
        assert "queued ahead" in p.default_explanation
    # Refusing early is what lets the admitted ones make their deadline.
    assert all(p.latency_micros <= 400_000 * 1.25 for p in answered)
    assert m["models"]["w"]["1"]["rejected_would_miss"] == len(refused)
    assert m["apps"]["w"]["defaults"].get("would_miss") == len(refused)


@pytest.mark.anyio
async def test_no_refusal_at_light_load() -> None:
    """Queries to a model answering well within the SLO are never refused at light load."""
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint(
            "w", "doubles", sync_model(0.01), default_output=-1.0, slo_micros=200_000
        )
        await _warm(clipper, "w")

        async def caller(k: int) -> list[Prediction]:
            return [await clipper.predict("w", [float(100 * k + i)]) for i in range(15)]

        ps = [p for ps in await asyncio.gather(caller(0), caller(1), caller(2)) for p in ps]
        m = clipper.metrics()
    assert not any(p.default for p in ps)
    assert m["models"]["w"]["1"]["rejected_would_miss"] == 0


async def _mixed_slo_clipper(clipper: Clipper) -> None:
    """A 50 ms-per-query model serving an app with a 20 s SLO and one with a 600 ms SLO."""
    clipper.register_application("long", "doubles", -1.0, 20_000_000)
    clipper.register_application("short", "doubles", -1.0, 600_000)
    await clipper.deploy_model("m", 1, "doubles", sync_model(0.05), batch_size=1)
    clipper.link_model_to_app("long", "m")
    clipper.link_model_to_app("short", "m")
    await _warm(clipper, "long")


@pytest.mark.anyio
async def test_earliest_deadline_is_admitted_behind_a_long_backlog() -> None:
    """A query due before everything queued is admitted: EDF serves it first."""
    async with Clipper(cache_size=0) as clipper:
        await _mixed_slo_clipper(clipper)
        backlog = [asyncio.create_task(clipper.predict("long", [float(i)])) for i in range(40)]
        await asyncio.sleep(0.01)
        p = await clipper.predict("short", [99.0])
        for t in backlog:
            t.cancel()
        await asyncio.gather(*backlog, return_exceptions=True)
    assert (p.default, p.output) == (False, 99.0), p


@pytest.mark.anyio
async def test_would_miss_counts_only_queries_served_before() -> None:
    """Only queries EDF serves before a query count against it, not later-deadline ones."""
    async with Clipper(cache_size=0) as clipper:
        await _mixed_slo_clipper(clipper)
        busy = asyncio.create_task(clipper.predict("long", [-10.0]))
        await asyncio.sleep(0.01)  # the replica is busy with it
        first = asyncio.create_task(clipper.predict("short", [0.0], slo_micros=400_000))
        backlog = [asyncio.create_task(clipper.predict("long", [float(i)])) for i in range(40)]
        await asyncio.sleep(0.01)
        # Due in 600 ms; EDF runs it second (after `first`): ~150 ms of work ahead of it.
        second = await clipper.predict("short", [99.0])
        assert (await first).output == 0.0
        for t in [busy, *backlog]:
            t.cancel()
        await asyncio.gather(busy, *backlog, return_exceptions=True)
    assert (second.default, second.output) == (False, 99.0), second
