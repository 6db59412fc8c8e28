"""`clipperlite serve`: one uvicorn server over a Clipper, stopped gracefully by a signal.

uvicorn's `Server.serve()` turns SIGTERM and SIGINT (Ctrl-C) into a graceful exit:
it stops accepting connections, lets every request in flight finish (each is a
query bounded by its SLO), then runs the app's lifespan shutdown, which stops the
Clipper (`Clipper.stop()` answers anything still waiting). uvicorn then re-raises
the signal; `serve` absorbs it, so a signalled server exits with status 0.
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

#: uvicorn's exit status when the app's startup failed (as `uvicorn.run` does).
STARTUP_FAILURE = 3

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def as_asgi(target: Any) -> Callable[..., Any]:
    """An ASGI app for a Clipper, an async factory, or an ASGI app (passed through).

    An `async def` that takes no required argument is a factory; any other callable
    is taken as an ASGI app (`create_app`'s result, or one of your own).

    Raises:
        TypeError: `target` is none of these.
    """
    if isinstance(target, Clipper | Starlette):
        return create_app(target) if isinstance(target, Clipper) else target
    if inspect.iscoroutinefunction(target):
        required = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return create_app(target) if not required else target
    if callable(target):
        return target  # type: ignore[no-any-return]
    raise TypeError(
        "serve takes a Clipper, an async factory returning a started Clipper, or an ASGI "
        f"app from clipperlite.http.create_app; got {type(target).__name__}"
    )


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


def serve(
    target: Any, *, host: str = "127.0.0.1", port: int = 1337, log_level: str = "info"
) -> int:
    """Serve a target with one uvicorn server until SIGTERM or Ctrl-C.

    Args:
        target: A Clipper, an async factory returning a started Clipper, or an ASGI app.
        host: The address to bind (loopback by default: put a reverse proxy in front
            for other machines).
        port: The port (Clipper's 1337 by default).
        log_level: uvicorn's and clipperlite's log level ("info", "warning", ...).

    Returns:
        The exit status: 0 after a graceful stop, 3 when the app failed to start.

    Raises:
        TypeError: `target` is not something `serve` can serve.
        ValueError: `log_level` is not one of uvicorn's.
    """
    app = as_asgi(target)
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    logging.getLogger("clipperlite").setLevel(LOG_LEVELS[log_level])
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    with _signals_absorbed():
        asyncio.run(server.serve())
    return 0 if server.started else STARTUP_FAILURE
