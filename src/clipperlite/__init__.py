"""clipperlite: Clipper's low-latency prediction serving as a library you import."""

from __future__ import annotations

from ._clipper import Clipper
from ._errors import (
    AlreadyExistsError,
    ClipperClosedError,
    ClipperError,
    InvalidInputError,
    UnknownApplicationError,
    UnknownModelError,
)
from ._selection import Exp3, Exp4, SelectionPolicy
from ._types import Prediction

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "Clipper",
    "ClipperClosedError",
    "ClipperError",
    "Exp3",
    "Exp4",
    "InvalidInputError",
    "Prediction",
    "SelectionPolicy",
    "UnknownApplicationError",
    "UnknownModelError",
]

for _name in __all__:
    globals()[_name].__module__ = "clipperlite"
del _name
