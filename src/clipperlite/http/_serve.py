"""`clipperlite serve`: one uvicorn server over a Clipper, stopped gracefully by a signal.

uvicorn's `Server.serve()` turns SIGTERM and SIGINT (Ctrl-C) into a graceful exit:
it stops accepting connections, lets every request in flight finish (each is a
query bounded by its SLO), then runs the app's lifespan shutdown, which stops the
Clipper (`Clipper.stop()` answers anything still waiting). uvicorn then re-raises
the signal; `serve` absorbs it, so a signalled server exits with status 0.

uvicorn notes a signal during the app's startup but only acts on it once startup is
over, so a factory that hangs would hold the process. `serve` watches for it, as
uvicorn's own main loop does once it runs (`should_exit`, every tick), and abandons
the startup: the factory is cancelled and `serve` returns the startup failure status.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOG_LEVELS

from clipperlite import Clipper

from ._app import create_app

logger = logging.getLogger("clipperlite.http")

#: uvicorn's exit status when the app's startup failed (as `uvicorn.run` does).
STARTUP_FAILURE = 3

#: How often the startup watch looks at uvicorn's `should_exit` (its own main loop's tick).
_TICK_S = 0.1

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

ACCEPTED = (
    "serve takes a Clipper, an async def factory taking no argument and returning a "
    "started Clipper, or an ASGI app (an async callable taking scope, receive and send, "
    "such as clipperlite.http.create_app's)"
)


def as_asgi(target: Any) -> Callable[..., Any]:
    """An ASGI app for a Clipper, an async factory, or an ASGI app (passed through).

    An `async def` (or an object with an `async def __call__`) that can be called with
    no argument is a factory; one that can be called with (scope, receive, send) is an
    ASGI app. Anything else is refused here, before uvicorn starts.

    Raises:
        TypeError: `target` is none of these (the message says what it is).
    """
    if isinstance(target, Clipper):
        return create_app(target)
    if isinstance(target, Starlette):
        return target
    call = _async_call(target)
    if call is not None and _takes(call, 0):
        return create_app(target)
    if call is not None and _takes(call, 3):
        return target  # type: ignore[no-any-return]
    raise TypeError(f"cannot serve {_describe(target, call)}: {ACCEPTED}")


def _async_call(target: Any) -> Callable[..., Any] | None:
    """What calling `target` runs, if it is an `async def` (a function, a method, a
    partial of one, or an instance whose `__call__` is one); None otherwise."""
    if inspect.iscoroutinefunction(target):
        return target  # type: ignore[no-any-return]
    if inspect.isclass(target) or inspect.isroutine(target):
        return None
    call = getattr(target, "__call__", None)  # noqa: B004 (the method itself is wanted)
    return call if inspect.iscoroutinefunction(call) else None


def _takes(func: Callable[..., Any], count: int) -> bool:
    """Whether `func` can be called with `count` positional arguments."""
    try:
        inspect.signature(func).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # no signature to read: let the call decide
        return True
    return True


def _describe(target: Any, call: Callable[..., Any] | None) -> str:
    """What a target that cannot be served is, in a few words."""
    name = getattr(target, "__name__", None) or type(target).__name__
    if call is not None:
        return f"the async callable {name}({_parameters(call)}), which needs arguments"
    if inspect.isclass(target):
        return f"the class {name} (give an instance, or a factory making one)"
    if inspect.isroutine(target):
        return f"the function {name}, a plain def (a factory must be an async def)"
    if callable(target):
        return f"a {type(target).__name__}, callable but not async"
    return f"{type(target).__name__} {_short_repr(target)}"


def _parameters(func: Callable[..., Any]) -> str:
    """A function's parameters by name, as its `def` line has them (no annotations)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except ValueError:
        return "..."
    return ", ".join(_STARS.get(p.kind.name, "") + p.name for p in parameters)


_STARS = {"VAR_POSITIONAL": "*", "VAR_KEYWORD": "**"}


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def _signals_absorbed() -> Iterator[None]:
    """While uvicorn serves, the signals it re-raises after a graceful exit do nothing."""
    previous = {sig: signal.signal(sig, _ignore) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(sig: int, frame: Any) -> None:
    return None


class _AbandonableStartup:
    """The app served, whose lifespan startup `serve` can abandon quietly.

    When the startup is abandoned, the app (Starlette) answers its cancellation with a
    `lifespan.startup.failed` message holding the traceback, which uvicorn would log:
    it is passed on without it, since `serve` has said why in one line.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.abandoned = False
        #: Whether the app has said its startup is complete (from then on a signal is
        #: uvicorn's to handle: a graceful shutdown).
        self.started = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def lifespan_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.started = True
            elif self.abandoned and message["type"] == "lifespan.startup.failed":
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        await self.app(scope, receive, lifespan_send)


async def _serve(server: uvicorn.Server, app: _AbandonableStartup) -> None:
    """Run the server; a SIGTERM or Ctrl-C before its startup is over abandons it."""
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started and not serving.done():
            if server.should_exit and not app.started:
                app.abandoned = True
                serving.cancel()
                await asyncio.wait({serving})
                return
            await asyncio.wait({serving}, timeout=_TICK_S)
        await serving
    finally:
        serving.cancel()  # only if this coroutine was cancelled itself


def serve(
    target: Any, *, host: str = "127.0.0.1", port: int = 1337, log_level: str = "info"
) -> int:
    """Serve a target with one uvicorn server until SIGTERM or Ctrl-C.

    A SIGTERM or Ctrl-C while the app starts (a factory still running) abandons the
    startup: the factory is cancelled, a line says so, and 3 is returned.

    Args:
        target: A Clipper, an async factory returning a started Clipper, or an ASGI app.
        host: The address to bind (loopback by default: put a reverse proxy in front
            for other machines).
        port: The port, 0 to 65535 (Clipper's 1337 by default; 0: any free one).
        log_level: uvicorn's and clipperlite's log level ("info", "warning", ...).

    Returns:
        The exit status: 0 after a graceful stop, 3 when the app failed to start or a
        signal stopped its startup.

    Raises:
        TypeError: `target` is not something `serve` can serve.
        ValueError: `log_level` is not one of uvicorn's, or `port` is out of range.
    """
    app = _AbandonableStartup(as_asgi(target))
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    logging.getLogger("clipperlite").setLevel(LOG_LEVELS[log_level])
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    with _signals_absorbed():
        asyncio.run(_serve(server, app))
    if app.abandoned:
        logger.error("stopped by a signal during startup: the app's startup was abandoned")
    return 0 if server.started else STARTUP_FAILURE
