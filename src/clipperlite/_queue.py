"""The queue of one model version: `Query` records in earliest-deadline-first order.

Pure logic (no event loop, no clock of its own): tests step it with plain numbers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from ._types import CANCELLED, DefaultCause, _Dropped

QUEUED, TAKEN, DONE = 0, 1, 2


class Query:
    """One input waiting for a model, and the futures of everyone waiting for its output.

    Identical concurrent queries share one `Query` (single flight): each caller adds
    its own future to `waiters`, so one caller's cancellation never touches another's.
    """

    __slots__ = (
        "arrival",
        "deadline",
        "key",
        "on_done",
        "priority",
        "seq",
        "state",
        "waiters",
        "x",
    )

    def __init__(
        self,
        x: Any,
        deadline: float,
        arrival: float,
        on_done: Callable[[Query, Any], None] | None = None,
        key: Any = None,
    ) -> None:
        self.x = x
        self.key = key
        #: The latest deadline of its callers (past it, nobody can use the output) ...
        self.deadline = deadline
        #: ... and the earliest, which orders it in the queue.
        self.priority = deadline
        self.arrival = arrival
        self.waiters: list[asyncio.Future[Any]] = []
        self.seq = 0
        self.state = QUEUED
        self.on_done = on_done

    def alive(self) -> bool:
        """Whether anyone still waits for this query's output."""
        for w in self.waiters:
            if not w.done():
                return True
        return False

    def resolve(self, outcome: Any) -> None:
        """Hand `outcome` (an output or a `Failure`) to every waiter, exactly once."""
        if self.state == DONE:
            return
        self.state = DONE
        for w in self.waiters:
            if not w.done():
                w.set_result(outcome)
        if self.on_done is not None:
            self.on_done(self, outcome)

    def __repr__(self) -> str:
        return (
            f"<Query deadline={self.deadline:.6f} state={self.state} waiters={len(self.waiters)}>"
        )


class EDFQueue:
    """Queries in earliest-deadline-first order, first-in first-out on equal deadlines.

    Entries are removed lazily: a query taken, resolved or re-scheduled leaves a stale
    heap entry that is skipped when it surfaces.
    """

    __slots__ = ("_fifo", "_heap", "_live", "_seq")

    def __init__(self, *, track_arrivals: bool = True) -> None:
        self._heap: list[tuple[float, int, Query]] = []
        #: Queries in arrival order, for `oldest_arrival` (delayed batching only needs it).
        self._fifo: deque[Query] | None = deque() if track_arrivals else None
        self._live = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._live

    def push(self, q: Query) -> None:
        """Add a query."""
        q.seq = seq = next(self._seq)
        q.state = QUEUED
        q.priority = q.deadline
        heapq.heappush(self._heap, (q.deadline, seq, q))
        if self._fifo is not None:
            self._fifo.append(q)
        self._live += 1

    def reschedule(self, q: Query, deadline: float) -> None:
        """A caller with `deadline` joined a queued query: it now lives until the latest of
        its callers' deadlines and is served by the earliest."""
        if q.state != QUEUED:
            return
        if deadline > q.deadline:
            q.deadline = deadline
        if deadline < q.priority:
            q.priority = deadline
            q.seq = seq = next(self._seq)
            heapq.heappush(self._heap, (deadline, seq, q))

    def count_ahead(self, deadline: float, stop: int) -> int:
        """How many queued queries EDF serves before one due at `deadline`, counting no
        further than `stop` (O(stop): it walks only the heap nodes due by then)."""
        heap = self._heap
        count = 0
        todo = [0] if heap else []
        while todo and count < stop:
            i = todo.pop()
            due, seq, q = heap[i]
            if due > deadline:
                continue  # nor is anything below it
            if q.seq == seq and q.state == QUEUED:
                count += 1
            child = 2 * i + 1
            if child < len(heap):
                todo.append(child)
                if child + 1 < len(heap):
                    todo.append(child + 1)
        return count

    def earliest_deadline(self) -> float | None:
        """The earliest deadline queued (possibly of a query already gone: an estimate)."""
        return self._heap[0][0] if self._heap else None

    def oldest_arrival(self) -> float | None:
        """Arrival time of the oldest query still queued."""
        self._trim()
        if self._fifo is None:
            raise RuntimeError("this queue does not track arrivals")
        return self._fifo[0].arrival if self._fifo else None

    def pop_batch(
        self, n: int, now: float, lead: float = 0.0
    ) -> tuple[list[Query], list[tuple[Query, DefaultCause | _Dropped]]]:
        """Take up to `n` live queries in EDF order; also return those dropped on the way.

        A query whose deadline has passed, or that nobody waits for any more, is
        dropped (with its cause) and never reaches the model; so is one that cannot
        finish by its deadline even if its batch starts now (`lead`: the expected
        batch latency), unless that would leave the batch empty: one such query still
        runs, so the latency estimate behind `lead` keeps being measured.
        """
        heap = self._heap
        batch: list[Query] = []
        dropped: list[tuple[Query, DefaultCause | _Dropped]] = []
        doomed: list[Query] = []
        while heap and len(batch) < n:
            _deadline, seq, q = heapq.heappop(heap)
            if q.seq != seq or q.state != QUEUED:
                continue
            q.state = TAKEN
            self._live -= 1
            if q.deadline <= now:
                dropped.append((q, DefaultCause.DEADLINE))
            elif not q.alive():
                dropped.append((q, CANCELLED))
            elif q.deadline <= now + lead:
                doomed.append(q)
            else:
                batch.append(q)
        if doomed:
            if not batch:
                batch.append(doomed.pop())
            dropped.extend((q, DefaultCause.WOULD_MISS) for q in doomed)
        self._trim()
        return batch, dropped

    def _trim(self) -> None:
        fifo = self._fifo
        while fifo and fifo[0].state != QUEUED:
            fifo.popleft()

    def drain(self) -> list[Query]:
        """Take every queued query, in EDF order."""
        out = []
        while self._heap:
            _, seq, q = heapq.heappop(self._heap)
            if q.seq == seq and q.state == QUEUED:
                q.state = TAKEN
                out.append(q)
        self._live = 0
        if self._fifo is not None:
            self._fifo.clear()
        return out

    def shed_expired(self, now: float) -> list[tuple[Query, DefaultCause | _Dropped]]:
        """Remove queries from the front of the queue that are past their deadline or have
        no waiter left (O(k log n) for k removed; cancelled queries deeper in are left)."""
        heap = self._heap
        dropped: list[tuple[Query, DefaultCause | _Dropped]] = []
        while heap:
            _deadline, seq, q = heap[0]
            if q.seq != seq or q.state != QUEUED:
                heapq.heappop(heap)
                continue
            if q.deadline <= now:
                dropped.append((q, DefaultCause.DEADLINE))
            elif not q.alive():
                dropped.append((q, CANCELLED))
            else:
                break
            heapq.heappop(heap)
            q.state = TAKEN
            self._live -= 1
        self._trim()
        return dropped
