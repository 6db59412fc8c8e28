"""Time: the clock type every timed component takes, the real one and a fake for tests."""

from __future__ import annotations

import time
from collections.abc import Callable

#: A clock returns monotonic seconds; tests pass a fake one.
Clock = Callable[[], float]

monotonic: Clock = time.monotonic

MICROS = 1_000_000


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
