"""The EDF queue and the Query record, stepped with plain numbers as the clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clipperlite._queue import DONE, EDFQueue, Query
from clipperlite._types import CANCELLED, DefaultCause, Failure

NewQuery = Callable[..., Query]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop that is never run: it only makes futures."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def query(loop: asyncio.AbstractEventLoop) -> NewQuery:
    """Make a query with one pending waiter future (so it is alive)."""

    def make(
        x: Any = None, *, deadline: float, arrival: float = 0.0, waiters: int = 1, **kw: Any
    ) -> Query:
        q = Query(x, deadline=deadline, arrival=arrival, **kw)
        for _ in range(waiters):
            q.add_waiter(loop.create_future())
        return q

    return make


def cancel_all(q: Query) -> None:
    for w in q.waiters:
        w.cancel()


# -- EDF order -----------------------------------------------------------------------------


def test_pop_batch_takes_earliest_deadline_first(query: NewQuery) -> None:
    """Queries come out in deadline order, whatever order they were pushed in."""
    queue = EDFQueue()
    for name, deadline in [("c", 30.0), ("a", 10.0), ("d", 40.0), ("b", 20.0)]:
        queue.push(query(name, deadline=deadline))
    batch, dropped = queue.pop_batch(10, now=0.0)
    assert [q.x for q in batch] == ["a", "b", "c", "d"]
    assert dropped == []


def test_equal_deadlines_come_out_first_in_first_out(query: NewQuery) -> None:
    """Among queries with the same deadline, the first pushed is the first taken."""
    queue = EDFQueue()
    for i in range(20):
        queue.push(query(i, deadline=5.0))
    batch, _ = queue.pop_batch(20, now=0.0)
    assert [q.x for q in batch] == list(range(20))


def test_pop_batch_returns_at_most_n(query: NewQuery) -> None:
    """A batch holds at most n queries; the rest stay queued for the next batch, in order."""
    queue = EDFQueue()
    for i in range(7):
        queue.push(query(i, deadline=float(i + 1)))
    first, _ = queue.pop_batch(3, now=0.0)
    second, _ = queue.pop_batch(3, now=0.0)
    third, _ = queue.pop_batch(3, now=0.0)
    assert [q.x for q in first] == [0, 1, 2]
    assert [q.x for q in second] == [3, 4, 5]
    assert [q.x for q in third] == [6]
    assert queue.pop_batch(3, now=0.0) == ([], [])


def test_pop_batch_of_zero_takes_nothing(query: NewQuery) -> None:
    """Asking for no queries leaves the queue untouched."""
    queue = EDFQueue()
    queue.push(query(deadline=1.0))
    assert queue.pop_batch(0, now=0.0) == ([], [])
    assert len(queue) == 1


# -- dropping expired and cancelled queries ---------------------------------------------------


def test_expired_queries_are_dropped_with_deadline_cause(query: NewQuery) -> None:
    """A query whose deadline is at or before now is dropped as DEADLINE, never batched."""
    queue = EDFQueue()
    past, due, live = query("past", deadline=1.0), query("due", deadline=2.0), query(deadline=3.0)
    for q in (live, due, past):
        queue.push(q)
    batch, dropped = queue.pop_batch(5, now=2.0)
    assert batch == [live]
    assert dropped == [(past, DefaultCause.DEADLINE), (due, DefaultCause.DEADLINE)]
    assert len(queue) == 0


def test_queries_without_a_live_waiter_are_dropped_as_cancelled(query: NewQuery) -> None:
    """A query whose waiters were all cancelled is dropped as CANCELLED, never batched."""
    queue = EDFQueue()
    gone, live = query("gone", deadline=1.0, waiters=2), query("live", deadline=2.0)
    cancel_all(gone)
    queue.push(gone)
    queue.push(live)
    batch, dropped = queue.pop_batch(5, now=0.0)
    assert batch == [live]
    assert dropped == [(gone, CANCELLED)]


def test_query_with_no_waiter_at_all_is_dropped_as_cancelled(query: NewQuery) -> None:
    """A query nobody waits for is not worth running."""
    queue = EDFQueue()
    nobody = query(deadline=1.0, waiters=0)
    queue.push(nobody)
    assert queue.pop_batch(5, now=0.0) == ([], [(nobody, CANCELLED)])


def test_one_live_waiter_keeps_a_shared_query_alive(query: NewQuery) -> None:
    """A coalesced query with one cancelled and one pending waiter still runs."""
    queue = EDFQueue()
    shared = query(deadline=1.0, waiters=2)
    shared.waiters[0].cancel()
    queue.push(shared)
    assert queue.pop_batch(5, now=0.0) == ([shared], [])


def test_dropped_queries_do_not_count_towards_n(query: NewQuery) -> None:
    """A batch of n is filled with live queries even when dead ones were in front."""
    queue = EDFQueue()
    dead = [query(deadline=float(i)) for i in range(3)]
    live = [query(deadline=10.0 + i) for i in range(3)]
    for q in dead + live:
        queue.push(q)
    batch, dropped = queue.pop_batch(2, now=5.0)
    assert batch == live[:2]
    assert [q for q, _ in dropped] == dead


# -- reschedule ------------------------------------------------------------------------------


def test_reschedule_to_a_later_deadline_extends_life_not_place(query: NewQuery) -> None:
    """A later caller extends how long a query lives but not its place: the earliest caller
    still needs it first."""
    queue = EDFQueue()
    a, b, c = query("a", deadline=1.0), query("b", deadline=2.0), query("c", deadline=3.0)
    for q in (a, b, c):
        queue.push(q)
    queue.reschedule(a, 2.5)
    assert a.deadline == 2.5
    assert len(queue) == 3
    batch, dropped = queue.pop_batch(10, now=0.0)
    assert [q.x for q in batch] == ["a", "b", "c"]
    assert dropped == []
    assert queue.pop_batch(10, now=0.0) == ([], [])


def test_rescheduled_query_survives_its_old_deadline(query: NewQuery) -> None:
    """After moving to a later deadline, passing the old one does not expire the query."""
    queue = EDFQueue()
    q = query(deadline=1.0)
    queue.push(q)
    queue.reschedule(q, 5.0)
    assert queue.pop_batch(10, now=2.0) == ([q], [])


def test_reschedule_to_an_earlier_deadline_moves_the_query_ahead(query: NewQuery) -> None:
    """A tighter caller joining a queued query moves it ahead, once, while it still lives
    until its latest caller's deadline."""
    queue = EDFQueue()
    a, b = query("a", deadline=1.0), query("b", deadline=3.0)
    queue.push(a)
    queue.push(b)
    queue.reschedule(b, 0.5)
    assert b.deadline == 3.0
    assert b.priority == 0.5
    assert len(queue) == 2
    batch, _ = queue.pop_batch(10, now=0.0)
    assert [q.x for q in batch] == ["b", "a"]
    assert queue.pop_batch(10, now=0.0) == ([], [])


def test_reschedule_of_a_taken_query_does_nothing(query: NewQuery) -> None:
    """A query already taken for a batch is not put back by a reschedule."""
    queue = EDFQueue()
    q = query(deadline=1.0)
    queue.push(q)
    assert queue.pop_batch(1, now=0.0) == ([q], [])
    queue.reschedule(q, 9.0)
    assert len(queue) == 0
    assert queue.pop_batch(1, now=0.0) == ([], [])
    assert queue.drain() == []


def test_drain_after_reschedule_has_no_duplicates(query: NewQuery) -> None:
    """Draining returns a query moved ahead twice once, at its new place."""
    queue = EDFQueue()
    a, b = query("a", deadline=1.0), query("b", deadline=2.0)
    queue.push(a)
    queue.push(b)
    queue.reschedule(b, 0.5)
    queue.reschedule(b, 0.25)
    assert [q.x for q in queue.drain()] == ["b", "a"]


def test_earliest_deadline_of_a_fresh_queue() -> None:
    """An empty queue has no earliest deadline."""
    queue = EDFQueue()
    assert queue.earliest_deadline() is None


def test_earliest_deadline_is_the_smallest_pushed(query: NewQuery) -> None:
    """Pushing queries in any order, earliest_deadline reports the smallest deadline."""
    queue = EDFQueue()
    for deadline in (3.0, 1.0, 2.0):
        queue.push(query(deadline=deadline))
    assert queue.earliest_deadline() == 1.0


# -- oldest arrival, drain, shed, len -------------------------------------------------------------


def test_oldest_arrival_is_the_earliest_arrival_still_queued(query: NewQuery) -> None:
    """oldest_arrival follows arrival order, not deadline order, and skips taken queries."""
    queue = EDFQueue()
    assert queue.oldest_arrival() is None
    # Later arrivals have earlier deadlines, so EDF takes the newest first.
    for arrival, deadline in [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]:
        queue.push(query(deadline=deadline, arrival=arrival))
    assert queue.oldest_arrival() == 1.0
    queue.pop_batch(1, now=0.0)  # takes the arrival-3 query
    assert queue.oldest_arrival() == 1.0
    queue.pop_batch(1, now=0.0)  # takes the arrival-2 query
    assert queue.oldest_arrival() == 1.0
    queue.pop_batch(1, now=0.0)
    assert queue.oldest_arrival() is None


def test_oldest_arrival_moves_on_when_the_oldest_is_taken(query: NewQuery) -> None:
    """Once the oldest query is taken, the next oldest is reported."""
    queue = EDFQueue()
    queue.push(query(deadline=1.0, arrival=1.0))
    queue.push(query(deadline=2.0, arrival=2.0))
    queue.pop_batch(1, now=0.0)
    assert queue.oldest_arrival() == 2.0


def test_drain_takes_everything_queued_in_edf_order(query: NewQuery) -> None:
    """drain returns every queued query (expired or not) in EDF order and empties the queue."""
    queue = EDFQueue()
    for name, deadline in [("b", 2.0), ("c", 3.0), ("a", 1.0)]:
        queue.push(query(name, deadline=deadline))
    drained = queue.drain()
    assert [q.x for q in drained] == ["a", "b", "c"]
    assert len(queue) == 0
    assert queue.oldest_arrival() is None
    assert queue.pop_batch(10, now=0.0) == ([], [])
    assert queue.drain() == []


def test_shed_expired_removes_dead_queries_from_the_front(query: NewQuery) -> None:
    """shed_expired drops expired and cancelled queries at the front, stopping at a live one;
    a query both cancelled and past its deadline counts as expired."""
    queue = EDFQueue()
    expired = query("expired", deadline=1.0)
    cancelled = query("cancelled", deadline=2.5)
    live = query("live", deadline=3.0)
    cancelled_later = query("cancelled-later", deadline=4.0)
    cancel_all(cancelled)
    cancel_all(cancelled_later)
    for q in (live, cancelled_later, cancelled, expired):
        queue.push(q)
    expired_and_cancelled = query("both", deadline=1.5)
    cancel_all(expired_and_cancelled)
    queue.push(expired_and_cancelled)
    dropped = queue.shed_expired(now=2.0)
    assert dropped == [
        (expired, DefaultCause.DEADLINE),
        (expired_and_cancelled, DefaultCause.DEADLINE),
        (cancelled, CANCELLED),
    ]
    assert len(queue) == 2
    batch, late_drops = queue.pop_batch(10, now=2.0)
    assert batch == [live]
    assert late_drops == [(cancelled_later, CANCELLED)]


def test_shed_expired_on_a_healthy_queue_removes_nothing(query: NewQuery) -> None:
    """With nothing expired or cancelled at the front, shedding leaves the queue as it was."""
    queue = EDFQueue()
    queue.push(query(deadline=5.0))
    assert queue.shed_expired(now=1.0) == []
    assert len(queue) == 1


def test_len_counts_live_queued_queries(query: NewQuery) -> None:
    """len counts queued queries: push adds one; taking, dropping and shedding remove."""
    queue = EDFQueue()
    assert len(queue) == 0
    qs = [query(i, deadline=float(i + 1)) for i in range(5)]
    for q in qs:
        queue.push(q)
    assert len(queue) == 5
    queue.reschedule(qs[0], 10.0)
    assert len(queue) == 5
    queue.pop_batch(1, now=0.0)  # takes qs[0], still first by its earliest caller
    assert len(queue) == 4
    queue.shed_expired(now=3.0)  # qs[1] and qs[2] expired, at the front
    assert len(queue) == 2
    queue.pop_batch(10, now=4.5)  # qs[3] expired, qs[4] taken
    assert len(queue) == 0


# -- Query ---------------------------------------------------------------------------------------


def test_resolve_gives_every_waiter_the_outcome(query: NewQuery) -> None:
    """Every caller waiting on a shared query gets the same outcome."""
    q = query(deadline=1.0, waiters=3)
    q.resolve("out")
    assert [w.result() for w in q.waiters] == ["out", "out", "out"]
    assert q.state == DONE


def test_resolve_skips_cancelled_waiters(query: NewQuery) -> None:
    """A waiter that was cancelled stays cancelled; the others still get the outcome."""
    q = query(deadline=1.0, waiters=2)
    q.waiters[0].cancel()
    q.resolve(Failure(DefaultCause.DEADLINE))
    assert q.waiters[0].cancelled()
    assert q.waiters[1].result() == Failure(DefaultCause.DEADLINE)


def test_resolve_calls_on_done_exactly_once_and_second_resolve_is_a_no_op(
    query: NewQuery,
) -> None:
    """on_done runs once with the first outcome; a later resolve changes nothing."""
    calls: list[tuple[Query, Any]] = []
    q = query(deadline=1.0, waiters=1, on_done=lambda q, outcome: calls.append((q, outcome)))
    q.resolve("first")
    q.resolve("second")
    assert calls == [(q, "first")]
    assert q.waiters[0].result() == "first"


def test_resolve_with_all_waiters_cancelled_still_calls_on_done(query: NewQuery) -> None:
    """A query nobody waits for any more still reports its end (so bookkeeping is released)."""
    calls: list[Any] = []
    q = query(deadline=1.0, waiters=2, on_done=lambda q, outcome: calls.append(outcome))
    cancel_all(q)
    q.resolve("late")
    assert calls == ["late"]


def test_alive_is_true_while_any_waiter_is_pending(query: NewQuery) -> None:
    """A query is alive while some waiter is pending, and not once all are done."""
    q = query(deadline=1.0, waiters=2)
    assert q.alive()
    q.waiters[0].cancel()
    assert q.alive()
    q.waiters[1].set_result("elsewhere")
    assert not q.alive()


# -- doomed queries (lead) ----------------------------------------------------------------------
def test_pop_batch_drops_queries_that_cannot_finish_in_time(query: NewQuery) -> None:
    """With a lead (the expected batch latency), a query due before now + lead is dropped
    as would-miss and never reaches the model; those with time enough are taken."""
    queue = EDFQueue()
    tight, roomy = query("tight", deadline=1.05), query("roomy", deadline=2.0)
    queue.push(tight)
    queue.push(roomy)
    batch, dropped = queue.pop_batch(10, now=1.0, lead=0.1)
    assert batch == [roomy]
    assert dropped == [(tight, DefaultCause.WOULD_MISS)]
    assert len(queue) == 0


def test_pop_batch_runs_one_doomed_query_rather_than_none(query: NewQuery) -> None:
    """When every candidate looks doomed, the latest-due one still runs, so the latency
    estimate behind the lead keeps being measured (no livelock on a stale estimate)."""
    queue = EDFQueue()
    a, b = query("a", deadline=1.01), query("b", deadline=1.02)
    queue.push(a)
    queue.push(b)
    batch, dropped = queue.pop_batch(10, now=1.0, lead=0.5)
    assert batch == [b]
    assert dropped == [(a, DefaultCause.WOULD_MISS)]


def test_pop_batch_without_lead_keeps_every_live_query(query: NewQuery) -> None:
    """The default lead of 0 drops only what is already past its deadline."""
    queue = EDFQueue()
    q = query(deadline=1.0001)
    queue.push(q)
    assert queue.pop_batch(10, now=1.0) == ([q], [])


def test_a_queue_without_arrival_tracking_keeps_no_arrival_index(query: NewQuery) -> None:
    """Without delayed batching the queue keeps no arrival-order index (nothing per query
    beyond the heap), and asking it for the oldest arrival is a programming error."""
    queue = EDFQueue(track_arrivals=False)
    queue.push(query(deadline=1.0))
    assert queue.pop_batch(10, now=0.0)[0]
    with pytest.raises(RuntimeError):
        queue.oldest_arrival()
