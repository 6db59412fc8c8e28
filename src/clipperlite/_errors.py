"""The error tree of clipperlite.

::

    ClipperError
    ├── InvalidInputError (ValueError)        an input does not fit its app's input type
    ├── UnknownApplicationError (KeyError)    no application has that name
    ├── UnknownModelError (KeyError)          no model (or model version) has that name
    ├── AlreadyExistsError                    an app name or a model version is taken
    ├── ClipperClosedError                    the Clipper is not running
    └── WorkerDiedError                       a replica's worker (process, actor) died

Every error carries the names it is about as attributes, so callers need not
parse messages.
"""

from __future__ import annotations

from typing import Any


class ClipperError(Exception):
    """Base of every error clipperlite raises; also raised for misuse with no subclass."""

    def __str__(self) -> str:
        # KeyError subclasses would otherwise print their message in quotes.
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes survive pickling (process pools, queue-based logging).
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def describe(exc: BaseException) -> str:
    """ "TypeName: message" for an exception from user code (a model, a policy, a
    backend), even one whose `str()` raises: reporting a failure must not fail."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}"


def _rebuild(cls: type[ClipperError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidInputError(ClipperError, ValueError):
    """An input does not fit the input type of the application it was sent to."""

    def __init__(self, message: str, *, app: str | None = None, input_type: str | None = None):
        super().__init__(message)
        self.app = app
        self.input_type = input_type


class UnknownApplicationError(ClipperError, KeyError):
    """No application is registered under that name."""

    def __init__(self, message: str, *, app: str | None = None):
        super().__init__(message)
        self.app = app


class UnknownModelError(ClipperError, KeyError):
    """No model, or no such version of a model, is deployed under that name."""

    def __init__(self, message: str, *, model: str | None = None, version: str | None = None):
        super().__init__(message)
        self.model = model
        self.version = version


class AlreadyExistsError(ClipperError):
    """An application name, or a model version, is already taken."""

    def __init__(self, message: str, *, name: str | None = None):
        super().__init__(message)
        self.name = name


class ClipperClosedError(ClipperError):
    """A query or a deployment reached a Clipper that is not running."""


class WorkerDiedError(ClipperError):
    """Raised by a replica's `run_batch` when the worker running the batch died (a process
    crashed, a Ray actor was killed); its queries get the `worker_died` default."""

    def __init__(self, message: str, *, replica: str | None = None):
        super().__init__(message)
        self.replica = replica
