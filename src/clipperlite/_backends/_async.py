"""The "async" backend: an `async def` model run on the event loop."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from .._types import BatchResult
from ._common import as_model_error, reject_options

logger = logging.getLogger("clipperlite")


class AsyncReplica:
    """Runs an `async def` model on the event loop, each batch in a task of its own.

    The task apart is what tells our cancellation from the model's: a model that
    cancels its own task (a hand-made timeout, even one firing after it returned)
    cancels only that task, which is a model error; only a cancellation of the
    replica's caller (a stop) cancels the model. A model that swallows that
    cancellation and runs on is waited for by `stop()` within its grace, then
    abandoned: logged and counted, like a stuck thread.
    """

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func = func
        self.name = name
        self._running: set[asyncio.Task[Any]] = set()

    async def _call(self, xs: list[Any]) -> Any:
        try:
            result = self.func(xs)
            return await result if inspect.isawaitable(result) else result
        except (Exception, asyncio.CancelledError):
            raise
        except BaseException as exc:  # a task would let SystemExit out of the loop
            raise as_model_error(exc) from exc

    async def run_batch(self, xs: list[Any]) -> BatchResult:
        started = time.perf_counter()
        inner = asyncio.get_running_loop().create_task(self._call(xs), name=self.name)
        self._running.add(inner)
        inner.add_done_callback(self._running.discard)
        try:
            await asyncio.wait([inner])
        except asyncio.CancelledError:
            inner.cancel()  # we are being cancelled: so is the model
            raise
        if inner.cancelled():
            raise RuntimeError("the model's task was cancelled (CancelledError) by the model")
        exc = inner.exception()
        if exc is not None:
            raise as_model_error(exc) from exc
        return BatchResult(inner.result(), time.perf_counter() - started)

    async def stop(self, grace_s: float) -> bool:
        running = list(self._running)
        if not running:
            return True
        # A running batch may finish within the grace; then it is cancelled, and a model
        # that swallows its cancellation is abandoned.
        _, pending = await asyncio.wait(running, timeout=grace_s) if grace_s > 0 else ((), running)
        for task in pending:
            task.cancel()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            logger.warning(
                "clipperlite: async model %r ignored its cancellation and is still running;"
                " abandoning it",
                self.name,
            )
            return False
        return True


class AsyncBackend:
    """Replicas on the event loop (the default for `async def` models)."""

    name = "async"

    def __init__(self, **options: Any) -> None:
        reject_options(self.name, options)

    async def start_replica(self, func: Callable[[list[Any]], Any], *, name: str) -> AsyncReplica:
        """An async replica needs no start: the model runs in the loop's own tasks."""
        return AsyncReplica(func, name)
