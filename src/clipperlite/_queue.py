"""The queue of one model version: `Query` records in earliest-deadline-first order.

Pure logic (no event loop, no clock of its own): tests step it with plain numbers.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from ._types import CANCELLED, DefaultCause, _Dropped, detached

QUEUED, TAKEN, DONE = 0, 1, 2


class Query:
    """One input waiting for a model, and the futures of everyone waiting for its output.

    Identical concurrent queries share one `Query` (single flight): each caller has a
    future of its own, so one caller's cancellation never touches another's. The first
    caller's is `waiter`; joiners' (rare) are in `others`, a list made only for them,
    so a query that nobody joins keeps one object fewer alive for the garbage collector.
    """

    __slots__ = (
        "arrival",
        "deadline",
        "due",
        "key",
        "on_done",
        "others",
        "priority",
        "seq",
        "state",
        "waiter",
        "x",
    )

    def __init__(
        self,
        x: Any,
        deadline: float,
        arrival: float,
        on_done: Callable[[Query, Any], None] | None = None,
        key: Any = None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> None:
        self.x = x
        self.key = key
        #: The latest deadline of its callers (past it, nobody can use the output) ...
        self.deadline = deadline
        #: ... and the earliest, which orders it in the queue; `due` is its first caller's.
        self.priority = self.due = deadline
        self.arrival = arrival
        self.waiter = waiter
        self.others: list[asyncio.Future[Any]] | None = None
        self.seq = 0
        self.state = QUEUED
        self.on_done = on_done

    def add_waiter(self, fut: asyncio.Future[Any]) -> None:
        """Add a caller's future (the first becomes `waiter`, the rest join `others`)."""
        if self.waiter is None:
            self.waiter = fut
        elif self.others is None:
            self.others = [fut]
        else:
            self.others.append(fut)

    @property
    def waiters(self) -> list[asyncio.Future[Any]]:
        """Every caller's future, the first caller's first."""
        first = [] if self.waiter is None else [self.waiter]
        return first if self.others is None else first + self.others

    def alive(self) -> bool:
        """Whether anyone still waits for this query's output."""
        w = self.waiter
        if w is not None and not w.done():
            return True
        if self.others is not None:
            for w in self.others:
                if not w.done():
                    return True
        return False

    def resolve(self, outcome: Any) -> None:
        """Hand `outcome` (an output or a `Failure`) to every waiter, exactly once."""
        if self.state == DONE:
            return
        self.state = DONE
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(outcome)
        if self.others is not None:
            for w in self.others:  # joiners: each its own copy of a mutable output
                if not w.done():
                    w.set_result(detached(outcome))
        if self.on_done is not None:
            self.on_done(self, outcome)

    def __repr__(self) -> str:
        return (
            f"<Query deadline={self.deadline:.6f} state={self.state} waiters={len(self.waiters)}>"
        )


#: `Query.seq` of a query that lives in the in-order lane (not in the heap).
_IN_LANE = -1
#: Consumed lane slots kept before the lane list is compacted.
_LANE_COMPACT = 1024


class EDFQueue:
    """Queries in earliest-deadline-first order, first-in first-out on equal deadlines.

    Two lanes, merged at their heads: queries pushed in deadline order (every query of
    an app with one SLO, the common case) are appended to a plain list, with no heap
    entry and no tuple per query; a query due before the last one appended goes to a
    heap of (deadline, seq, query). Entries are removed lazily: a query taken,
    resolved or re-scheduled leaves a stale entry that is skipped when it surfaces.
    """

    __slots__ = ("_fifo", "_head", "_heap", "_lane", "_live", "_seq", "_tail")

    def __init__(self, *, track_arrivals: bool = True) -> None:
        self._heap: list[tuple[float, int, Query]] = []
        self._lane: list[Query] = []
        self._head = 0
        #: The latest deadline appended to the lane (every live heap entry is earlier).
        self._tail = -math.inf
        #: Queries in arrival order, for `oldest_arrival` (delayed batching only needs it).
        self._fifo: deque[Query] | None = deque() if track_arrivals else None
        self._live = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._live

    def push(self, q: Query) -> None:
        """Add a query."""
        q.state = QUEUED
        deadline = q.priority = q.deadline
        if not self._live:  # nothing live is left in either lane: start afresh
            if self._head:
                self._lane.clear()
                self._head = 0
            self._heap.clear()
            self._tail = -math.inf
        if deadline >= self._tail:
            q.seq = _IN_LANE
            self._lane.append(q)
            self._tail = deadline
        else:
            q.seq = seq = next(self._seq)
            heapq.heappush(self._heap, (deadline, seq, q))
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
            q.seq = seq = next(self._seq)  # its lane entry, if any, is stale now
            heapq.heappush(self._heap, (deadline, seq, q))

    def _front(self) -> Query | None:
        """The live query EDF serves next (not taken), dropping stale entries on the way."""
        heap = self._heap
        while heap:
            _, seq, hq = heap[0]
            if hq.seq == seq and hq.state == QUEUED:
                break
            heapq.heappop(heap)
        lane, h = self._lane, self._head
        end = len(lane)
        while h < end:
            lq = lane[h]
            if lq.seq == _IN_LANE and lq.state == QUEUED:
                break
            h += 1
        if h > _LANE_COMPACT and 2 * h > end:
            del lane[:h]
            h = 0
            end = len(lane)
        self._head = h
        if heap and (h >= end or heap[0][0] < lane[h].priority):
            return heap[0][2]
        return lane[h] if h < end else None

    def _take(self, q: Query) -> None:
        """Remove `q`, the front that `_front` returned."""
        if q.seq == _IN_LANE:
            self._head += 1
        else:
            heapq.heappop(self._heap)
        q.state = TAKEN
        self._live -= 1

    def _take_up_to(self, k: int) -> list[Query]:
        """Take up to k live queries in EDF order (a tight loop over the in-order lane
        when the heap is empty, the common case)."""
        taken: list[Query] = []
        if self._heap:
            front, take = self._front, self._take
            while len(taken) < k and (q := front()) is not None:
                take(q)
                taken.append(q)
            return taken
        lane, h = self._lane, self._head
        end = len(lane)
        while h < end and len(taken) < k:
            q = lane[h]
            h += 1
            if q.seq == _IN_LANE and q.state == QUEUED:
                q.state = TAKEN
                taken.append(q)
        self._live -= len(taken)
        if h > _LANE_COMPACT and 2 * h > end:
            del lane[:h]
            h = 0
        self._head = h
        return taken

    def count_ahead(self, deadline: float, stop: int) -> int:
        """About how many queued queries EDF serves before one due at `deadline`, counting
        no further than `stop`: O(1) when it would be appended to the in-order lane (all
        queued are ahead), else a bisection of that lane plus a walk of the heap's nodes
        due by then (stale entries may be counted: an estimate)."""
        if deadline >= self._tail:
            return min(self._live, stop)
        lane = self._lane
        count = bisect.bisect_right(lane, deadline, lo=self._head, key=_priority) - self._head
        heap = self._heap
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
        return min(count, stop)

    def earliest_deadline(self) -> float | None:
        """The earliest deadline (of its earliest caller) queued, or None when empty."""
        q = self._front()
        return q.priority if q is not None else None

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
        batch: list[Query] = []
        dropped: list[tuple[Query, DefaultCause | _Dropped]] = []
        doomed: list[Query] = []
        soon = now + lead
        while len(batch) < n and self._live:
            taken = self._take_up_to(n - len(batch))
            if not taken:
                break
            for q in taken:
                if q.deadline <= now:
                    dropped.append((q, DefaultCause.DEADLINE))
                elif not q.alive():
                    dropped.append((q, CANCELLED))
                elif q.deadline <= soon:
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
        while (q := self._front()) is not None:
            self._take(q)
            out.append(q)
        self._live = 0
        self._lane.clear()
        self._head = 0
        self._heap.clear()
        if self._fifo is not None:
            self._fifo.clear()
        return out

    def shed_expired(self, now: float) -> list[tuple[Query, DefaultCause | _Dropped]]:
        """Remove queries from the front of the queue that are past their deadline or have
        no waiter left (O(k) for k removed; cancelled queries deeper in are left)."""
        dropped: list[tuple[Query, DefaultCause | _Dropped]] = []
        while (q := self._front()) is not None:
            if q.deadline <= now:
                dropped.append((q, DefaultCause.DEADLINE))
            elif not q.alive():
                dropped.append((q, CANCELLED))
            else:
                break
            self._take(q)
        self._trim()
        return dropped

    def expire(self, now: float) -> list[tuple[Query, DefaultCause | _Dropped]]:
        """What the queue's deadline timer does at `now`: remove every query at the front
        whose earliest caller is due (expired or without a waiter); a query that a later
        caller keeps alive moves back to that caller's deadline (its earlier callers have
        timers of their own). Returns those removed; `earliest_deadline()` is when to
        come back."""
        dropped: list[tuple[Query, DefaultCause | _Dropped]] = []
        while (q := self._front()) is not None and q.priority <= now:
            if q.deadline <= now:
                dropped.append((q, DefaultCause.DEADLINE))
            elif not q.alive():
                dropped.append((q, CANCELLED))
            else:
                self._take(q)
                self._live += 1
                q.state = QUEUED
                q.priority = q.deadline
                q.seq = seq = next(self._seq)
                heapq.heappush(self._heap, (q.deadline, seq, q))
                continue
            self._take(q)
        self._trim()
        return dropped


def _priority(q: Query) -> float:
    return q.priority
