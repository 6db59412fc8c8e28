"""The "async" backend: an `async def` model run on the event loop."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from .._types import BatchResult
from ._common import as_model_error, reject_options

#: Task.cancelling() (Python 3.11+) tells our cancellation from a model's own CancelledError.
_CAN_TELL_CANCELLING = hasattr(asyncio.Task, "cancelling")


class AsyncReplica:
    """Runs an `async def` model on the event loop."""

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func = func
        self.name = name

    async def run_batch(self, xs: list[Any]) -> BatchResult:
        started = time.perf_counter()
        result = await self._call(xs) if _CAN_TELL_CANCELLING else await self._run_apart(xs)
        return BatchResult(result, time.perf_counter() - started)

    async def _call(self, xs: list[Any]) -> Any:
        try:
            result = self.func(xs)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            raise
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # we are being cancelled
            raise as_model_error(exc) from exc  # the model raised it on its own
        except BaseException as exc:  # a model's SystemExit must not end the loop
            raise as_model_error(exc) from exc
        return result

    async def _run_apart(self, xs: list[Any]) -> Any:
        """Before Python 3.11 a task cannot tell its own cancellation from a model's stray
        CancelledError, so the model runs in a task of its own (one per batch)."""

        async def call() -> Any:
            try:
                result = self.func(xs)
                return await result if inspect.isawaitable(result) else result
            except (Exception, asyncio.CancelledError):
                raise
            except BaseException as exc:  # a task would let SystemExit out of the loop
                raise as_model_error(exc) from exc

        inner = asyncio.ensure_future(call())
        try:
            await asyncio.wait([inner])
        except asyncio.CancelledError:
            inner.cancel()  # we are being cancelled: so is the model
            raise
        if inner.cancelled():
            raise RuntimeError("the model raised CancelledError")
        exc = inner.exception()
        if exc is not None:
            raise as_model_error(exc) from exc
        return inner.result()

    async def stop(self, grace_s: float) -> bool:
        return True


class AsyncBackend:
    """Replicas on the event loop (the default for `async def` models)."""

    name = "async"

    def __init__(self, **options: Any) -> None:
        reject_options(self.name, options)

    async def start_replica(self, func: Callable[[list[Any]], Any], *, name: str) -> AsyncReplica:
        """An async replica needs no start: the model runs in the loop's own tasks."""
        return AsyncReplica(func, name)
