"""Time: the clock type every timed component takes, and deadline arithmetic."""

from __future__ import annotations

import time
from collections.abc import Callable

#: A clock returns monotonic seconds; tests pass a fake one.
Clock = Callable[[], float]

monotonic: Clock = time.monotonic

MICROS = 1_000_000


def micros_to_seconds(micros: float) -> float:
    """Convert a duration in microseconds (the API's unit) to seconds (the clock's)."""
    return micros / MICROS


def deadline_after(clock: Clock, slo_micros: float) -> float:
    """The clock reading by which a query started now must be answered."""
    return clock() + slo_micros / MICROS


def remaining(clock: Clock, deadline: float) -> float:
    """Seconds left until `deadline`, never negative."""
    return max(0.0, deadline - clock())


class FakeClock:
    """A clock that moves only when told to; for stepping timed logic in tests."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self.now += seconds
