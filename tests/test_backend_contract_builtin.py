"""The backend contract (tests/backend_contract.py) against the built-in backends."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

import clipperlite
from backend_contract import BackendContract, WorkerProcessContract
from clipperlite._backends import BUILTIN_BACKENDS


class TestThreadBackendContract(BackendContract):
    """The contract, on worker threads."""

    stuck_stop_result = False  # a thread stuck in its model is abandoned

    @pytest.fixture
    def backend(self) -> clipperlite.Backend:
        """The built-in thread backend."""
        backend: clipperlite.Backend = BUILTIN_BACKENDS["thread"]()
        return backend

    def leftover_workers(self) -> int:
        """Replica threads alive (named after their replica)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith("contract:"))


class TestProcessBackendContract(BackendContract, WorkerProcessContract):
    """The contract, on worker processes."""

    stuck_stop_result = True  # a stuck worker process is killed

    @pytest.fixture
    def backend(self) -> clipperlite.Backend:
        """The built-in process backend."""
        backend: clipperlite.Backend = BUILTIN_BACKENDS["process"]()
        return backend

    def leftover_workers(self) -> int:
        """This process's live worker children."""
        me = str(os.getpid())
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1].split()
            except OSError:
                continue
            if stat[1] == me and stat[0] != "Z":
                count += 1
        return count


async def async_sleep_then_echo(xs: list[float]) -> list[float]:
    """Sleep (on the loop) as long as the largest input says, then echo."""
    await asyncio.sleep(max(xs))
    return list(xs)


_entered: set[str] = set()
_released: set[str] = set()


async def async_hang(xs: list[str]) -> list[str]:
    """Say it entered, then wait, ignoring cancellation, until the test releases it."""
    _entered.add(xs[0])
    while xs[0] not in _released:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:  # noqa: PERF203 (a model that swallows cancellation)
            continue
    return list(xs)


class TestAsyncBackendContract(BackendContract):
    """The contract on the event loop; the blocking models become `async def` ones."""

    stuck_stop_result = False  # a model swallowing cancellation is abandoned

    @pytest.fixture
    def backend(self) -> clipperlite.Backend:
        """The built-in async backend."""
        backend: clipperlite.Backend = BUILTIN_BACKENDS["async"]()
        return backend

    def leftover_workers(self) -> int:
        """Tasks of this backend's replicas still running."""
        return sum(
            1 for t in asyncio.all_tasks() if t.get_name().startswith("contract:") and not t.done()
        )

    @pytest.mark.anyio
    async def test_seconds_are_the_model_time(self, backend: clipperlite.Backend) -> None:
        """`seconds` covers the awaited model call and no more than the round trip."""
        replica = await backend.start_replica(async_sleep_then_echo, name="contract:secs")
        started = time.perf_counter()
        result = await replica.run_batch([0.05, 0.01])
        assert 0.05 <= result.seconds <= time.perf_counter() - started
        assert await replica.stop(1.0) is True

    @pytest.mark.anyio
    async def test_stop_waits_for_a_running_batch(self, backend: clipperlite.Backend) -> None:
        """A batch running when stop is called finishes within the grace period."""
        replica = await backend.start_replica(async_sleep_then_echo, name="contract:wait")
        batch = asyncio.ensure_future(replica.run_batch([0.3]))
        await asyncio.sleep(0.05)
        assert await replica.stop(10.0) is True
        assert (await batch).outputs == [0.3]

    @pytest.mark.anyio
    async def test_stop_of_a_stuck_replica(
        self, backend: clipperlite.Backend, tmp_path: Path
    ) -> None:
        """A replica whose model ignores cancellation is reported stuck, within its grace."""
        marker = str(tmp_path)
        replica = await backend.start_replica(async_hang, name="contract:stuck")
        batch = asyncio.ensure_future(replica.run_batch([marker]))
        assert await _wait_for(lambda: marker in _entered)
        started = time.perf_counter()
        result = await replica.stop(0.2)
        assert time.perf_counter() - started < 2.0
        assert result is self.stuck_stop_result
        _released.add(marker)  # let the abandoned model end, for a clean loop
        with suppress(Exception, asyncio.CancelledError):
            await batch


async def _wait_for(check: Any, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True
