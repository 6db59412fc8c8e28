"""The "thread" backend: a plain function on a worker thread of each replica's own."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .._types import BatchResult
from ._common import as_model_error, deliver, reject_options, started

logger = logging.getLogger("clipperlite")

#: How long the loop waits for its worker to take a batch handed over (a worker that
#: is slow to wake costs the loop no more than this).
_START_WAIT_S = 0.001

#: A batch on its way to the worker: the future for its result, the inputs, and the
#: lock the worker releases once it has taken them.
_Item = tuple["asyncio.Future[Any]", list[Any], threading.Lock]


class ThreadReplica:
    """Runs a plain function on a worker thread of its own.

    A dedicated thread fed through a `SimpleQueue` hands a batch over for a few µs
    where an executor costs ~100 µs, and caps the model at one thread per replica.

    After handing a batch over, the loop waits (at most `_START_WAIT_S`) until the
    worker has taken it. Without the wait, the worker, woken while the loop runs the
    previous batch's callers, waits for the GIL until the loop next idles or the
    interpreter's 5 ms switch interval forces a switch: measured, 1.2 ms at the median
    per batch at 9,000 queries/s, the model idle all the while. The wait costs the loop
    the worker's wake-up (tens of µs) and gives the model a prompt start.
    """

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func: Callable[[list[Any]], Any] = func
        self.name = name
        self._inbox: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        ready: asyncio.Future[Any] = loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name=self.name, daemon=True
        )
        self._thread.start()
        await ready

    def _setup(self) -> None:
        """Runs first on the worker thread (a subclass may load its model here)."""

    def _teardown(self) -> None:
        """Runs last on the worker thread."""

    def _after_batch(self) -> None:
        """Runs on the worker thread after each batch's result was handed back (a
        subclass may repair its worker here, once the failure is reported)."""

    def _force_stop(self) -> bool:
        """Free a worker stuck in its model call, if this kind of replica can."""
        return False

    def _work(self, ready: asyncio.Future[Any]) -> None:
        loop = self._loop
        assert loop is not None and self._exited is not None
        try:
            try:
                self._setup()
            except Exception as exc:
                loop.call_soon_threadsafe(deliver, ready, False, exc)
                return
            loop.call_soon_threadsafe(deliver, ready, True, None)
            self._serve(loop)
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            pass
        finally:
            self._teardown()
            try:
                loop.call_soon_threadsafe(deliver, self._exited, True, None)
            except RuntimeError:
                pass

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        func = self.func
        inbox = self._inbox
        while True:
            item = inbox.get()
            if item is None:
                return
            fut, xs, taken = item
            taken.release()
            try:
                started = time.perf_counter()
                result: Any = BatchResult(func(xs), time.perf_counter() - started)
                ok = True
            except BaseException as exc:  # a model's SystemExit must not end its replica
                result, ok = as_model_error(exc), False
            loop.call_soon_threadsafe(deliver, fut, ok, result)
            del item, fut, xs, result, taken
            self._after_batch()

    async def run_batch(self, xs: list[Any]) -> BatchResult:
        assert self._loop is not None
        fut = self._loop.create_future()
        taken = threading.Lock()
        taken.acquire()
        self._inbox.put((fut, xs, taken))
        taken.acquire(timeout=_START_WAIT_S)  # the GIL hand-off (see the class docstring)
        result: BatchResult = await fut
        return result

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def stop(self, grace_s: float) -> bool:
        grace = grace_s
        thread = self._thread
        if thread is None:
            return True
        self._inbox.put(None)
        assert self._exited is not None
        await asyncio.wait([self._exited], timeout=grace)
        if not self._exited.done() and self._force_stop():
            await asyncio.wait([self._exited], timeout=1.0)
        if self._exited.done():
            # It has said goodbye and is only returning; wait for that without blocking the
            # loop (a join off the loop would leave an executor thread behind).
            for _ in range(200):
                if not thread.is_alive():
                    break
                await asyncio.sleep(0.005)
        if thread.is_alive():
            logger.warning(
                "clipperlite: replica thread %r is stuck in its model call; abandoning it",
                self.name,
            )
            return False
        return True


class ThreadBackend:
    """Replicas as worker threads (the default for plain functions)."""

    name = "thread"

    def __init__(self, **options: Any) -> None:
        reject_options(self.name, options)

    async def start_replica(self, func: Callable[[list[Any]], Any], *, name: str) -> ThreadReplica:
        """Start a worker thread running `func`."""
        replica = ThreadReplica(func, name)
        return await started(replica, replica.start)  # type: ignore[no-any-return]
