"""Where a model's `func` runs: the built-in backends, and any backend found by name.

A backend is any object with `start_replica(func, *, name)` (the public `Backend`
protocol). The built-in ones are "thread", "async" and "process", one file each;
other names are looked up in the `clipperlite.backends` entry point group, so an
installed extra (`clipperlite[ray]`) adds `backend="ray"`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from .._errors import ClipperError, describe
from .._types import Backend
from ._async import AsyncBackend
from ._common import is_async_func
from ._process import ProcessBackend
from ._thread import ThreadBackend

__all__ = ["BUILTIN_BACKENDS", "ENTRY_POINT_GROUP", "is_async_func", "resolve_backend"]

BUILTIN_BACKENDS: dict[str, type[Any]] = {
    "thread": ThreadBackend,
    "async": AsyncBackend,
    "process": ProcessBackend,
}
ENTRY_POINT_GROUP = "clipperlite.backends"
#: The install line for backends the project's own extras provide.
_EXTRAS = {"ray": "pip install 'clipperlite[ray]'"}


def _entry_point(name: str) -> Any | None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    return None


def available_backends() -> list[str]:
    """Names `backend=` accepts in this environment."""
    names = set(BUILTIN_BACKENDS)
    names.update(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def resolve_backend(
    backend: object, func: Callable[..., Any], options: dict[str, Any] | None
) -> tuple[Backend, str]:
    """The backend object for deploy_model's `backend=` and `backend_options=`, and its
    name for reports; a ClipperError saying what to do when it cannot be had."""
    opts = dict(options or {})
    if backend is None:
        backend = "async" if is_async_func(func) else "thread"
    if isinstance(backend, str):
        name = backend
        factory: Any = BUILTIN_BACKENDS.get(name)
        if factory is None:
            ep = _entry_point(name)
            if ep is None:
                hint = _EXTRAS.get(name)
                raise ClipperError(
                    f"backend {name!r} is not installed: {hint}"
                    if hint
                    else f"unknown backend {name!r} (available: {', '.join(available_backends())})"
                )
            try:
                factory = ep.load()
            except ImportError as exc:
                hint = _EXTRAS.get(name, f"install the package that provides backend {name!r}")
                raise ClipperError(f"backend {name!r} cannot be loaded ({exc}): {hint}") from exc
        if name in ("thread", "process") and is_async_func(func):
            raise ClipperError(f"the model is an async def: use backend='async', not {name!r}")
        try:
            instance = factory(**opts)
        except ClipperError:
            raise
        except Exception as exc:
            raise ClipperError(
                f"backend {name!r} rejected backend_options {opts!r}: {describe(exc)}"
            ) from exc
        return instance, name
    if isinstance(backend, type):
        raise ClipperError(
            f"backend must be a name or an instance, not the class {backend.__name__}:"
            f" pass {backend.__name__}(...)"
        )
    if not isinstance(backend, Backend):
        raise ClipperError(
            f"backend must be a name ({', '.join(available_backends())}) or an object with"
            f" an async start_replica(func, *, name) method; got {backend!r}"
        )
    if opts:
        raise ClipperError(
            "backend_options go with a backend name; configure a backend object directly"
        )
    return backend, getattr(backend, "name", type(backend).__name__)
