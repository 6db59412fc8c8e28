"""The Batcher on its own: a fake `run_batch`, an injected clock, no backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clipperlite import BatchResult, WorkerDiedError
from clipperlite._aimd import AIMD, FixedBatchSize
from clipperlite._batching import Batcher, ReplicaSlot
from clipperlite._clock import FakeClock
from clipperlite._queue import Query
from clipperlite._types import DefaultCause, Failure

pytestmark = pytest.mark.anyio


class FakeModel:
    """A run_batch that records its batches and claims each took `seconds`."""

    def __init__(self, seconds: float = 0.001, poison: Any = None, die: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.seconds = seconds
        self.poison = poison
        self.die = die
        self.gate: asyncio.Event | None = None

    async def __call__(self, xs: list[Any]) -> BatchResult:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(list(xs))
        if self.die:
            raise WorkerDiedError("gone")
        if self.poison is not None and self.poison in xs:
            raise ValueError("poisoned")
        return BatchResult([x * 10 for x in xs], self.seconds)


async def run(batcher: Batcher, model: FakeModel, queries: list[Query]) -> list[Any]:
    """Serve `queries` on one replica and return what each query's caller got; a model
    with a gate runs nothing until every query is queued."""
    slot = ReplicaSlot(model, "replica")
    batcher.replicas.append(slot)
    task = asyncio.get_running_loop().create_task(batcher.serve(slot))
    try:
        for q in queries:
            assert batcher.submit(q) is None
        if model.gate is not None:
            model.gate.set()
        return [await q.waiters[0] for q in queries]
    finally:
        batcher.close()
        await task


def query(x: Any, deadline: float = 10.0) -> Query:
    q = Query(x, deadline, 0.0)
    q.add_waiter(asyncio.get_running_loop().create_future())
    return q


async def test_outputs_fan_out_and_the_model_time_drives_aimd() -> None:
    """Each query gets its own output; AIMD sees BatchResult.seconds, not the clock."""
    clock = FakeClock()
    sizer = AIMD(0.01, initial=2)
    batcher = Batcher(sizer, clock=clock)
    model = FakeModel(seconds=0.001)
    model.gate = asyncio.Event()
    got = await run(batcher, model, [query(i) for i in range(6)])
    assert got == [i * 10 for i in range(6)]
    assert [len(b) for b in model.batches] == [2, 4]  # full batch of 2, under budget: 2 x 2
    assert sizer.max_batch == 8  # slow start: doubling, well within what the fit allows
    assert [r.size for r in batcher.history] == [2, 4]


async def test_a_stall_on_the_clock_is_not_the_models_latency() -> None:
    """Fake time jumping during a batch does not count as model latency."""
    clock = FakeClock()
    sizer = AIMD(0.01, initial=1)
    batcher = Batcher(sizer, clock=clock)

    class Stalling(FakeModel):
        async def __call__(self, xs: list[Any]) -> BatchResult:
            clock.advance(1.0)  # a long GC pause on the loop
            return await super().__call__(xs)

    await run(batcher, Stalling(seconds=0.001), [query(1, deadline=100.0)])
    assert sizer.max_batch == 3  # grew: the model took 1 ms
    assert batcher.history[-1].latency == 0.001


async def test_expired_queries_never_reach_the_model() -> None:
    """A query whose deadline passed while queued is answered with a deadline failure."""
    clock = FakeClock()
    batcher = Batcher(FixedBatchSize(4), clock=clock)
    model = FakeModel()
    late, fine = query(1, deadline=1.0), query(2, deadline=5.0)
    slot = ReplicaSlot(model, "r")
    batcher.replicas.append(slot)  # in service, not yet pulling
    assert batcher.submit(late) is None and batcher.submit(fine) is None
    clock.advance(2.0)
    task = asyncio.get_running_loop().create_task(batcher.serve(slot))
    got_late = await late.waiters[0]
    assert await fine.waiters[0] == 20
    batcher.close()
    await task
    assert isinstance(got_late, Failure) and got_late.cause is DefaultCause.DEADLINE
    assert model.batches == [[2]]
    assert batcher.stats.expired == 1


async def test_a_poison_input_fails_alone() -> None:
    """A failed batch is retried in halves, so only the bad input gets the failure."""
    batcher = Batcher(FixedBatchSize(4), clock=FakeClock())
    model = FakeModel(poison=3)
    model.gate = asyncio.Event()
    got = await run(batcher, model, [query(i) for i in range(4)])
    assert got[:3] == [0, 10, 20]
    assert isinstance(got[3], Failure) and got[3].cause is DefaultCause.MODEL_ERROR
    assert "ValueError: poisoned" in got[3].detail
    assert batcher.stats.errors == 1 and batcher.stats.retries >= 2
    assert batcher.history[0].failed


async def test_a_dead_worker_and_a_wrong_length_are_their_own_causes() -> None:
    """WorkerDiedError becomes worker_died; a list of the wrong length, wrong_length."""
    batcher = Batcher(FixedBatchSize(1), clock=FakeClock())
    (died,) = await run(batcher, FakeModel(die=True), [query(1)])
    assert isinstance(died, Failure) and died.cause is DefaultCause.WORKER_DIED

    class Short(FakeModel):
        async def __call__(self, xs: list[Any]) -> BatchResult:
            return BatchResult([], 0.001)

    (short,) = await run(Batcher(FixedBatchSize(1), clock=FakeClock()), Short(), [query(1)])
    assert isinstance(short, Failure) and short.cause is DefaultCause.WRONG_LENGTH
    assert "0 outputs for a batch of 1" in short.detail


async def test_a_full_queue_refuses_at_once() -> None:
    """Beyond max_queue a query is refused with queue_full (no replica needed to say so)."""
    batcher = Batcher(FixedBatchSize(1), clock=FakeClock(), max_queue=2)
    batcher.replicas.append(ReplicaSlot(FakeModel(), "idle"))
    assert batcher.submit(query(1)) is None
    assert batcher.submit(query(2)) is None
    refused = batcher.submit(query(3))
    assert refused is not None and refused.cause is DefaultCause.QUEUE_FULL
    assert batcher.stats.rejected == 1


async def test_the_next_batch_starts_before_the_last_ones_callers_are_answered() -> None:
    """With queries waiting as a batch ends, the next batch is handed to the model
    first and the finished batch's callers are answered in the loop's next round; the
    batch is already counted then, and every caller gets its own output."""
    batcher = Batcher(FixedBatchSize(2), clock=FakeClock())
    seen: list[tuple[int, bool]] = []  # (batch number, first batch's first caller done?)
    first = [query(0), query(1)]

    class Recording(FakeModel):
        async def __call__(self, xs: list[Any]) -> BatchResult:
            seen.append((len(self.batches), first[0].waiters[0].done()))
            return await super().__call__(xs)

    model = Recording()
    model.gate = asyncio.Event()
    got = await run(batcher, model, [*first, query(2), query(3)])
    assert got == [0, 10, 20, 30]
    assert seen == [(0, False), (1, False)]  # batch 2 started before batch 1's answers
    assert batcher.stats.batches == 2
    assert not batcher._running


async def test_a_lone_batch_answers_its_callers_at_once() -> None:
    """With nothing else waiting, a finished batch's callers are answered in the same
    step (no extra loop round for an unloaded query)."""
    batcher = Batcher(FixedBatchSize(4), clock=FakeClock())
    q = query(7)
    observed: list[bool] = []  # in the loop round after the model returned: answered?

    class Peeking(FakeModel):
        async def __call__(self, xs: list[Any]) -> BatchResult:
            asyncio.get_running_loop().call_soon(lambda: observed.append(q.waiters[0].done()))
            return await super().__call__(xs)

    assert await run(batcher, Peeking(), [q]) == [70]
    assert observed == [True]
