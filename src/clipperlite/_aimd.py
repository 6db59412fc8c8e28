"""Batch sizing: the NSDI'17 AIMD controller, and a fixed size for `batch_size=N`."""

from __future__ import annotations

import math
from typing import Protocol


class BatchSizer(Protocol):
    """Decides how many queries a replica may take next, learning from batch latencies."""

    @property
    def max_batch(self) -> int:
        """The largest batch a replica may take now."""
        ...

    def observe(self, n: int, latency: float) -> int:
        """Record that a batch of `n` took `latency` seconds; return the new `max_batch`."""
        ...


class AIMD:
    """Additive increase, multiplicative decrease of the batch size against a latency budget.

    With budget B and a batch of n that took L seconds (Clipper, NSDI'17, section 4.3):

    - a full batch (n >= max_batch) with L < 0.9 B grows the limit to n + 2;
    - 0.9 B <= L < B holds it (the hold band stops oscillation around B);
    - L >= B backs off to max(1, floor(0.9 n)).
    """

    __slots__ = ("_backoff", "_budget", "_ceiling", "_hold", "_max_batch", "_step")

    def __init__(
        self,
        budget: float,
        *,
        initial: int = 1,
        step: int = 2,
        backoff: float = 0.9,
        hold: float = 0.9,
        ceiling: int = 100_000,
    ) -> None:
        if not budget > 0:
            raise ValueError(f"AIMD budget must be positive seconds, got {budget!r}")
        if initial < 1 or ceiling < 1:
            raise ValueError("AIMD batch sizes start at 1 or more")
        if not 0 < backoff < 1 or not 0 < hold <= 1 or step < 1:
            raise ValueError("AIMD needs step >= 1, 0 < backoff < 1 and 0 < hold <= 1")
        self._budget = budget
        self._hold = hold
        self._max_batch = min(initial, ceiling)
        self._step = step
        self._backoff = backoff
        self._ceiling = ceiling

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def budget(self) -> float:
        """The latency budget B, in seconds."""
        return self._budget

    @budget.setter
    def budget(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"AIMD budget must be positive seconds, got {value!r}")
        self._budget = value

    def observe(self, n: int, latency: float) -> int:
        if n < 1:
            return self._max_batch
        if latency >= self._budget:
            self._max_batch = min(self._ceiling, max(1, math.floor(self._backoff * n)))
        elif latency < self._hold * self._budget and n >= self._max_batch:
            self._max_batch = min(self._ceiling, n + self._step)
        return self._max_batch

    def __repr__(self) -> str:
        return f"AIMD(budget={self._budget!r}, max_batch={self._max_batch})"


class FixedBatchSize:
    """A batch size that never changes (`batch_size=N`)."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive int, got {size!r}")
        self._size = size

    @property
    def max_batch(self) -> int:
        return self._size

    def observe(self, n: int, latency: float) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"FixedBatchSize({self._size})"
