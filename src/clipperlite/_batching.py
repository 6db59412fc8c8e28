"""The replicas' pull loop over one model version's queue: the `Batcher`.

It wakes idle replicas, delays a short batch when asked to, runs a batch through a
`run_batch` callable it is handed (it never imports a backend), fans results out,
isolates failures by retrying a failed batch in halves, and records each batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from . import _defaults
from ._aimd import BatchSizer
from ._clock import Clock
from ._errors import WorkerDiedError, describe
from ._queue import DONE, EDFQueue, Query
from ._stats import LatencyHistogram, SizeHistogram
from ._types import CANCELLED, BatchRecord, BatchResult, DefaultCause, Failure, _Dropped

#: The event loop's timers fire about this late (PERFORMANCE.md): a wait that must end
#: by a deadline ends this much earlier.
_TIMER_RESOLUTION_S = 0.001

#: Added to the explanation of a TypeError or AttributeError raised on a whole batch: the
#: usual cause is a model written for one input.
_PER_ITEM_HINT = (
    "hint: func receives a list of inputs and returns a list of outputs;"
    " a model written for one input fails like this"
)

logger = logging.getLogger("clipperlite")

RunBatch = Callable[[list[Any]], Awaitable[Any]]

# Constant failure records: a refusal or a drop allocates nothing.
_SHUTTING_DOWN = Failure(DefaultCause.SHUTDOWN, "is shutting down")
_NO_REPLICA = Failure(DefaultCause.NO_REPLICA, "has no running replica")
_WOULD_MISS = Failure(
    DefaultCause.WOULD_MISS,
    "could not meet its deadline: the queries queued ahead of it take longer than it has left",
)
_DOOMED = Failure(
    DefaultCause.WOULD_MISS,
    "could not meet its deadline: its batch would take longer than it had left",
)
_EXPIRED = Failure(DefaultCause.DEADLINE, "did not answer before the deadline")
_LATE = Failure(DefaultCause.DEADLINE, "did not answer within the deadline")
_CANCELLED = Failure(CANCELLED, "query was cancelled by its caller")
_STOPPED = Failure(DefaultCause.SHUTDOWN, "was stopped while running this query")


def _cancelled_here() -> bool:
    """Whether the running task was asked to cancel, so a CancelledError is its own.
    Python 3.10 cannot tell (no `Task.cancelling`): there every CancelledError is."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


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
        "latency_histogram",
        "rejected",
        "retries",
        "size_histogram",
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
        #: Batch latencies (µs) and sizes, for `statistics()`.
        self.latency_histogram = LatencyHistogram()
        self.size_histogram = SizeHistogram()


class ReplicaSlot:
    """A replica's place in the pull loop: its `run_batch` and whether it should stop."""

    __slots__ = ("batch", "name", "run_batch", "stopping")

    def __init__(self, run_batch: RunBatch, name: str) -> None:
        self.run_batch = run_batch
        self.stopping = False
        self.name = name
        #: The batch now running on this replica (the watchdog reads its deadlines).
        self.batch: list[Query] | None = None


class Batcher:
    """Feeds one model version's replicas from its EDF queue, one batch per replica at a time."""

    def __init__(
        self,
        sizer: BatchSizer,
        *,
        batch_wait: float = 0.0,
        max_queue: int = 10_000,
        clock: Clock,
        history_size: int = 1000,
        label: str = "?",
    ) -> None:
        #: The model version it serves, for the log ("name:version").
        self.label = label
        self._next_log = -math.inf
        self._suppressed = 0
        self.sizer = sizer
        self.batch_wait = batch_wait
        self.max_queue = max_queue
        self.clock = clock
        #: The last `history_size` batches, for `history()`.
        self.history: deque[BatchRecord] = deque(maxlen=history_size)
        self.queue = EDFQueue(track_arrivals=batch_wait > 0)
        self.stats = BatcherStats()
        self.replicas: list[ReplicaSlot] = []
        self._idle: deque[asyncio.Future[None]] = deque()
        self._filling: list[asyncio.Future[None]] = []
        #: When the replicas waiting for a fuller batch (`_filling`) planned to wake.
        self._fill_until = math.inf
        self._running: set[tuple[Query, ...]] = set()
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The queue's deadline timer, armed for its earliest deadline.
        self._due: asyncio.TimerHandle | None = None
        self._due_at = math.inf
        self._full = Failure(DefaultCause.QUEUE_FULL, f"has a full queue (max_queue={max_queue})")
        #: The fit's latency of a full batch, refreshed after each batch (admission reads it).
        self._full_latency = 0.0

    # -- admission -----------------------------------------------------------------
    @property
    def active_replicas(self) -> int:
        """Replicas in service and not on their way out (one being replaced may linger in
        `replicas` until its successor runs, so that queries always have a replica)."""
        return sum(1 for slot in self.replicas if not slot.stopping)

    def submit(self, q: Query) -> Failure | None:
        """Queue a query, or say why it cannot be (no replica, queue full, closing)."""
        if self.closed:
            return _SHUTTING_DOWN
        if not self.replicas:
            return _NO_REPLICA
        queue = self.queue
        if len(queue) >= self.max_queue:
            self._shed(queue.shed_expired(self.clock()))
            if len(queue) >= self.max_queue:
                self.stats.rejected += 1
                return self._full
        n = self.sizer.max_batch
        if len(queue) >= n:
            # Estimated from the fit of the model's latency against batch size.
            latency = self._full_latency
            if latency > 0.0 and self._would_miss(q, n, latency):
                self.stats.would_miss += 1
                return _WOULD_MISS
        queue.push(q)
        if q.deadline < self._due_at:
            self._arm(q.deadline)
        if self._idle:
            _set_none(self._idle.popleft())
        if self._filling and (
            len(queue) >= n or q.deadline - self._lead(q.deadline - q.arrival) < self._fill_until
        ):  # a full batch, or a query that cannot wait as long as the replicas planned
            for f in self._filling:
                _set_none(f)
            self._filling.clear()
            self._fill_until = math.inf
        return None

    def _lead(self, left: float) -> float:
        """How long before a deadline `left` seconds away its batch must start: 1.5
        expected batch latencies, plus what a loop timer may fire late by (a few ms on
        a busy machine: 2 ms, or 5% of the time left if more)."""
        return 1.5 * self.stats.latency_ewma + max(2 * _TIMER_RESOLUTION_S, 0.05 * left)

    def _would_miss(self, q: Query, n: int, batch_latency: float) -> bool:
        """Whether a query cannot make its deadline: the full batches queued ahead of it
        (by EDF) and its own take about a batch latency each. Optimistic (the batch now
        running is not counted); O(1) for a query that joins the end of the queue."""
        left = q.deadline - self.clock()
        per_batch = n * max(1, len(self.replicas))
        # Its own batch takes a batch latency too, so it misses if this many or more are
        # served before it.
        limit = int(max(0.0, left) / batch_latency) * per_batch
        if len(self.queue) < limit:
            return False
        return self.queue.count_ahead(q.deadline, limit) >= limit

    # -- deadlines ---------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        """Arm the queue's one deadline timer for `when` (its earliest deadline)."""
        if self._due is not None:
            self._due.cancel()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._due_at = when
        # In the batcher's clock (the loop's in service; a test's fake clock otherwise).
        self._due = loop.call_later(when - self.clock(), self._queue_due)

    def _queue_due(self) -> None:
        """The queue's earliest deadline came: answer what expired, re-arm for the next."""
        self._due = None
        self._due_at = math.inf
        dropped = self.queue.expire(self.clock())
        if dropped:
            self._shed(dropped)
        due = self.queue.earliest_deadline()
        if due is not None and not self.closed:
            self._arm(due)

    def _shed(self, dropped: Sequence[tuple[Query, DefaultCause | _Dropped]]) -> None:
        for q, cause in dropped:
            if cause is DefaultCause.DEADLINE:
                self.stats.expired += 1
                q.resolve(_EXPIRED)
            elif cause is DefaultCause.WOULD_MISS:
                self.stats.would_miss += 1
                q.resolve(_DOOMED)
            else:
                self.stats.cancelled += 1
                q.resolve(_CANCELLED)

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
                now = self.clock()
                oldest = queue.oldest_arrival()
                wake_at = (oldest if oldest is not None else now) + self.batch_wait
                # ... but never past the time the earliest queued deadline needs its batch
                # to start (an estimate of the batch's latency and a timer's resolution).
                earliest = queue.earliest_deadline()
                if earliest is not None:
                    wake_at = min(wake_at, earliest - self._lead(earliest - now))
                delay = wake_at - now
                if delay > 0:
                    fut = loop.create_future()
                    self._filling.append(fut)
                    self._fill_until = min(self._fill_until, wake_at)
                    handle = loop.call_later(delay, _set_none, fut)
                    try:
                        await fut
                    finally:
                        handle.cancel()
                        if fut in self._filling:
                            self._filling.remove(fut)
                        if not self._filling:
                            self._fill_until = math.inf
                    if slot.stopping or self.closed:
                        break
                    n = self.sizer.max_batch
            lead = self.sizer.estimate(min(n, len(queue)))
            batch, dropped = queue.pop_batch(n, self.clock(), lead)
            if dropped:
                self._shed(dropped)
            if batch:
                slot.batch = batch
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
        except WorkerDiedError as exc:
            self._log_failure(exc, len(batch))
            return None, Failure(DefaultCause.WORKER_DIED, f"worker died: {exc}"), self.clock() - t0
        except asyncio.CancelledError as exc:
            if _cancelled_here():
                raise
            # The replica raised it (a remote call cancelled on the far side): its failure.
            self._log_failure(exc, len(batch))
            detail = "raised CancelledError, though nothing cancelled the batch"
            return None, Failure(DefaultCause.MODEL_ERROR, detail), self.clock() - t0
        except Exception as exc:
            self._log_failure(exc, len(batch))
            detail = f"raised {describe(exc)}"
            if isinstance(exc, TypeError | AttributeError):
                detail += f" ({_PER_ITEM_HINT})"
            return None, Failure(DefaultCause.MODEL_ERROR, detail), self.clock() - t0
        latency = self.clock() - t0
        if type(raw) is BatchResult:
            latency = raw.seconds
            raw = raw.outputs
        n = len(batch)
        if isinstance(raw, np.ndarray) and raw.ndim >= 1:
            outputs: Any = raw.tolist() if raw.ndim == 1 else list(raw)
        elif type(raw) is list or type(raw) is tuple:
            outputs = raw
        elif isinstance(raw, list | tuple):
            # A subclass is read for what it holds (C-level copy), so an overridden
            # __len__ or __iter__ cannot make a short list pass for a full one.
            outputs = (
                list.copy(raw) if isinstance(raw, list) else tuple.__getitem__(raw, slice(None))
            )
        else:
            return (
                None,
                Failure(
                    DefaultCause.WRONG_LENGTH,
                    f"returned {type(raw).__name__}, not a list of {n} outputs",
                ),
                latency,
            )
        if len(outputs) != n:
            return (
                None,
                Failure(
                    DefaultCause.WRONG_LENGTH, f"returned {len(outputs)} outputs for a batch of {n}"
                ),
                latency,
            )
        return list(outputs), None, latency

    def _log_failure(self, exc: BaseException, n: int) -> None:
        """Log a model's exception with its traceback at WARNING: the first, then at most
        one per `ERROR_LOG_INTERVAL_S` with the count of those left out, so a failing
        model cannot flood the log."""
        now = self.clock()
        if now < self._next_log:
            self._suppressed += 1
            return
        self._next_log = now + _defaults.ERROR_LOG_INTERVAL_S
        more = f" ({self._suppressed} more since the last one logged)" if self._suppressed else ""
        self._suppressed = 0
        logger.warning(
            "clipperlite: model %s raised %s on a batch of %d%s",
            self.label,
            type(exc).__name__,
            n,
            more,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    async def _run(self, run_batch: RunBatch, batch: list[Query]) -> None:
        key = tuple(batch)
        self._running.add(key)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        due = _BatchDue(batch, loop, self.clock)  # one timer per batch: callers answered on time
        handed_out = False
        try:
            handed_out = await self._run_inner(run_batch, batch, due, key)
        except BaseException:
            for q in batch:  # cancelled mid-batch (a stop): nobody may be left hanging
                q.resolve(_STOPPED)
            raise
        finally:
            if not handed_out:  # else `_fan_out` cancels the timer, once the callers have it
                due.cancel()
                self._running.discard(key)

    def _fan_out(
        self, batch: list[Query], outputs: list[Any], due: _BatchDue, key: tuple[Query, ...]
    ) -> None:
        """Hand each query of a batch its output (a late one is still cached)."""
        due.cancel()
        self._running.discard(key)
        for q, out in zip(batch, outputs, strict=True):
            q.resolve(out)

    async def _run_inner(
        self, run_batch: RunBatch, batch: list[Query], due: _BatchDue, key: tuple[Query, ...]
    ) -> bool:
        """Run a batch and record it. True when it succeeded: `_fan_out` then hands the
        outputs out (now, or in the loop's next round when another batch is waiting)
        and takes over the batch's deadline timer and its entry in `_running`."""
        outputs, failure, latency = await self._call(run_batch, batch)
        stats = self.stats
        n = len(batch)
        stats.batches += 1
        stats.items += n
        stats.latency_histogram.record(latency * 1e6)
        stats.size_histogram.record(n)
        if failure is None:
            assert outputs is not None
            ewma = stats.latency_ewma
            # One stall (a garbage collection) must not make many queries look doomed.
            stats.latency_ewma = latency if not ewma else 0.8 * ewma + 0.2 * min(latency, 4 * ewma)
            sizer = self.sizer
            sizer.observe(n, latency, len(self.queue))
            self._full_latency = sizer.estimate(sizer.max_batch)
            self.history.append(
                BatchRecord(self.clock(), n, latency, self.sizer.max_batch, len(self.queue), False)
            )
            if len(self.queue):
                # A next batch is waiting: start it first, and answer these callers in
                # the loop's next round. Resolving them here (a few µs each) would keep
                # the model idle for that long; the batch's deadline timer stays armed
                # until they are answered.
                due.loop.call_soon(self._fan_out, batch, outputs, due, key)
                return True
            self._fan_out(batch, outputs, due, key)
            return True
        stats.errors += 1
        self.history.append(
            BatchRecord(self.clock(), n, latency, self.sizer.max_batch, len(self.queue), True)
        )
        if len(batch) > 1:
            await self._isolate(run_batch, batch, failure, latency)
        else:
            batch[0].resolve(failure)
        return False

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
                        q.resolve(Failure(CANCELLED, "query was cancelled by its caller"))
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
        if self._due is not None:
            self._due.cancel()
            self._due = None
        self.wake_all()


class _BatchDue:
    """The deadline timer of one running batch: at each of its queries' deadlines, the
    callers still waiting get the deadline failure (the query runs on: its late output
    is still cached). Armed for the batch's first query (EDF: the earliest due); it
    only ever fires for a batch running past a deadline."""

    __slots__ = ("_batch", "_clock", "_handle", "loop")

    def __init__(self, batch: list[Query], loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self._batch = batch
        #: The loop its timer runs on (the batch's fan-out is scheduled there too).
        self.loop = loop
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = loop.call_later(
            batch[0].priority - clock(), self._fire
        )

    def _fire(self) -> None:
        now = self._clock()
        following = math.inf
        for q in self._batch:
            if q.state == DONE:
                continue
            if q.deadline <= now:
                for w in q.waiters:
                    if not w.done():
                        w.set_result(_LATE)
            elif q.deadline < following:
                following = q.deadline
        self._handle = (
            self.loop.call_later(following - now, self._fire) if following < math.inf else None
        )

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
