"""Clipper's input types: names and aliases, validation, and collision-safe cache keys."""

from __future__ import annotations

import copy
import io
import math
import pickle
import reprlib
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from ._errors import ClipperError, InvalidInputError

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings", "any")

_ALIASES = {
    "integers": "integers", "integer": "integers", "ints": "integers", "int": "integers",
    "i": "integers",
    "floats": "floats", "float": "floats", "f": "floats",
    "doubles": "doubles", "double": "doubles", "d": "doubles",
    "bytes": "bytes", "byte": "bytes", "b": "bytes",
    "strings": "strings", "string": "strings", "strs": "strings", "str": "strings",
    "s": "strings",
    "any": "any",
}  # fmt: skip

_NUMERIC: dict[str, tuple[np.dtype[Any], str]] = {
    "integers": (np.dtype(np.int32), "iu"),
    "floats": (np.dtype(np.float32), "iuf"),
    "doubles": (np.dtype(np.float64), "iuf"),
}
_INT32 = np.iinfo(np.int32)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT64_MAX = float(np.finfo(np.float64).max)
_BOOLS = frozenset((bool, np.bool_))

#: validate(x, app) -> the value models see; raises InvalidInputError.
Validator = Callable[[Any, str], Any]
#: key(validated x) -> a hashable, collision-safe key, or None when x cannot be keyed.
KeyFunc = Callable[[Any], Hashable | None]


def normalize_input_type(name: object) -> str:
    """The canonical name of an input type, accepting Clipper's aliases."""
    if isinstance(name, str):
        canonical = _ALIASES.get(name.strip().lower())
        if canonical is not None:
            return canonical
    raise ClipperError(
        f"unknown input type {name!r}: use one of {', '.join(INPUT_TYPES)}"
        " (or an alias such as 'ints', 'double', 'str')"
    )


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 50
_REPR.maxlevel = 3


def _describe(value: object) -> str:
    try:
        text = _REPR.repr(value)
    except Exception:  # a hostile __repr__ must not replace the real error
        text = f"<{type(value).__name__} object>"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _invalid(app: str, input_type: str, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"app {app!r} expects {input_type}: {what}", app=app, input_type=input_type
    )


def _bad_element(items: Any, input_type: str) -> str | None:
    """Name the first element of a sequence that does not fit a numeric type (None if all do)."""
    allowed: tuple[type, ...] = (
        (int, np.integer) if input_type == "integers" else (int, float, np.integer, np.floating)
    )
    for i, v in enumerate(items):
        if isinstance(v, bool | np.bool_) or not isinstance(v, allowed):
            kind = "nested" if isinstance(v, list | tuple | np.ndarray) else "not a number"
            if input_type == "integers" and isinstance(v, float | np.floating):
                kind = "not an integer"
            return f"element {i} is {_describe(v)}: {kind}"
        num: Any = v
        if input_type == "integers" and not (_INT32.min <= num <= _INT32.max):
            return f"element {i} is {_describe(v)}: out of the int32 range"
        if input_type != "integers":
            limit = _FLOAT32_MAX if input_type == "floats" else _FLOAT64_MAX
            wide = isinstance(num, np.floating) and num.dtype.itemsize > 8  # a longdouble
            if wide and np.isfinite(num) and abs(num) > np.longdouble(limit):
                bits = "float32" if input_type == "floats" else "float64"
                return f"element {i} is {_describe(num)}: out of the {bits} range"
            try:
                value = float(num)
            except OverflowError:
                value = math.inf
            limit = _FLOAT32_MAX if input_type == "floats" else _FLOAT64_MAX
            too_big = math.isinf(value) and not isinstance(num, float | np.floating)
            if too_big or (math.isfinite(value) and abs(value) > limit):
                bits = "float32" if input_type == "floats" else "float64"
                return f"element {i} is {_describe(num)}: out of the {bits} range"
    return None


def _exact_sequence(x: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    """A list or tuple subclass as the exact builtin holding its real items (a C-level
    copy: an overridden __len__, __iter__ or __getitem__ has no say)."""
    if isinstance(x, list):
        return list.copy(x)
    return tuple.__getitem__(x, slice(None))


def _why(items: Any, input_type: str) -> str:
    return _bad_element(items, input_type) or "its elements are of mixed or unsupported types"


#: Element types a list may hold for the fast path of each type (np.array then cannot
#: accept what the full check would refuse; floats need the float32 range check).
_FAST_LIST: dict[str, frozenset[type]] = {
    "doubles": frozenset((float, int)),
    "integers": frozenset((int,)),
}
_FAST_FAIL = (OverflowError, ValueError, TypeError)


def _numeric_validator(input_type: str) -> Validator:
    dtype, kinds = _NUMERIC[input_type]
    fast_list = _FAST_LIST.get(input_type)

    def validate(x: Any, app: str) -> np.ndarray:
        # Fast paths for the common inputs: a 1-D array of the type's own dtype, and a
        # list of Python floats (doubles) or ints (integers); anything else, or anything
        # they cannot convert, takes the full check below.
        t = type(x)
        if t is np.ndarray:
            if x.ndim == 1 and x.dtype == dtype and x.size:
                out: np.ndarray = x.copy()
                out.flags.writeable = False
                return out
        elif t is list and fast_list is not None and x and fast_list.issuperset(map(type, x)):
            try:
                out = np.array(x, dtype=dtype)
            except _FAST_FAIL:
                pass
            else:
                out.flags.writeable = False
                return out
        if isinstance(x, np.ndarray) and x.dtype.kind == "O" and x.ndim == 1:
            x = x.tolist()  # Python objects in an array: check them as a list's
        if isinstance(x, np.ndarray):
            arr = x
            from_list = False
        elif isinstance(x, list | tuple):
            from_list = True
            if type(x) is not list and type(x) is not tuple:
                x = _exact_sequence(x)
            try:
                arr = np.asarray(x)
            except Exception:  # ragged, hostile __array__, too deep: name what was wrong
                raise _invalid(app, input_type, _why(x, input_type)) from None
        else:
            raise _invalid(
                app,
                input_type,
                f"got {_describe(x)}; expected a list, tuple or 1-D numpy array of numbers",
            )
        if arr.ndim != 1:
            what = "nested" if arr.ndim > 1 else "a scalar array"
            if arr.ndim == 0 or arr.dtype.kind != "O":
                raise _invalid(app, input_type, f"got a {arr.ndim}-D array ({what}); expected 1-D")
        if arr.size == 0:
            raise _invalid(app, input_type, "got an empty input")
        kind = arr.dtype.kind
        if kind == "O" and from_list and input_type != "integers" and arr.ndim == 1:
            # Python ints past int64 still fit a float: numpy leaves them as objects.
            if _bad_element(x, input_type) is None:
                arr = np.array(x, dtype=dtype)
                kind = "f"
        if kind not in kinds:
            items = arr.tolist() if not from_list else x
            raise _invalid(app, input_type, _why(items, input_type))
        if from_list and not _BOOLS.isdisjoint(map(type, x)):
            raise _invalid(app, input_type, _why(x, input_type))
        if input_type == "integers":
            if arr.dtype != dtype and (arr.min() < _INT32.min or arr.max() > _INT32.max):
                raise _invalid(app, input_type, _why(arr.tolist(), input_type))
        elif arr.dtype != dtype and (input_type == "floats" or arr.dtype.itemsize > 8):
            # Narrowing: to float32, or a longdouble to float64 (which would become inf).
            limit = _FLOAT32_MAX if input_type == "floats" else _FLOAT64_MAX
            finite = arr[np.isfinite(arr)] if kind == "f" else arr
            if finite.size:
                peak = np.abs(finite).max()
                # Compared in the wider type: a longdouble past float64 would become inf.
                wide = peak.dtype.itemsize > 8
                if (peak > np.longdouble(limit)) if wide else float(peak) > limit:
                    raise _invalid(app, input_type, _why(list(arr), input_type))
        # Always a private copy: a caller mutating its array later must not change a
        # queued query or a cached key.
        out = np.array(arr, dtype=dtype, copy=True) if arr is x or arr.dtype != dtype else arr
        out.flags.writeable = False
        return out

    return validate


def _validate_bytes(x: Any, app: str) -> bytes:
    if isinstance(x, bytes | bytearray | memoryview):
        try:
            # The exact builtin, read through the buffer: a subclass's own __bytes__,
            # __eq__ or __hash__ has no say in what the model sees or the cache keys.
            value = x if type(x) is bytes else bytes(memoryview(x))
        except ValueError as exc:  # a released memoryview
            raise _invalid(app, "bytes", f"cannot read the bytes given: {exc}") from None
    elif isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype == np.uint8:
        value = x.tobytes()
    else:
        raise _invalid(app, "bytes", f"got {_describe(x)}; expected bytes or bytearray")
    if not value:
        raise _invalid(app, "bytes", "got an empty input")
    return value


def _validate_string(x: Any, app: str) -> str:
    if not isinstance(x, str):
        raise _invalid(app, "strings", f"got {_describe(x)}; expected str")
    value: str = x if type(x) is str else str.__str__(x)  # exact: a subclass cannot key
    if not value:
        raise _invalid(app, "strings", "got an empty input")
    return value


_IMMUTABLE = frozenset((str, bytes, int, float, bool, complex, type(None)))


def _snapshot(x: Any) -> Any:
    """x as it is now: itself when immutable all the way down (free), else a deep copy,
    so a caller reusing its object after `predict` changes neither what a late batch
    computes nor the key its output is cached under."""
    t = type(x)
    if t in _IMMUTABLE:
        return x
    if t is tuple and all(type(item) in _IMMUTABLE for item in x):
        return x
    try:
        return copy.deepcopy(x)
    except Exception:
        # It cannot be copied: passed as given. It is never cached either: only the
        # types `_freeze` keys make a key, and those always copy.
        return x


def _validate_any(x: Any, app: str) -> Any:
    return _snapshot(x)


def make_validator(input_type: str) -> Validator:
    """The validator for a canonical input type."""
    if input_type in _NUMERIC:
        return _numeric_validator(input_type)
    return {"bytes": _validate_bytes, "strings": _validate_string, "any": _validate_any}[input_type]


def _array_key(x: np.ndarray[Any, Any]) -> Hashable:
    # Validated arrays have a fixed dtype and are 1-D, so the bytes alone identify them.
    key: bytes = x.tobytes()
    return key


def _identity_key(x: Any) -> Hashable:
    key: Hashable = x
    return key


_SCALARS = (str, bytes, int, float, bool, type(None))


_MAX_KEY_DEPTH = 32


def _freeze(x: Any, depth: int = 0) -> Hashable | None:
    """A type-tagged key for an "any" input, or None when it cannot be keyed safely
    (unknown types, or nesting deeper than a key is worth, cycles included)."""
    if depth > _MAX_KEY_DEPTH:
        return None
    t = type(x)
    if t is float:
        return ("float", x.hex())  # tells 0.0 from -0.0, which compare equal
    if t in _SCALARS:
        return (t.__name__, x)
    if t is tuple or t is list:
        parts = []
        for item in x:
            part = _freeze(item, depth + 1)
            if part is None:
                return None
            parts.append(part)
        return (t.__name__, tuple(parts))
    if t is np.ndarray and x.dtype.kind in "biufcSU":
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    return None


def join_key(key: Hashable) -> int:
    """What the feedback join keeps of an input's cache key: a hash of its content that
    only chance makes two inputs share, and that holds nothing of the input.

    A bytes or str key's own hash is that already (SipHash of the content). A
    structured key ("any" inputs) is hashed through its pickle, since Python's hash of
    ints is not random (hash(-1) == hash(-2), hash(2**61) == hash(1)). The pickler runs
    in fast mode, without its memo, so the bytes depend on the key's content only, not
    on which of its parts are one object (the key is a tree of tagged scalars, bytes and
    tuples, with no cycle for fast mode to trip on).
    """
    if type(key) is bytes or type(key) is str:
        return hash(key)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(key)
    return hash(buffer.getvalue())


def make_key_func(input_type: str) -> KeyFunc:
    """The cache-key function for a canonical input type (keys are compared by equality)."""
    if input_type in _NUMERIC:
        return _array_key
    if input_type == "any":
        return _freeze
    return _identity_key
