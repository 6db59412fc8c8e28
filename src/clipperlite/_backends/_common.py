"""What every built-in backend shares: wrapping what a model raises, handing a result
back to the loop from a worker thread, and starting a replica without leaking it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import describe


def is_async_func(func: Callable[..., Any]) -> bool:
    """Whether `func` is an `async def` (also behind a callable object)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def as_model_error(exc: BaseException) -> Exception:
    """An exception the batcher can report for whatever a model raised.

    BaseExceptions (SystemExit, KeyboardInterrupt) are wrapped so they cannot end a
    replica or the loop, and so is StopIteration, which an asyncio future refuses.
    """
    if isinstance(exc, Exception) and not isinstance(exc, StopIteration | StopAsyncIteration):
        return exc
    wrapped = RuntimeError(f"the model raised {describe(exc)}")
    wrapped.__cause__ = exc  # its traceback, for the log
    return wrapped


def deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Settle `fut` from a worker's result (called on the loop, via call_soon_threadsafe)."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def reject_options(backend: str, options: dict[str, Any]) -> None:
    """A built-in backend takes no options: name the ones given."""
    if options:
        from .._errors import ClipperError

        raise ClipperError(f"backend {backend!r} takes no backend_options, got {sorted(options)!r}")


async def finish(aw: Awaitable[Any]) -> Any:
    """Await `aw` to its end even if cancelled meanwhile (once, or again and again as an
    anyio cancel scope does), then re-raise the cancellation: for cleanup that must not
    be left running unwatched. `aw` must be bounded in time."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:  # noqa: PERF203 (cleanup, not a hot loop)
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def started(replica: Any, start: Callable[[], Awaitable[None]]) -> Any:
    """Await `start()`; if it fails or is cancelled, stop the replica before raising, so
    no thread or process outlives a failed or cancelled deployment."""
    try:
        await start()
    except BaseException:
        await finish(replica.stop(1.0))
        raise
    return replica
