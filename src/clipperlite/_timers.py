"""One timer for many deadlines: futures are given a value when their deadline passes.

A `loop.call_later` per query costs a `TimerHandle` and a heap push compared in
Python; a C heap of plain tuples with one loop timer for its earliest entry does the
same job for a fraction of that, and answered queries just leave stale entries that
are skipped when their time comes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

_COMPACT_MIN = 1024


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    """Give `fut` its value; one future that refuses (it is not ours to set, or was set
    meanwhile) must not stop the timer from settling every other one."""
    if fut.done():
        return
    try:
        fut.set_result(value)
    except (asyncio.InvalidStateError, RuntimeError):
        pass


class DeadlineTimer:
    """Sets `value` on each registered future that is still pending at its deadline."""

    __slots__ = ("_armed_at", "_compact_at", "_handle", "_heap", "_loop", "_seq")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[Any], Any]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._compact_at = _COMPACT_MIN

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, fut: asyncio.Future[Any], value: Any) -> None:
        """At `deadline` (loop time), give `fut` the result `value` unless it is done."""
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._seq), fut, value))
        if deadline < self._armed_at:
            self._arm(deadline)
        if len(heap) >= self._compact_at:
            self._compact()

    def _compact(self) -> None:
        """Drop entries whose futures are done, so answered queries (and their outputs)
        are not held until their deadlines: amortised O(1) per entry."""
        heap = [entry for entry in self._heap if not entry[2].done()]
        heapq.heapify(heap)
        self._heap = heap
        self._compact_at = max(_COMPACT_MIN, 2 * len(heap))

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            _, _, fut, value = heapq.heappop(heap)
            _settle(fut, value)
        if heap:
            self._arm(heap[0][0])

    def expire_all(self, value: Any = None) -> None:
        """Give every pending future its value now (shutdown)."""
        heap, self._heap = self._heap, []
        for _, _, fut, v in heap:
            _settle(fut, v if value is None else value)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = float("inf")

    def close(self) -> None:
        """Drop every entry and the timer."""
        self._heap.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = float("inf")


class Heartbeat:
    """How far behind the event loop is: a beat every `period` seconds records when it
    ran, so `lag(now)` is how long callbacks have been kept waiting (0 when the loop
    keeps up). A flood of queries entering in one loop iteration shows as a growing
    lag long before any timer could fire."""

    __slots__ = ("_handle", "_loop", "_period", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self._loop = loop
        self._period = period
        #: When the last beat ran (loop time).
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_later(period, self._beat)

    def _beat(self) -> None:
        self.last = self._loop.time()
        self._handle = self._loop.call_later(self._period, self._beat)

    def lag(self, now: float) -> float:
        """Seconds the loop is behind at `now` (beyond one beat period)."""
        return max(0.0, now - self.last - self._period)

    def close(self) -> None:
        """Stop beating."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
