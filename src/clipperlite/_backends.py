"""Where a model's `func` runs: a worker thread per replica, or the event loop itself.

Each replica object exposes `run_batch(xs)`; the batcher awaits it and never knows
which kind it is.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("clipperlite")

BACKENDS = ("thread", "async")


class Replica(Protocol):
    """One running copy of a model."""

    name: str

    async def start(self) -> None:
        """Become ready to run batches (raise if that is impossible)."""

    async def run_batch(self, xs: list[Any]) -> Any:
        """Run the model on a batch of inputs and return its outputs."""

    async def stop(self, grace: float) -> bool:
        """Stop within `grace` seconds; return False if the replica had to be abandoned."""


def is_async_func(func: Callable[..., Any]) -> bool:
    """Whether `func` is an `async def` (also behind a callable object)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ThreadReplica:
    """Runs a plain function on a worker thread of its own.

    A dedicated thread fed through a `SimpleQueue` hands a batch over for a few µs
    where an executor costs ~100 µs, and caps the model at one thread per replica.
    """

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func = func
        self.name = name
        self._inbox: queue.SimpleQueue[tuple[asyncio.Future[Any], list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None and self._exited is not None
        try:
            self._serve(loop)
        finally:
            try:
                loop.call_soon_threadsafe(_deliver, self._exited, True, None)
            except RuntimeError:
                pass

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        func = self.func
        inbox = self._inbox
        while True:
            item = inbox.get()
            if item is None:
                return
            fut, xs = item
            try:
                result: Any = func(xs)
                ok = True
            except Exception as exc:
                result, ok = exc, False
            try:
                loop.call_soon_threadsafe(_deliver, fut, ok, result)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            del item, fut, xs, result

    async def run_batch(self, xs: list[Any]) -> Any:
        assert self._loop is not None
        fut = self._loop.create_future()
        self._inbox.put((fut, xs))
        return await fut

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def stop(self, grace: float) -> bool:
        thread = self._thread
        if thread is None:
            return True
        self._inbox.put(None)
        assert self._exited is not None
        await asyncio.wait([self._exited], timeout=grace)
        if self._exited.done():
            thread.join(timeout=1.0)  # it has left its loop; this returns at once
        if thread.is_alive():
            logger.warning(
                "clipperlite: replica thread %r is stuck in its model call; abandoning it",
                self.name,
            )
            return False
        return True


class AsyncReplica:
    """Runs an `async def` model on the event loop."""

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func = func
        self.name = name

    async def start(self) -> None:
        return None

    async def run_batch(self, xs: list[Any]) -> Any:
        result = self.func(xs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def stop(self, grace: float) -> bool:
        return True


def make_replica(backend: str, func: Callable[[list[Any]], Any], name: str) -> Replica:
    """A replica of the given backend kind."""
    if backend == "thread":
        return ThreadReplica(func, name)
    if backend == "async":
        return AsyncReplica(func, name)
    raise ValueError(backend)
