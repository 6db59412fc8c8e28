"""Bad input: whatever a caller sends, predict raises InvalidInputError or answers.

Over 10k generated inputs across every input type: valid ones get a Prediction,
invalid ones an `InvalidInputError` naming the app (never another exception), and
the Clipper keeps serving. Validation is synchronous, so most examples go to an app
with no linked model (answered at once with the "no linked model" default); some go
to an app whose model echoes a summary of what it was given.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clipperlite import Clipper, ClipperError, InvalidInputError, Prediction

T = TypeVar("T")
TYPES = ("integers", "floats", "doubles", "bytes", "strings", "any")
INT32 = (-(2**31), 2**31 - 1)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def summary(x: Any) -> str:
    """What the echo model answers: the type and size of the input it was given."""
    try:
        size = len(x)
    except Exception:
        size = -1
    return f"{type(x).__name__}:{getattr(x, 'dtype', '-')}:{size}"


def echo_summary(xs: list[Any]) -> list[str]:
    return [summary(x) for x in xs]


@dataclass
class Served:
    """A Clipper running on its own event loop, driven synchronously by the tests."""

    loop: asyncio.AbstractEventLoop
    clipper: Clipper
    checked: int = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def check(self, input_type: str, x: Any, *, valid: bool | None, live: bool = False) -> None:
        """Send x; valid=True must answer, False must raise InvalidInputError, None either."""
        app = f"{'live' if live else 'bare'}-{input_type}"
        self.checked += 1
        try:
            p = self.run(self.clipper.predict(app, x))
        except InvalidInputError as exc:
            assert valid is not True, f"valid {input_type} input {x!r} refused: {exc}"
            assert f"app {app!r}" in str(exc)
            assert exc.app == app
            assert input_type in str(exc)
            return
        assert valid is not False, f"invalid {input_type} input {x!r} accepted: {p}"
        assert isinstance(p, Prediction)
        if live:
            assert not p.default, p
            assert isinstance(p.output, str)
        else:
            assert p.default
            assert p.default_explanation == f"app {app!r} has no linked model"

    def still_serving(self) -> None:
        """A valid query to a model is answered."""
        p = self.run(self.clipper.predict("live-doubles", [1.0, 2.0]))
        assert (p.default, p.output) == (False, "ndarray:float64:2")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    clipper = Clipper(cache_size=1000)
    s = Served(loop, clipper)
    s.run(clipper.start())
    for t in TYPES:
        clipper.register_application(f"bare-{t}", t, "D", 30_000_000)
        clipper.register_application(f"live-{t}", t, "D", 30_000_000)
        s.run(clipper.deploy_model(f"echo-{t}", 1, t, echo_summary))
        clipper.link_model_to_app(f"live-{t}", f"echo-{t}")
    yield s
    s.still_serving()
    print(f"\nbad-input examples checked: {s.checked}")
    s.run(clipper.stop())
    loop.close()


# -- strategies --------------------------------------------------------------------------------
def _generator(items: list[Any]) -> Iterator[Any]:
    return (v for v in items)


scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.complex_numbers(allow_nan=True),
    st.decimals(allow_nan=False, places=2, max_value=10**6, min_value=-(10**6)),
    st.fractions(max_denominator=9),
    st.sampled_from([np.int64(3), np.float32(1.5), np.bool_(True), np.str_("s"), math.nan]),
)
arrays = hnp.arrays(
    dtype=st.sampled_from(
        [
            np.int8,
            np.int32,
            np.int64,
            np.uint8,
            np.uint64,
            np.float16,
            np.float32,
            np.float64,
            np.complex64,
            np.bool_,
            np.dtype("<U3"),
            np.dtype("S3"),
            np.dtype("M8[s]"),
        ]
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
anything = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.frozensets(st.integers(), max_size=3),
        st.lists(inner, max_size=4).map(_generator),
        st.binary(max_size=6).map(bytearray),
        st.binary(max_size=6).map(memoryview),
        st.integers(0, 5).map(range),
    ),
    max_leaves=12,
)


def _with_bad(valid: st.SearchStrategy[list[Any]], bad: st.SearchStrategy[Any]) -> Any:
    """A valid list with one bad element put somewhere in it."""

    def put(args: tuple[list[Any], Any, int]) -> list[Any]:
        items, b, at = args
        items = list(items)
        items.insert(at % (len(items) + 1), b)
        return items

    return st.tuples(valid, bad, st.integers(0, 10)).map(put)


def _seq(elements: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    lists = st.lists(elements, min_size=1, max_size=8)
    return st.one_of(lists, lists.map(tuple))


int32s = st.integers(*INT32)
valid_ints = st.one_of(
    _seq(int32s),
    _seq(int32s.map(np.int64)),
    hnp.arrays(
        st.sampled_from([np.int8, np.int16, np.int32, np.uint8, np.uint16]), st.integers(1, 8)
    ),
    hnp.arrays(np.int64, st.integers(1, 8), elements=int32s),
)
float32s = st.floats(width=32)
valid_floats = st.one_of(
    _seq(st.one_of(float32s, st.integers(-(2**24), 2**24))),
    hnp.arrays(st.sampled_from([np.float16, np.float32, np.int16]), st.integers(1, 8)),
    hnp.arrays(np.float64, st.integers(1, 8), elements=float32s),
)
valid_doubles = st.one_of(
    _seq(st.one_of(st.floats(), st.integers(-(2**53), 2**53))),
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64, np.int64, np.uint32]),
        st.integers(1, 8),
    ),
)
valid_bytes = st.one_of(
    st.binary(min_size=1),
    st.binary(min_size=1).map(bytearray),
    st.binary(min_size=1).map(memoryview),
    hnp.arrays(np.uint8, st.integers(1, 16)),
)
valid_strings = st.text(min_size=1)

VALID: dict[str, st.SearchStrategy[Any]] = {
    "integers": valid_ints,
    "floats": valid_floats,
    "doubles": valid_doubles,
    "bytes": valid_bytes,
    "strings": valid_strings,
    "any": anything,
}

not_a_number = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.complex_numbers(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
not_a_sequence = st.one_of(
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.text(),
    st.binary(),
    st.dictionaries(st.integers(), st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.lists(st.integers(), max_size=3).map(_generator),
)
wrong_arrays = st.one_of(
    hnp.arrays(
        st.sampled_from(
            [np.complex64, np.bool_, np.dtype("<U3"), np.dtype("S3"), np.dtype("M8[s]")]
        ),
        st.integers(1, 5),
    ),
    hnp.arrays(np.int32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3)),
    hnp.arrays(np.float64, st.just(())),
    hnp.arrays(np.float64, st.just((0,))),
)
_empty = st.sampled_from([[], ()])

INVALID: dict[str, st.SearchStrategy[Any]] = {
    "integers": st.one_of(
        _empty,
        not_a_sequence,
        wrong_arrays,
        hnp.arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 5)),
        _with_bad(_seq(int32s).map(list), not_a_number),
        _with_bad(_seq(int32s).map(list), st.floats()),  # NaN, inf, 1.0: not integers
        _with_bad(
            _seq(int32s).map(list),
            st.one_of(st.integers(min_value=2**31), st.integers(max_value=-(2**31) - 1)),
        ),
        hnp.arrays(np.int64, st.integers(1, 5), elements=st.integers(2**31, 2**62)),
    ),
    "floats": st.one_of(
        _empty,
        not_a_sequence,
        wrong_arrays,
        _with_bad(_seq(float32s).map(list), not_a_number),
        _with_bad(
            _seq(float32s).map(list),
            st.one_of(
                st.floats(min_value=FLOAT32_MAX * 1.01, allow_infinity=False),
                st.integers(min_value=2**129),
            ),
        ),
    ),
    "doubles": st.one_of(
        _empty,
        not_a_sequence,
        wrong_arrays,
        _with_bad(_seq(st.floats()).map(list), not_a_number),
        _with_bad(_seq(st.floats()).map(list), st.integers(min_value=2**1025)),
    ),
    "bytes": st.one_of(
        st.sampled_from([b"", bytearray(), memoryview(b"")]),
        st.text(),
        st.lists(st.integers(0, 255), max_size=4),
        st.integers(),
        st.none(),
        st.booleans(),
        st.dictionaries(st.binary(max_size=2), st.binary(max_size=2), max_size=2),
        hnp.arrays(
            st.sampled_from([np.int8, np.int64, np.float32, np.dtype("S2")]), st.integers(1, 5)
        ),
        hnp.arrays(np.uint8, st.sampled_from([(0,), (2, 2), ()])),
    ),
    "strings": st.one_of(
        st.just(""),
        st.binary(),
        st.lists(st.text(max_size=3), max_size=3),
        st.integers(),
        st.none(),
        st.booleans(),
        st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
        hnp.arrays(np.dtype("<U3"), st.integers(1, 3)),
    ),
}

SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# -- the properties ----------------------------------------------------------------------------
@pytest.mark.parametrize("input_type", TYPES)
@settings(max_examples=500, **SETTINGS)
@given(data=st.data())
def test_valid_inputs_are_answered(served: Served, input_type: str, data: st.DataObject) -> None:
    """A valid input of each type gets a Prediction (the no-model default for a bare app)."""
    x = data.draw(VALID[input_type])
    served.check(input_type, x, valid=True)


@pytest.mark.parametrize("input_type", TYPES)
@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_valid_inputs_reach_the_model(served: Served, input_type: str, data: st.DataObject) -> None:
    """A valid input of each type reaches a linked model and gets its answer."""
    x = data.draw(VALID[input_type])
    served.check(input_type, x, valid=True, live=True)


@pytest.mark.parametrize("input_type", [t for t in TYPES if t != "any"])
@settings(max_examples=700, **SETTINGS)
@given(data=st.data())
def test_invalid_inputs_raise_invalid_input_error(
    served: Served, input_type: str, data: st.DataObject
) -> None:
    """An input that does not fit its type raises InvalidInputError naming the app."""
    x = data.draw(INVALID[input_type])
    served.check(input_type, x, valid=False)


@pytest.mark.parametrize("input_type", TYPES)
@settings(max_examples=500, **SETTINGS)
@given(x=anything)
def test_anything_raises_only_invalid_input_error(served: Served, input_type: str, x: Any) -> None:
    """Any value at all: a Prediction or InvalidInputError, never another exception."""
    served.check(input_type, x, valid=True if input_type == "any" else None)


@pytest.mark.parametrize("input_type", TYPES)
@settings(max_examples=100, **SETTINGS)
@given(x=anything)
def test_anything_is_safe_for_a_linked_model(served: Served, input_type: str, x: Any) -> None:
    """Any value sent to an app with a model raises at most InvalidInputError."""
    served.check(input_type, x, valid=True if input_type == "any" else None, live=True)


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
def test_numpy_bools_are_not_numbers(served: Served, input_type: str) -> None:
    """A numpy bool in a list is refused like a Python bool (not taken as 0 or 1)."""
    for x in ([np.False_, 0], [1, np.True_], (np.bool_(True),)):
        served.check(input_type, x, valid=False)
    served.check(input_type, [False, 0], valid=False)


# -- batches -------------------------------------------------------------------------------------
@settings(max_examples=200, **SETTINGS)
@given(
    good=st.lists(valid_doubles, min_size=1, max_size=4),
    bad=INVALID["doubles"],
    at=st.integers(0, 4),
)
def test_predict_batch_validates_every_input_first(
    served: Served, good: list[Any], bad: Any, at: int
) -> None:
    """One invalid input fails the whole predict_batch before anything is queued."""
    xs = list(good)
    xs.insert(at % (len(xs) + 1), bad)
    before = served.clipper.metrics()["apps"]["live-doubles"]["queries"]
    with pytest.raises(InvalidInputError, match="live-doubles"):
        served.run(served.clipper.predict_batch("live-doubles", xs))
    assert served.clipper.metrics()["apps"]["live-doubles"]["queries"] == before
    served.checked += 1


def test_predict_batch_needs_a_sequence(served: Served) -> None:
    """predict_batch refuses a non-sequence with a ClipperError, not a TypeError."""
    for xs in (None, 3, "abc", b"abc", {"a": 1}, (x for x in [[1.0]])):
        with pytest.raises(ClipperError):
            served.run(served.clipper.predict_batch("live-doubles", xs))  # type: ignore[arg-type]
    served.still_serving()


# -- hostile values --------------------------------------------------------------------------
def _deep(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


def _cycle() -> list[Any]:
    x: list[Any] = [1.0]
    x.append(x)
    return x


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def _released() -> memoryview:
    m = memoryview(b"abc")
    m.release()
    return m


HOSTILE: dict[str, Callable[[], Any]] = {
    "deep-list": lambda: _deep(5000),
    "self-referencing-list": _cycle,
    "deep-list-element": lambda: [1.0, _deep(5000)],
    "broken-repr": _BadRepr,
    "broken-repr-element": lambda: [1.0, _BadRepr()],
    "released-memoryview": _released,
}


def _leaks(served: Served, input_type: str, x: Any, *, live: bool) -> str | None:
    """The exception other than InvalidInputError that predict let out, if any."""
    try:
        served.check(input_type, x, valid=True if input_type == "any" else None, live=live)
    except AssertionError:
        raise
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_hostile_values_raise_only_invalid_input_error(served: Served, hostile: str) -> None:
    """Deep, cyclic or unprintable values raise only InvalidInputError, for every type."""
    leaked = {}
    for input_type in TYPES:
        for live in (False, True):
            problem = _leaks(served, input_type, HOSTILE[hostile](), live=live)
            if problem is not None:
                leaked[f"{input_type}{'-live' if live else ''}"] = problem
    served.still_serving()
    assert leaked == {}
