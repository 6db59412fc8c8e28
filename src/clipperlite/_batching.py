"""Per-model batching: an earliest-deadline-first queue and the replicas' pull loop.

The queue is pure (no event loop): tests step it with a fake clock. The `Batcher`
adds the async parts: waking idle replicas, delayed batching, running a batch
through a `run_batch` callable it is handed (it never imports a backend), fanning
results out, and isolating failures by retrying a failed batch in halves.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from ._aimd import BatchSizer
from ._clock import Clock
from ._types import Cause, Failure, Timed, WorkerDied

QUEUED, TAKEN, DONE = 0, 1, 2

RunBatch = Callable[[list[Any]], Awaitable[Any]]


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
    ) -> tuple[list[Query], list[tuple[Query, Cause]]]:
        """Take up to `n` live queries in EDF order; also return those dropped on the way.

        A query whose deadline has passed, or that nobody waits for any more, is
        dropped (with its cause) and never reaches the model; so is one that cannot
        finish by its deadline even if its batch starts now (`lead`: the expected
        batch latency), unless that would leave the batch empty: one such query still
        runs, so the latency estimate behind `lead` keeps being measured.
        """
        heap = self._heap
        batch: list[Query] = []
        dropped: list[tuple[Query, Cause]] = []
        doomed: list[Query] = []
        while heap and len(batch) < n:
            _deadline, seq, q = heapq.heappop(heap)
            if q.seq != seq or q.state != QUEUED:
                continue
            q.state = TAKEN
            self._live -= 1
            if q.deadline <= now:
                dropped.append((q, Cause.DEADLINE))
            elif not q.alive():
                dropped.append((q, Cause.CANCELLED))
            elif q.deadline <= now + lead:
                doomed.append(q)
            else:
                batch.append(q)
        if doomed:
            if not batch:
                batch.append(doomed.pop())
            dropped.extend((q, Cause.WOULD_MISS) for q in doomed)
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

    def shed_expired(self, now: float) -> list[tuple[Query, Cause]]:
        """Remove queries from the front of the queue that are past their deadline or have
        no waiter left (O(k log n) for k removed; cancelled queries deeper in are left)."""
        heap = self._heap
        dropped: list[tuple[Query, Cause]] = []
        while heap:
            _deadline, seq, q = heap[0]
            if q.seq != seq or q.state != QUEUED:
                heapq.heappop(heap)
                continue
            if q.deadline <= now:
                dropped.append((q, Cause.DEADLINE))
            elif not q.alive():
                dropped.append((q, Cause.CANCELLED))
            else:
                break
            heapq.heappop(heap)
            q.state = TAKEN
            self._live -= 1
        self._trim()
        return dropped


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class BatcherStats:
    """Counters a batcher keeps (read by the model's `statistics()`)."""

    __slots__ = (
        "batches",
        "cancelled",
        "errors",
        "expired",
        "items",
        "latency_ewma",
        "rejected",
        "retries",
        "would_miss",
    )

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self.errors = 0
        self.retries = 0
        self.expired = 0
        self.cancelled = 0
        self.rejected = 0
        self.would_miss = 0
        self.latency_ewma = 0.0


class ReplicaSlot:
    """A replica's place in the pull loop: its `run_batch` and whether it should stop."""

    __slots__ = ("batch", "busy_since", "name", "run_batch", "stopping")

    def __init__(self, run_batch: RunBatch, name: str) -> None:
        self.run_batch = run_batch
        self.stopping = False
        self.name = name
        #: The batch now running on this replica, and since when (clock time).
        self.batch: list[Query] | None = None
        self.busy_since = 0.0


class Batcher:
    """Feeds one model version's replicas from its EDF queue, one batch per replica at a time."""

    def __init__(
        self,
        sizer: BatchSizer,
        *,
        batch_wait: float = 0.0,
        max_queue: int = 10_000,
        clock: Clock,
        describe: str = "model",
    ) -> None:
        self.sizer = sizer
        self.batch_wait = batch_wait
        self.max_queue = max_queue
        self.clock = clock
        self.describe = describe
        self.queue = EDFQueue(track_arrivals=batch_wait > 0)
        self.stats = BatcherStats()
        self.replicas: list[ReplicaSlot] = []
        self._idle: deque[asyncio.Future[None]] = deque()
        self._filling: list[asyncio.Future[None]] = []
        self._running: set[tuple[Query, ...]] = set()
        self.closed = False

    # -- admission -----------------------------------------------------------------
    @property
    def active_replicas(self) -> int:
        return len(self.replicas)

    def submit(self, q: Query) -> Failure | None:
        """Queue a query, or say why it cannot be (no replica, queue full, closing)."""
        if self.closed:
            return Failure(Cause.SHUTDOWN, "is shutting down")
        if not self.replicas:
            return Failure(Cause.NO_REPLICA, "has no running replica")
        queue = self.queue
        if len(queue) >= self.max_queue:
            self._shed(queue.shed_expired(self.clock()))
            if len(queue) >= self.max_queue:
                self.stats.rejected += 1
                return Failure(Cause.QUEUE_FULL, f"has a full queue (max_queue={self.max_queue})")
        ewma = self.stats.latency_ewma
        if ewma and len(queue) >= self.sizer.max_batch:
            failure = self._admit(q, ewma)
            if failure is not None:
                return failure
        queue.push(q)
        if self._idle:
            _set_none(self._idle.popleft())
        if self._filling and len(queue) >= self.sizer.max_batch:
            for f in self._filling:
                _set_none(f)
            self._filling.clear()
        return None

    def _admit(self, q: Query, batch_latency: float) -> Failure | None:
        """Refuse a query that cannot make its deadline: the full batches queued ahead of
        it (by EDF) and its own take about a batch latency each. Optimistic (the batch
        now running is not counted), and the batches ahead keep the estimate fresh."""
        queue = self.queue
        left = q.deadline - self.clock()
        per_batch = self.sizer.max_batch * max(1, len(self.replicas))
        # Its own batch takes a batch latency too, so it misses if this many or more are
        # served before it.
        limit = int(max(0.0, left) / batch_latency) * per_batch
        if len(queue) < limit:
            return None
        ahead = queue.count_ahead(q.deadline, limit)
        if ahead < limit:
            return None
        self.stats.would_miss += 1
        wait = (ahead // per_batch + 1) * batch_latency
        return Failure(
            Cause.WOULD_MISS,
            f"could not meet its deadline: {ahead}+ queries are queued ahead, an expected"
            f" {wait * 1e3:.1f} ms to answer against {max(0.0, left) * 1e3:.1f} ms left",
        )

    def _shed(self, dropped: Sequence[tuple[Query, Cause]]) -> None:
        for q, cause in dropped:
            if cause is Cause.DEADLINE:
                self.stats.expired += 1
                q.resolve(Failure(Cause.DEADLINE, "did not answer before the deadline"))
            elif cause is Cause.WOULD_MISS:
                self.stats.would_miss += 1
                q.resolve(
                    Failure(
                        Cause.WOULD_MISS,
                        "could not meet its deadline: a batch takes about"
                        f" {self.stats.latency_ewma * 1e3:.1f} ms, more than it had left",
                    )
                )
            else:
                self.stats.cancelled += 1
                q.resolve(Failure(Cause.CANCELLED, "query was cancelled by its caller"))

    # -- the pull loop ---------------------------------------------------------------
    async def serve(self, slot: ReplicaSlot) -> None:
        """Run batches on one replica until it is told to stop or the batcher closes."""
        loop = asyncio.get_running_loop()
        queue = self.queue
        while not slot.stopping and not self.closed:
            if not len(queue):
                fut = loop.create_future()
                self._idle.append(fut)
                try:
                    await fut
                finally:
                    if fut in self._idle:
                        self._idle.remove(fut)
                continue
            n = self.sizer.max_batch
            if self.batch_wait > 0 and len(queue) < n:
                oldest = queue.oldest_arrival()
                wake_at = (oldest if oldest is not None else self.clock()) + self.batch_wait
                delay = wake_at - self.clock()
                if delay > 0:
                    fut = loop.create_future()
                    self._filling.append(fut)
                    handle = loop.call_later(delay, _set_none, fut)
                    try:
                        await fut
                    finally:
                        handle.cancel()
                        if fut in self._filling:
                            self._filling.remove(fut)
                    if slot.stopping or self.closed:
                        break
                    n = self.sizer.max_batch
            batch, dropped = queue.pop_batch(n, self.clock(), self.stats.latency_ewma)
            if dropped:
                self._shed(dropped)
            if batch:
                slot.batch = batch
                slot.busy_since = self.clock()
                try:
                    await self._run(slot.run_batch, batch)
                finally:
                    slot.batch = None

    def wake_all(self) -> None:
        """Wake every idle or waiting replica (to notice a stop, or a change of size)."""
        for f in list(self._idle) + self._filling:
            _set_none(f)
        self._idle.clear()
        self._filling.clear()

    async def _call(
        self, run_batch: RunBatch, batch: list[Query]
    ) -> tuple[list[Any] | None, Failure | None, float]:
        t0 = self.clock()
        try:
            raw = await run_batch([q.x for q in batch])
        except WorkerDied as exc:
            return None, Failure(Cause.WORKER_DIED, f"worker died: {exc}"), self.clock() - t0
        except Exception as exc:
            return (
                None,
                Failure(Cause.MODEL_ERROR, f"raised {type(exc).__name__}: {exc}"),
                self.clock() - t0,
            )
        latency = self.clock() - t0
        if isinstance(raw, Timed):
            raw, latency = raw.outputs, raw.seconds
        n = len(batch)
        if isinstance(raw, np.ndarray) and raw.ndim >= 1:
            outputs: Any = raw.tolist() if raw.ndim == 1 else list(raw)
        elif isinstance(raw, list | tuple):
            outputs = raw
        else:
            return (
                None,
                Failure(
                    Cause.WRONG_LENGTH, f"returned {type(raw).__name__}, not a list of {n} outputs"
                ),
                latency,
            )
        if len(outputs) != n:
            return (
                None,
                Failure(Cause.WRONG_LENGTH, f"returned {len(outputs)} outputs for a batch of {n}"),
                latency,
            )
        return list(outputs), None, latency

    async def _run(self, run_batch: RunBatch, batch: list[Query]) -> None:
        key = tuple(batch)
        self._running.add(key)
        try:
            await self._run_inner(run_batch, batch)
        except BaseException:
            for q in batch:  # cancelled mid-batch (a stop): nobody may be left hanging
                q.resolve(Failure(Cause.SHUTDOWN, "was stopped while running this query"))
            raise
        finally:
            self._running.discard(key)

    async def _run_inner(self, run_batch: RunBatch, batch: list[Query]) -> None:
        outputs, failure, latency = await self._call(run_batch, batch)
        stats = self.stats
        stats.batches += 1
        stats.items += len(batch)
        if failure is None:
            assert outputs is not None
            ewma = stats.latency_ewma
            # One stall (a garbage collection) must not make many queries look doomed.
            stats.latency_ewma = latency if not ewma else 0.8 * ewma + 0.2 * min(latency, 4 * ewma)
            # AIMD grows only on a full batch; any batch at or over budget shrinks it.
            self.sizer.observe(len(batch), latency)
            for q, out in zip(batch, outputs, strict=True):
                q.resolve(out)
            return
        stats.errors += 1
        if len(batch) > 1:
            await self._isolate(run_batch, batch, failure, latency)
        else:
            batch[0].resolve(failure)

    async def _isolate(
        self, run_batch: RunBatch, batch: list[Query], failure: Failure, latency: float
    ) -> None:
        """Retry a failed batch in halves while deadlines allow, so one bad input fails alone."""
        parts = [batch]
        while parts:
            part = parts.pop()
            if len(part) > 1:
                mid = len(part) // 2
                halves = [part[:mid], part[mid:]]
            else:
                halves = []
            for half in halves:
                now = self.clock()
                live = []
                for q in half:
                    if q.state == DONE:
                        continue
                    if not q.alive():
                        self.stats.cancelled += 1
                        q.resolve(Failure(Cause.CANCELLED, "query was cancelled by its caller"))
                    elif q.deadline <= now + latency:
                        q.resolve(failure)
                    else:
                        live.append(q)
                if not live:
                    continue
                self.stats.retries += 1
                outputs, sub_failure, sub_latency = await self._call(run_batch, live)
                if sub_failure is None:
                    assert outputs is not None
                    for q, out in zip(live, outputs, strict=True):
                        q.resolve(out)
                elif len(live) == 1:
                    live[0].resolve(sub_failure)
                else:
                    latency = sub_latency
                    failure = sub_failure
                    parts.append(live)
        for q in batch:
            q.resolve(failure)  # anything not settled above (a no-op for the rest)

    # -- shutdown and scale-down ------------------------------------------------------
    def fail_queued(self, failure: Failure) -> int:
        """Resolve every queued query with `failure`; return how many."""
        queued = self.queue.drain()
        for q in queued:
            q.resolve(failure)
        return len(queued)

    def fail_running(self, failure: Failure) -> int:
        """Resolve every query of the batches now running with `failure`."""
        count = 0
        for batch in list(self._running):
            for q in batch:
                if q.state != DONE:
                    q.resolve(failure)
                    count += 1
        return count

    def close(self) -> None:
        """Refuse new queries and wake every replica so its loop can end."""
        self.closed = True
        self.wake_all()
