"""Fake models: small, predictable `func`s to deploy when testing code that uses a Clipper.

Each one is a plain callable taking a list of inputs and returning a list of outputs
(the contract of `Clipper.deploy_model`), except `async_slow` and a `counting` wrapper
of an async model, which are `async def` callables and run on the event loop.
They use the public API's contract only and know nothing of clipperlite's insides.

The stateless ones (and `flaky`, whose call count then starts afresh) can be sent to a
worker process (`backend="process"`); `crashing` only makes sense there.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: What a fake model wraps: a list of inputs -> a list of outputs.
Func = Callable[[list[Any]], list[Any]]


def echo(xs: list[Any]) -> list[Any]:
    """A model whose outputs are its inputs (validated inputs: numeric ones are arrays)."""
    return list(xs)


def _name(func: object) -> str:
    return getattr(func, "__name__", None) or repr(func)


def _check_seconds(seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    return float(seconds)


class _Constant:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, xs: list[Any]) -> list[Any]:
        return [self.value] * len(xs)

    def __repr__(self) -> str:
        return f"constant({self.value!r})"


def constant(value: Any) -> Func:
    """A model that answers `value` to every input."""
    return _Constant(value)


class _Slow:
    __slots__ = ("func", "seconds")

    def __init__(self, seconds: float, func: Func) -> None:
        self.seconds = seconds
        self.func = func

    def __call__(self, xs: list[Any]) -> list[Any]:
        time.sleep(self.seconds)
        return self.func(xs)

    def __repr__(self) -> str:
        return f"slow({self.seconds!r}, {_name(self.func)})"


def slow(seconds: float, func: Func = echo) -> Func:
    """A model that blocks its worker for `seconds` per batch (a sync sleep), then runs `func`."""
    return _Slow(_check_seconds(seconds), func)


class _AsyncSlow:
    __slots__ = ("func", "seconds")

    def __init__(self, seconds: float, func: Func) -> None:
        self.seconds = seconds
        self.func = func

    async def __call__(self, xs: list[Any]) -> list[Any]:
        await asyncio.sleep(self.seconds)
        return self.func(xs)

    def __repr__(self) -> str:
        return f"async_slow({self.seconds!r}, {_name(self.func)})"


def async_slow(seconds: float, func: Func = echo) -> Callable[[list[Any]], Awaitable[list[Any]]]:
    """An `async def` model that awaits `seconds` per batch on the loop, then runs `func`."""
    return _AsyncSlow(_check_seconds(seconds), func)


class _Flaky:
    __slots__ = ("_calls", "_lock", "exc", "fail_every", "func")

    def __init__(
        self,
        fail_every: int | Callable[[Any], bool],
        exc: BaseException | type[BaseException],
        func: Func,
    ) -> None:
        self.fail_every = fail_every
        self.exc = exc
        self.func = func
        self._calls = 0
        self._lock = threading.Lock()

    def _error(self, why: str) -> BaseException:
        if isinstance(self.exc, BaseException):
            return self.exc
        return self.exc(f"flaky model failed: {why}")

    def __call__(self, xs: list[Any]) -> list[Any]:
        with self._lock:
            self._calls += 1
            call = self._calls
        rule = self.fail_every
        if isinstance(rule, int):
            if call % rule == 0:
                raise self._error(f"batch {call} (fails every {rule})")
        else:
            for i, x in enumerate(xs):
                if rule(x):
                    raise self._error(f"input {i} of the batch is {x!r}")
        return self.func(xs)

    def __reduce__(self) -> tuple[Any, ...]:
        # A lock does not pickle; a copy in a worker process counts its own calls.
        return (_Flaky, (self.fail_every, self.exc, self.func))

    def __repr__(self) -> str:
        return f"flaky(fail_every={self.fail_every!r}, exc={self.exc!r})"


def flaky(
    fail_every: int | Callable[[Any], bool] = 2,
    *,
    exc: BaseException | type[BaseException] = RuntimeError,
    func: Func = echo,
) -> Func:
    """A model that raises on chosen batches, otherwise runs `func`.

    `fail_every=n` makes every n-th call raise (n=1: every call); a predicate makes a
    call raise when it is true for any input of the batch (a "poison" input). `exc` is
    an exception class (instantiated with a message saying why) or an instance.
    """
    if isinstance(fail_every, bool) or not (
        (isinstance(fail_every, int) and fail_every >= 1) or callable(fail_every)
    ):
        raise ValueError(f"fail_every must be an int >= 1 or a predicate, got {fail_every!r}")
    if not (
        isinstance(exc, BaseException) or (isinstance(exc, type) and issubclass(exc, BaseException))
    ):
        raise TypeError(f"exc must be an exception class or instance, got {exc!r}")
    return _Flaky(fail_every, exc, func)


class _Crashing:
    __slots__ = ("exit_code", "func", "home", "on")

    def __init__(
        self, on: Callable[[Any], bool] | None, exit_code: int, func: Func, home: int
    ) -> None:
        self.on = on
        self.exit_code = exit_code
        self.func = func
        self.home = home

    def __call__(self, xs: list[Any]) -> list[Any]:
        on = self.on
        if on is None or any(on(x) for x in xs):
            if os.getpid() == self.home:
                raise RuntimeError(
                    "crashing() would kill the process that made it;"
                    " deploy it with backend='process'"
                )
            os._exit(self.exit_code)
        return self.func(xs)

    def __repr__(self) -> str:
        return f"crashing(on={self.on!r}, exit_code={self.exit_code!r})"


def crashing(
    on: Callable[[Any], bool] | None = None, *, exit_code: int = 1, func: Func = echo
) -> Func:
    """A model whose worker process dies (`os._exit`) on chosen batches, otherwise `func`.

    It crashes on a batch with an input for which `on(x)` is true (every batch when `on`
    is None). Deploy it with `backend="process"`: called in the process that made it,
    it raises RuntimeError instead of killing that process (your test run).
    """
    if on is not None and not callable(on):
        raise TypeError(f"on must be a predicate or None, got {on!r}")
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise TypeError(f"exit_code must be an int, got {exit_code!r}")
    return _Crashing(on, exit_code, func, os.getpid())


class _WrongLength:
    __slots__ = ("delta", "func")

    def __init__(self, delta: int, func: Func) -> None:
        self.delta = delta
        self.func = func

    def __call__(self, xs: list[Any]) -> list[Any]:
        out = list(self.func(xs))
        if self.delta >= 0:
            return out + out[-1:] * self.delta if out else [None] * self.delta
        return out[: max(0, len(out) + self.delta)]

    def __repr__(self) -> str:
        return f"wrong_length({self.delta!r})"


def wrong_length(delta: int = 1, func: Func = echo) -> Func:
    """A model that returns `len(xs) + delta` outputs (a broken model; `delta` != 0)."""
    if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0:
        raise ValueError(f"delta must be a non-zero int, got {delta!r}")
    return _WrongLength(delta, func)


class _Hang:
    __slots__ = ("func", "until")

    def __init__(self, until: threading.Event | float, func: Func) -> None:
        self.until = until
        self.func = func

    def __call__(self, xs: list[Any]) -> list[Any]:
        if isinstance(self.until, threading.Event):
            self.until.wait()
        else:
            time.sleep(self.until)
        return self.func(xs)

    def __repr__(self) -> str:
        return f"hang({self.until!r})"


def hang(until: threading.Event | float, func: Func = echo) -> Func:
    """A model whose every call blocks its worker thread past any deadline.

    With a `threading.Event` it blocks until the event is set (set it when the test ends,
    so no thread stays stuck); with a number it sleeps that many seconds. Then it runs
    `func`, so a result does come back, late.
    """
    if not isinstance(until, threading.Event):
        until = _check_seconds(until)
    return _Hang(until, func)


class Counting:
    """Wraps a model and records every batch it is called with (thread-safe).

    The batch is recorded before the wrapped model runs, so failing calls count too.
    Read `batches`, `batch_sizes`, `inputs` and `calls` to assert how a Clipper batched,
    coalesced, cached or dropped queries.
    """

    def __init__(self, func: Callable[[list[Any]], Any] = echo) -> None:
        self.func = func
        self._lock = threading.Lock()
        self._batches: list[list[Any]] = []

    def _record(self, xs: list[Any]) -> None:
        with self._lock:
            self._batches.append(list(xs))

    def __call__(self, xs: list[Any]) -> Any:
        self._record(xs)
        return self.func(xs)

    @property
    def batches(self) -> list[list[Any]]:
        """Every batch seen so far, in call order (copies)."""
        with self._lock:
            return [list(b) for b in self._batches]

    @property
    def batch_sizes(self) -> list[int]:
        """The size of every batch seen so far, in call order."""
        with self._lock:
            return [len(b) for b in self._batches]

    @property
    def inputs(self) -> list[Any]:
        """Every input seen so far, batches flattened in call order."""
        with self._lock:
            return [x for b in self._batches for x in b]

    @property
    def calls(self) -> int:
        """How many times the model was called."""
        with self._lock:
            return len(self._batches)

    def reset(self) -> None:
        """Forget the batches seen so far."""
        with self._lock:
            self._batches.clear()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "counting() records the batches of this process only; it cannot be sent to"
            " a worker process (deploy it with a thread or async backend)"
        )

    def __repr__(self) -> str:
        return f"counting({_name(self.func)}, calls={self.calls})"


class AsyncCounting(Counting):
    """`Counting` for an `async def` model: itself an `async def` callable."""

    async def __call__(self, xs: list[Any]) -> Any:
        self._record(xs)
        return await self.func(xs)


def _is_async(func: object) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(type(func), "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def counting(func: Callable[[list[Any]], Any] = echo) -> Counting:
    """Wrap `func` (sync or async) so that every batch it sees is recorded."""
    if not callable(func):
        raise TypeError(f"counting wraps a model callable, got {func!r}")
    return AsyncCounting(func) if _is_async(func) else Counting(func)
