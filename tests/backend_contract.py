"""The contract every `clipperlite.Backend` keeps, as mixins of tests (cachetools'
`CacheTestMixin` style): a backend's test module subclasses them and provides the fixtures.

    class TestMyBackend(BackendContract, WorkerProcessContract):
        stuck_stop_result = True

        @pytest.fixture
        def backend(self) -> clipperlite.Backend:
            return MyBackend()

        def leftover_workers(self) -> int:
            return ...  # this backend's workers alive now, on this machine

Only the public API is used. The models are module-level functions and classes, so a
backend that pickles its model by reference (worker processes, Ray actors) finds them
(`tests/` is on the import path under pytest's default import mode).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import clipperlite
from clipperlite import BatchResult, Replica, WorkerDiedError

_names = itertools.count()


def _name() -> str:
    return f"contract:{next(_names)}"


async def _eventually(check: Any, timeout: float = 10.0) -> bool:
    """Poll `check()` on the loop until true; say whether it was within `timeout` s."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


# -- models (module level: picklable by reference) -------------------------------------------


def double(xs: list[Any]) -> list[Any]:
    """Each input times two."""
    return [x * 2 for x in xs]


def describe(xs: list[Any]) -> list[Any]:
    """What each input arrived as: its type, shape, dtype and sum."""
    return [(type(x).__name__, x.shape, x.dtype.str, float(x.sum())) for x in xs]


def sleep_then_echo(xs: list[float]) -> list[float]:
    """Sleep as long as the largest input says (seconds), then echo."""
    time.sleep(max(xs))
    return list(xs)


def raise_on_boom(xs: list[Any]) -> list[Any]:
    """Raise ValueError when an input is "boom", else echo."""
    if "boom" in xs:
        raise ValueError("boom in the model")
    return list(xs)


def stop_iteration_on_stop(xs: list[Any]) -> list[Any]:
    """Raise StopIteration when an input is "stop" (it must not break a future)."""
    if "stop" in xs:
        raise StopIteration("the model's own StopIteration")
    return list(xs)


def system_exit_on_exit(xs: list[Any]) -> list[Any]:
    """Raise SystemExit when an input is "exit" (it must not end the replica)."""
    if "exit" in xs:
        raise SystemExit(7)
    return list(xs)


def die_on_die(xs: list[Any]) -> list[Any]:
    """End the worker process at once when an input is "die" (for isolated backends)."""
    if "die" in xs:
        os._exit(3)
    return list(xs)


def hang_after_marking(xs: list[str]) -> list[str]:
    """Create the file named by the first input, then hang (stuck in the model)."""
    Path(xs[0]).touch()
    time.sleep(30)
    return list(xs)


class SlowToLoad:
    """A model that takes `delay` seconds to unpickle (a worker loading weights)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __getstate__(self) -> dict[str, float]:
        return {"delay": self.delay}

    def __setstate__(self, state: dict[str, float]) -> None:
        time.sleep(state["delay"])
        self.delay = state["delay"]

    def __call__(self, xs: list[Any]) -> list[Any]:
        return list(xs)


class FailsToLoad:
    """A model whose unpickling raises in the worker (missing weights)."""

    def __getstate__(self) -> dict[str, str]:
        return {"weights": "/nonexistent/weights.bin"}

    def __setstate__(self, state: dict[str, str]) -> None:
        raise FileNotFoundError(f"cannot load the weights at {state['weights']}")

    def __call__(self, xs: list[Any]) -> list[Any]:
        return list(xs)


# -- the contract ----------------------------------------------------------------------------


class BackendContract:
    """Tests every backend passes. Subclasses provide a `backend` fixture, set
    `stuck_stop_result` (what `stop` returns for a replica stuck in its model: False if the
    worker must be abandoned, True if the backend can end it) and `leftover_workers()`."""

    stuck_stop_result: bool = False

    def leftover_workers(self) -> int:
        """How many of this backend's workers are alive now (threads, processes, actors)."""
        raise NotImplementedError

    @pytest.mark.anyio
    async def test_runs_a_batch(self, backend: clipperlite.Backend) -> None:
        """A started replica runs the model once on a batch and returns a BatchResult."""
        assert isinstance(backend, clipperlite.Backend)
        replica = await backend.start_replica(double, name=_name())
        try:
            assert isinstance(replica, Replica)
            result = await replica.run_batch([1, 2, 3])
            assert isinstance(result, BatchResult)
            assert list(result.outputs) == [2, 4, 6]
            assert (await replica.run_batch(["a"])).outputs == ["aa"]
        finally:
            assert await replica.stop(2.0) is True

    @pytest.mark.anyio
    async def test_seconds_are_the_model_time(self, backend: clipperlite.Backend) -> None:
        """`seconds` covers the model call and no more than the whole round trip."""
        replica = await backend.start_replica(sleep_then_echo, name=_name())
        try:
            started = time.perf_counter()
            result = await replica.run_batch([0.05, 0.01])
            elapsed = time.perf_counter() - started
            assert result.outputs == [0.05, 0.01]
            assert 0.05 <= result.seconds <= elapsed
        finally:
            await replica.stop(2.0)

    @pytest.mark.anyio
    async def test_numpy_inputs_arrive_as_sent(self, backend: clipperlite.Backend) -> None:
        """Arrays arrive as arrays of their own shape and dtype, in order, stacked or not."""
        replica = await backend.start_replica(describe, name=_name())
        try:
            same = [np.arange(4, dtype=np.float32) + i for i in range(5)]
            result = await replica.run_batch(same)
            assert result.outputs == [
                ("ndarray", (4,), np.dtype(np.float32).str, float(x.sum())) for x in same
            ]
            mixed = [np.arange(3, dtype=np.int32), np.ones(5), np.arange(3, dtype=np.float64)]
            result = await replica.run_batch(mixed)
            assert [o[1:3] for o in result.outputs] == [
                ((3,), np.dtype(np.int32).str),
                ((5,), np.dtype(np.float64).str),
                ((3,), np.dtype(np.float64).str),
            ]
            assert [o[3] for o in result.outputs] == [3.0, 5.0, 3.0]
            big = [np.full(6_000, i, dtype=np.float64) for i in range(3)]  # 48 kB each
            assert [o[1:] for o in (await replica.run_batch(big)).outputs] == [
                ((6_000,), np.dtype(np.float64).str, 6_000.0 * i) for i in range(3)
            ]
            scalars = [np.array(1.5), np.array(2.5)]  # 0-d arrays stay 0-d arrays
            assert [o[:2] for o in (await replica.run_batch(scalars)).outputs] == [
                ("ndarray", ()),
                ("ndarray", ()),
            ]
        finally:
            await replica.stop(2.0)

    @pytest.mark.anyio
    async def test_model_exception_is_raised_and_replica_serves(
        self, backend: clipperlite.Backend
    ) -> None:
        """The model's own exception comes out of run_batch, and the next batch is served."""
        replica = await backend.start_replica(raise_on_boom, name=_name())
        try:
            with pytest.raises(ValueError, match="boom in the model"):
                await replica.run_batch(["ok", "boom"])
            assert (await replica.run_batch(["ok"])).outputs == ["ok"]
        finally:
            await replica.stop(2.0)

    @pytest.mark.anyio
    async def test_stop_iteration_comes_back_as_an_exception(
        self, backend: clipperlite.Backend
    ) -> None:
        """A model's StopIteration is raised as an Exception naming it; the replica serves."""
        replica = await backend.start_replica(stop_iteration_on_stop, name=_name())
        try:
            with pytest.raises(Exception, match="StopIteration") as caught:
                await replica.run_batch(["stop"])
            assert not isinstance(caught.value, StopIteration)
            assert (await replica.run_batch(["go"])).outputs == ["go"]
        finally:
            await replica.stop(2.0)

    @pytest.mark.anyio
    async def test_system_exit_is_contained(self, backend: clipperlite.Backend) -> None:
        """A model's SystemExit comes back as an Exception and does not end the replica."""
        replica = await backend.start_replica(system_exit_on_exit, name=_name())
        try:
            with pytest.raises(Exception, match="SystemExit"):
                await replica.run_batch(["exit"])
            assert (await replica.run_batch(["on"])).outputs == ["on"]
        finally:
            await replica.stop(2.0)

    @pytest.mark.anyio
    async def test_stop_returns_true_and_leaves_nothing(self, backend: clipperlite.Backend) -> None:
        """Stopping an idle replica returns True and its worker is gone."""
        before = self.leftover_workers()
        replica = await backend.start_replica(double, name=_name())
        await replica.run_batch([1])
        assert await replica.stop(1.0) is True
        assert await _eventually(lambda: self.leftover_workers() <= before)

    @pytest.mark.anyio
    async def test_stop_waits_for_a_running_batch(self, backend: clipperlite.Backend) -> None:
        """A batch running when stop is called finishes within the grace period."""
        replica = await backend.start_replica(sleep_then_echo, name=_name())
        batch = asyncio.ensure_future(replica.run_batch([0.3]))
        await asyncio.sleep(0.05)
        assert await replica.stop(10.0) is True
        assert (await batch).outputs == [0.3]

    @pytest.mark.anyio
    async def test_stop_of_a_stuck_replica(
        self, backend: clipperlite.Backend, tmp_path: Path
    ) -> None:
        """A replica stuck in its model stops within its grace: abandoned or ended."""
        marker = tmp_path / "in-the-model"
        replica = await backend.start_replica(hang_after_marking, name=_name())
        batch = asyncio.ensure_future(replica.run_batch([str(marker)]))
        try:
            assert await _eventually(marker.exists)
            assert await replica.stop(0.2) is self.stuck_stop_result
        finally:
            batch.cancel()
            with suppress(Exception, asyncio.CancelledError):
                await batch

    @pytest.mark.anyio
    async def test_cancelled_start_leaves_nothing_running(
        self, backend: clipperlite.Backend
    ) -> None:
        """A start_replica cancelled while the model loads leaves no worker behind."""
        before = self.leftover_workers()
        start = asyncio.ensure_future(backend.start_replica(SlowToLoad(3.0), name=_name()))
        await _eventually(lambda: self.leftover_workers() > before or start.done())
        start.cancel()
        with suppress(asyncio.CancelledError):
            replica = await start  # a backend that had nothing left to wait for
            await replica.stop(1.0)
        assert await _eventually(lambda: self.leftover_workers() <= before)


class WorkerProcessContract:
    """Tests for backends whose model runs in a worker process of its own (process, Ray):
    the worker can die, and the model is unpickled there when the replica starts."""

    def leftover_workers(self) -> int:
        """How many of this backend's workers are alive now."""
        raise NotImplementedError

    @pytest.mark.anyio
    async def test_dead_worker_is_reported_then_replaced(
        self, backend: clipperlite.Backend
    ) -> None:
        """A worker that dies mid-batch raises WorkerDiedError; the next batch is served."""
        replica = await backend.start_replica(die_on_die, name=_name())
        try:
            with pytest.raises(WorkerDiedError):
                await replica.run_batch(["die"])
            assert (await replica.run_batch(["alive"])).outputs == ["alive"]
            with pytest.raises(WorkerDiedError):
                await replica.run_batch(["die", "again"])
            assert (await replica.run_batch(["still"])).outputs == ["still"]
        finally:
            assert await replica.stop(2.0) is True

    @pytest.mark.anyio
    async def test_model_failing_to_load_raises_at_start(
        self, backend: clipperlite.Backend
    ) -> None:
        """A model that cannot load in the worker makes start_replica raise, saying why."""
        before = self.leftover_workers()
        with pytest.raises(Exception) as caught:
            await backend.start_replica(FailsToLoad(), name=_name())
        error: BaseException | None = caught.value
        messages = []
        while error is not None:
            messages.append(str(error))
            error = error.__cause__
        assert any("cannot load the weights" in m for m in messages)
        assert await _eventually(lambda: self.leftover_workers() <= before)

    @pytest.mark.anyio
    async def test_unpicklable_model_raises_type_error(self, backend: clipperlite.Backend) -> None:
        """A model that cannot be pickled for its worker raises TypeError at start."""
        import threading

        lock = threading.Lock()

        def locked(xs: list[Any]) -> list[Any]:
            with lock:
                return list(xs)

        with pytest.raises(TypeError):
            await backend.start_replica(locked, name=_name())
