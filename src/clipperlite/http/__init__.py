"""Clipper's REST API over a Clipper: `create_app(target)` returns an ASGI app.

Extra `http` (Starlette and uvicorn; it pulls in `prometheus` for `GET /metrics`)::

    pip install 'clipperlite[http]'
    clipperlite serve myservice:make          # uvicorn on 127.0.0.1:1337

Layout: `_codec.py` is the wire format (JSON to inputs, predictions to JSON, error
bodies), pure and framework-free; `_app.py` is the routes over it; `_serve.py` is the
`clipperlite serve` command. docs/http.md has the routes, shapes and status codes.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    raise ImportError(
        "clipperlite.http needs Starlette and uvicorn: pip install 'clipperlite[http]'"
    ) from None

from ._app import Target, create_app
from ._serve import serve

__all__ = ["Target", "create_app", "serve"]
