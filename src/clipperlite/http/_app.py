"""The ASGI app: Clipper's REST routes over a Clipper, a few lines each.

Each route reads a bounded body, hands it to `_codec`, awaits the Clipper and sends
what `_codec` makes of the answer. Every failure a caller can cause maps to a 4xx
with a JSON error body, in `_error_response`; a 5xx means the server itself is at
fault (503: the Clipper is not running; 500: it runs on another event loop than the
app's, a misconfiguration that the lifespan refuses at startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from clipperlite import (
    Clipper,
    ClipperClosedError,
    ClipperError,
    InvalidInputError,
    UnknownApplicationError,
)
from clipperlite.prometheus import ClipperCollector

from . import _codec
from ._codec import RequestError

logger = logging.getLogger("clipperlite.http")

#: What `create_app` serves: a Clipper, or an async factory returning a started one.
Target = Clipper | Callable[[], Awaitable[Clipper]]

_JSON = "application/json"


class _BodyTooLarge(Exception):
    """The request body is over `max_body_bytes`."""


class _Misconfigured(Exception):
    """The Clipper cannot answer queries from the app's event loop."""


#: What is wrong when the Clipper runs on another event loop than the app, and the fix.
_WRONG_LOOP = (
    "the Clipper given to create_app runs on another event loop than the app's (it was "
    "started in another thread, or by an asyncio.run that has ended), and a Clipper "
    "answers only on the loop that started it: give create_app an async factory that "
    "starts the Clipper, or a Clipper not started yet (the app starts it on its own loop)"
)


class _Frontend:
    """The state behind the routes: the Clipper once known, who stops it, its metrics."""

    def __init__(self, target: Target, max_body_bytes: int) -> None:
        if isinstance(target, Clipper):
            self.clipper: Clipper | None = target
            self._factory: Callable[[], Awaitable[Clipper]] | None = None
        elif callable(target):
            self.clipper, self._factory = None, target
        else:
            raise TypeError(
                "create_app takes a Clipper or an async factory returning a started Clipper, "
                f"got {type(target).__name__}"
            )
        self.max_body_bytes = max_body_bytes
        self._owned = False
        #: The event loop the Clipper was last seen answering on.
        self._checked_loop: asyncio.AbstractEventLoop | None = None
        self._logged_wrong_loop = False
        self.registry = CollectorRegistry()
        if self.clipper is not None:
            self.registry.register(ClipperCollector(self.clipper))

    # -- lifespan ------------------------------------------------------------------------
    async def open(self) -> None:
        """Make the Clipper (factory) or start it when it is not running yet."""
        if self._factory is not None:
            clipper = await self._factory()
            if not isinstance(clipper, Clipper):
                raise TypeError(
                    f"the factory given to create_app returned {type(clipper).__name__}, "
                    "not a Clipper"
                )
            self.clipper, self._owned = clipper, True
            self._checked_loop = None
            self.registry = CollectorRegistry()  # a fresh one each time the factory runs
            self.registry.register(ClipperCollector(clipper))
        assert self.clipper is not None
        if not self.clipper.running:
            await self.clipper.start()
            self._owned = True
        refused = await self.loop_error(self.clipper)
        if refused is not None:
            raise ClipperError(f"create_app cannot serve this Clipper: {_WRONG_LOOP}") from refused

    async def close(self) -> None:
        """Stop the Clipper if this app started it: every waiting query is answered."""
        if self._owned and self.clipper is not None:
            logger.info("stopping the Clipper")
            await self.clipper.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Starlette's lifespan: open at startup, close at shutdown."""
        await self.open()
        try:
            yield
        finally:
            await self.close()

    # -- helpers ------------------------------------------------------------------------
    def running(self) -> Clipper:
        """The Clipper, if it serves queries now."""
        if self.clipper is None or not self.clipper.running:
            raise ClipperClosedError("the Clipper is not running")
        return self.clipper

    async def loop_error(self, clipper: Clipper) -> ClipperError | None:
        """The error `clipper` raises on this event loop (another loop's), or None.

        An empty `predict_batch` checks the loop first, as every async call does
        ("Calling from other threads and event loops" in DESIGN.md), then queues and
        counts nothing; an unknown app is the answer of a Clipper on this loop. Once a
        loop passed, the check is an identity test.
        """
        loop = asyncio.get_running_loop()
        if loop is self._checked_loop:
            return None
        try:
            await clipper.predict_batch("", [])
        except UnknownApplicationError:
            pass
        except ClipperClosedError:
            return None  # not running: nothing learnt about its loop
        except ClipperError as exc:
            return exc
        self._checked_loop = loop
        return None

    async def serving(self) -> Clipper:
        """The Clipper, if it serves queries now, from this event loop."""
        clipper = self.running()
        refused = await self.loop_error(clipper)
        if refused is not None:
            if not self._logged_wrong_loop:  # once: every query would say it again
                self._logged_wrong_loop = True
                logger.error("every query is a 500: %s (%s)", _WRONG_LOOP, refused)
            raise _Misconfigured(_WRONG_LOOP)
        return clipper

    async def body(self, request: Request) -> bytes:
        """The body, refused (413) once it is over the bound: by its Content-Length, or
        while it streams in, before any of it is parsed."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise _BodyTooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def request(self, request: Request) -> tuple[Clipper, str, str, dict[str, Any]]:
        """(Clipper, app name, its input type, the JSON body) of a POST to an app."""
        body = await self.body(request)
        clipper = await self.serving()
        name = request.path_params["app"]
        input_type = clipper.get_app_info(name)["input_type"]
        return clipper, name, input_type, _codec.parse_json(body)

    # -- routes -------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        """POST /{app}/predict: `{"input": x}` or `{"input_batch": [...]}`."""
        try:
            clipper, name, input_type, body = await self.request(request)
            req = _codec.decode_predict(body, input_type)
            options: dict[str, Any] = {}
            if req.slo_micros is not None:
                options["slo_micros"] = req.slo_micros
            if req.context is not None:
                options["context"] = req.context
            if req.batch:
                predictions = await clipper.predict_batch(name, req.inputs, **options)
            else:
                predictions = [await clipper.predict(name, req.inputs[0], **options)]
            return _json(200, _codec.predict_json(predictions, batch=req.batch))
        except Exception as exc:
            return _error_response(exc, request)

    async def update(self, request: Request) -> Response:
        """POST /{app}/update: `{"input": x, "label": y}` (Clipper's feedback)."""
        try:
            clipper, name, input_type, body = await self.request(request)
            req = _codec.decode_update(body, input_type)
            options: dict[str, Any] = {}
            if req.context is not None:
                options["context"] = req.context
            await clipper.feedback(name, req.input, req.label, **options)
            return _json(200, {"ok": True})
        except Exception as exc:
            return _error_response(exc, request)

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: the Clipper's figures in Prometheus text format."""
        if self.clipper is None:
            return _json(503, _codec.error_json("unavailable", "the Clipper is not running"))
        return Response(
            generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def health(self, request: Request) -> Response:
        """GET /health: 200 while the Clipper runs, 503 otherwise."""
        clipper = self.clipper
        if clipper is not None and clipper.running and await self.loop_error(clipper) is None:
            return _json(200, {"status": "ok"})
        return _json(503, {"status": "unavailable"})


def _json(status: int, value: Any) -> Response:
    return Response(_codec.dumps(value), status_code=status, media_type=_JSON)


def _error_response(exc: Exception, request: Request) -> Response:
    """The response for an exception a route raised; anything unexpected is re-raised."""
    if isinstance(exc, RequestError):
        return _json(400, _codec.error_json(exc.error, exc.cause))
    if isinstance(exc, _BodyTooLarge):
        return _json(413, _codec.error_json("request too large", "the body is over the limit"))
    if isinstance(exc, UnknownApplicationError):
        # Never the message: it lists the apps that exist.
        name = _codec.describe(request.path_params.get("app"))
        return _json(404, _codec.error_json("unknown application", f"no application named {name}"))
    if isinstance(exc, InvalidInputError):
        return _json(400, _codec.error_json("invalid input", str(exc)))
    if isinstance(exc, ClipperClosedError):
        return _json(503, _codec.error_json("unavailable", "the Clipper is not running"))
    if isinstance(exc, _Misconfigured):  # the server's fault, never the caller's
        return _json(500, _codec.error_json("server misconfigured", str(exc)))
    if isinstance(exc, ClipperError):  # a bad slo_micros, a label the policy cannot score
        return _json(400, _codec.error_json("bad request", str(exc)))
    if isinstance(exc, ClientDisconnect):
        return Response(status_code=400)  # nobody reads it
    raise exc


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), as JSON."""
    assert isinstance(exc, HTTPException)
    return Response(
        _codec.dumps(_codec.error_json(_REASONS.get(exc.status_code, "error"), exc.detail)),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=_JSON,
    )


_REASONS = {404: "not found", 405: "method not allowed"}


def create_app(target: Target, *, max_body_bytes: int = 10_000_000) -> Starlette:
    """Clipper's REST API over a Clipper, as an ASGI app (serve it with uvicorn).

    Routes: `POST /{app}/predict`, `POST /{app}/update`, `GET /metrics`,
    `GET /health` (docs/http.md has the shapes and status codes).

    Args:
        target: A `Clipper` (started by the app's lifespan and stopped at its end when
            it is not running yet; left alone when it is, and then it must run on the
            event loop that serves the app: the lifespan refuses one started on another
            loop, and its queries are 500s), or an `async def` factory
            taking no argument and returning a started Clipper with its models
            deployed (run at startup; the Clipper is stopped at shutdown).
        max_body_bytes: The largest request body accepted; a longer one is refused
            with a 413 before it is parsed.

    Returns:
        A Starlette application.

    Raises:
        TypeError: `target` is neither a Clipper nor callable.
        ValueError: `max_body_bytes` is not a positive int.
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise ValueError(f"max_body_bytes must be an int, got {max_body_bytes!r}")
    if max_body_bytes <= 0:
        raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes!r}")
    frontend = _Frontend(target, max_body_bytes)
    app = Starlette(
        routes=[
            Route("/metrics", frontend.metrics, methods=["GET"]),
            Route("/health", frontend.health, methods=["GET"]),
            Route("/{app}/predict", frontend.predict, methods=["POST"]),
            Route("/{app}/update", frontend.update, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_exception},
        lifespan=frontend.lifespan,
    )
    app.state.clipperlite = frontend
    return app
