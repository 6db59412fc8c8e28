"""Input types: names and aliases, validation into private arrays, and cache keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipperlite import ClipperError, InvalidInputError
from clipperlite._inputs import (
    INPUT_TYPES,
    make_key_func,
    make_validator,
    normalize_input_type,
)

APP = "my-app"

NUMERIC_DTYPES = {
    "integers": np.dtype(np.int32),
    "floats": np.dtype(np.float32),
    "doubles": np.dtype(np.float64),
}


def validate(input_type: str, x: Any) -> Any:
    return make_validator(input_type)(x, APP)


def rejection(input_type: str, x: Any) -> InvalidInputError:
    """The InvalidInputError that validating x raises (fails the test if none is raised)."""
    with pytest.raises(InvalidInputError) as info:
        validate(input_type, x)
    return info.value


# -- input type names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["integers", "floats", "doubles", "bytes", "strings", "any"])
def test_canonical_names_map_to_themselves(name: str) -> None:
    """Each of Clipper's six input type names is its own canonical name."""
    assert normalize_input_type(name) == name
    assert name in INPUT_TYPES


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("integer", "integers"),
        ("ints", "integers"),
        ("int", "integers"),
        ("float", "floats"),
        ("double", "doubles"),
        ("byte", "bytes"),
        ("string", "strings"),
        ("strs", "strings"),
        ("str", "strings"),
    ],
)
def test_aliases_map_to_canonical_names(alias: str, canonical: str) -> None:
    """Clipper's aliases ('ints', 'double', 'str', ...) name the canonical input types."""
    assert normalize_input_type(alias) == canonical


@pytest.mark.parametrize(
    ("given_name", "canonical"), [("Doubles", "doubles"), (" INTS ", "integers")]
)
def test_names_ignore_case_and_surrounding_space(given_name: str, canonical: str) -> None:
    """Input type names are matched case-insensitively, ignoring surrounding whitespace."""
    assert normalize_input_type(given_name) == canonical


@pytest.mark.parametrize("name", ["tensor", "", "integerss", None, 3, b"ints"])
def test_unknown_input_type_is_a_clipper_error_listing_the_choices(name: object) -> None:
    """An unknown input type raises ClipperError naming it and listing the valid types."""
    with pytest.raises(ClipperError) as info:
        normalize_input_type(name)
    message = str(info.value)
    assert repr(name) in message
    for canonical in INPUT_TYPES:
        assert canonical in message


# -- good numeric inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "x", "expected"),
    [
        ("integers", [1, -2, 3], [1, -2, 3]),
        ("integers", (4, 5), [4, 5]),
        ("integers", np.array([7, 8], dtype=np.int64), [7, 8]),
        ("integers", np.array([7, 8], dtype=np.uint8), [7, 8]),
        ("integers", np.array([7, 8], dtype=">i4"), [7, 8]),
        ("integers", [np.int32(3), np.int64(4)], [3, 4]),
        ("integers", [-(2**31), 2**31 - 1], [-(2**31), 2**31 - 1]),
        ("floats", [1.5, -2.25], [1.5, -2.25]),
        ("floats", [1, 2], [1.0, 2.0]),
        ("floats", (0.5,), [0.5]),
        ("floats", np.array([1.0, 2.0], dtype=np.float64), [1.0, 2.0]),
        ("floats", [1e38, -1e38], [np.float32(1e38), np.float32(-1e38)]),
        ("doubles", [1.1, 2.2, 3.3], [1.1, 2.2, 3.3]),
        ("doubles", (1, 2), [1.0, 2.0]),
        ("doubles", np.array([1.5, 2.5], dtype=np.float32), [1.5, 2.5]),
        ("doubles", np.array([1, 2], dtype=np.int16), [1.0, 2.0]),
        ("doubles", [np.float32(0.5), 2], [0.5, 2.0]),
        ("doubles", [1e300], [1e300]),
    ],
)
def test_numeric_inputs_become_1d_arrays_of_the_types_dtype(
    input_type: str, x: Any, expected: list[float]
) -> None:
    """Lists, tuples and arrays of numbers become 1-D int32/float32/float64 arrays."""
    out = validate(input_type, x)
    assert isinstance(out, np.ndarray)
    assert out.ndim == 1
    assert out.dtype == NUMERIC_DTYPES[input_type]
    assert out.tolist() == expected


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
@pytest.mark.parametrize("kind", ["list", "tuple", "array", "array-of-own-dtype"])
def test_validated_arrays_are_read_only(input_type: str, kind: str) -> None:
    """A validated input cannot be written to (a queued query or cache key cannot change)."""
    values = [1, 2, 3]
    x: Any = {
        "list": values,
        "tuple": tuple(values),
        "array": np.array(values, dtype=np.int64),
        "array-of-own-dtype": np.array(values, dtype=NUMERIC_DTYPES[input_type]),
    }[kind]
    out = validate(input_type, x)
    assert out.flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 99


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
@pytest.mark.parametrize("same_dtype", [True, False])
def test_mutating_the_callers_array_afterwards_does_not_change_the_validated_one(
    input_type: str, same_dtype: bool
) -> None:
    """Validation takes a private copy, even when the caller's array already has the dtype."""
    dtype = NUMERIC_DTYPES[input_type] if same_dtype else np.dtype(np.int16)
    caller = np.array([1, 2, 3], dtype=dtype)
    out = validate(input_type, caller)
    caller[:] = 42
    assert out.tolist() == [1, 2, 3]
    assert not np.shares_memory(out, caller)


def test_caller_array_stays_writable_after_validation() -> None:
    """Validation does not freeze the caller's own array, only its private copy."""
    caller = np.array([1.0, 2.0])
    validate("doubles", caller)
    assert caller.flags.writeable is True


def test_mutating_the_callers_list_afterwards_does_not_change_the_validated_one() -> None:
    """A list appended to or overwritten after validation leaves the validated input alone."""
    caller = [1.0, 2.0]
    out = validate("doubles", caller)
    caller[0] = 99.0
    caller.append(3.0)
    assert out.tolist() == [1.0, 2.0]


# -- good bytes, strings and any ------------------------------------------------------------


@pytest.mark.parametrize(
    "x",
    [b"abc", bytearray(b"abc"), memoryview(b"abc"), np.frombuffer(b"abc", dtype=np.uint8)],
)
def test_bytes_like_inputs_become_bytes(x: Any) -> None:
    """bytes, bytearray, memoryview and uint8 arrays all become immutable bytes."""
    out = validate("bytes", x)
    assert type(out) is bytes
    assert out == b"abc"


def test_bytearray_mutated_afterwards_does_not_change_the_validated_bytes() -> None:
    """A bytes input is copied: changing the caller's bytearray later changes nothing."""
    caller = bytearray(b"abc")
    out = validate("bytes", caller)
    caller[0] = ord("z")
    assert out == b"abc"


def test_strings_pass_through() -> None:
    """A non-empty str is a valid "strings" input, unchanged."""
    assert validate("strings", "hello") == "hello"


@pytest.mark.parametrize("x", [None, b"", 0, "s", 1.5, (1, "a")])
def test_any_passes_immutable_inputs_through_untouched(x: Any) -> None:
    """The "any" type hands an immutable input to the models as the very same object."""
    assert validate("any", x) is x


@pytest.mark.parametrize("x", [[1, "a"], {"k": [1]}, ([1],)])
def test_any_hands_over_a_snapshot_of_a_mutable_input(x: Any) -> None:
    """A mutable "any" input is deep-copied: the caller reusing it changes nothing queued."""
    out = validate("any", x)
    assert out == x and out is not x


# -- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "x", "what"),
    [
        # nested
        ("integers", [1, [2]], ["element 1", "[2]", "nested"]),
        ("doubles", [[1.0], [2.0, 3.0]], ["element 0", "[1.0]", "nested"]),
        ("doubles", [[1.0], [2.0]], ["nested"]),
        ("floats", np.ones((2, 2)), ["2-D", "nested"]),
        ("doubles", np.array(5.0), ["0-D"]),
        # empty
        ("integers", [], ["empty"]),
        ("doubles", (), ["empty"]),
        ("floats", np.array([], dtype=np.float32), ["empty"]),
        ("bytes", b"", ["empty"]),
        ("strings", "", ["empty"]),
        # None, as the input or as an element
        ("doubles", None, ["None"]),
        ("integers", [1, None], ["element 1", "None"]),
        ("bytes", None, ["None"]),
        ("strings", None, ["None"]),
        # strings among numbers, and strings for numbers
        ("doubles", [1.0, "abc"], ["element 1", "'abc'", "str"]),
        ("integers", ["1"], ["element 0", "'1'", "str"]),
        ("floats", np.array(["a", "b"]), ["element 0", "'a'"]),
        ("doubles", "1.0, 2.0", ["'1.0, 2.0'", "str"]),
        ("doubles", [b"x"], ["element 0", "b'x'", "bytes"]),
        ("doubles", [1 + 2j], ["element 0", "(1+2j)", "complex"]),
        # bools are not numbers here
        ("integers", [True, 2], ["element 0", "True", "bool"]),
        ("doubles", [1.0, False], ["element 1", "False", "bool"]),
        ("floats", np.array([True, False]), ["element 0", "True", "bool"]),
        # NaN, fractions for integers
        ("integers", [1, float("nan")], ["element 1", "nan", "integer"]),
        ("integers", np.array([np.nan]), ["element 0", "nan"]),
        ("integers", [2.5], ["element 0", "2.5", "integer"]),
        # out of the int32 range
        ("integers", [1, 2**31], ["element 1", str(2**31), "int32"]),
        ("integers", [-(2**31) - 1], ["element 0", str(-(2**31) - 1), "int32"]),
        ("integers", np.array([0, 2**40]), ["element 1", str(2**40), "int32"]),
        ("integers", np.array([2**63], dtype=np.uint64), ["element 0", str(2**63), "int32"]),
        # huge Python ints
        ("integers", [1, 2**100], ["element 1", str(2**100), "int32"]),
        ("integers", [2**64], ["element 0", str(2**64), "int32"]),
        ("floats", [2**200], ["element 0", "float32"]),
        ("doubles", [2**70, "a"], ["element 1", "'a'", "str"]),
        ("doubles", [2**70, None], ["element 1", "None"]),
        # out of the float32 range
        ("floats", [1.0, 1e39], ["element 1", "1e+39", "float32"]),
        ("floats", [-1e39], ["element 0", "-1e+39", "float32"]),
        ("floats", np.array([1e300]), ["element 0", "1e+300", "float32"]),
        # not a sequence
        ("doubles", (v for v in [1.0, 2.0]), ["generator"]),
        ("integers", {1: 2}, ["dict"]),
        ("integers", {1, 2}, ["set"]),
        ("doubles", 3.0, ["3.0", "float"]),
        # bytes for strings, str for bytes
        ("strings", b"abc", ["b'abc'", "bytes"]),
        ("bytes", "abc", ["'abc'", "str"]),
        ("bytes", [1, 2], ["[1, 2]", "list"]),
        ("bytes", np.array([1, 2], dtype=np.int64), ["ndarray"]),
        ("strings", 5, ["5", "int"]),
    ],
)
def test_bad_inputs_raise_invalid_input_naming_app_type_and_offender(
    input_type: str, x: Any, what: list[str]
) -> None:
    """A bad input raises InvalidInputError naming the app, the expected type and the offender."""
    error = rejection(input_type, x)
    message = str(error)
    assert f"app {APP!r}" in message
    assert input_type in message
    for fragment in what:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert error.app == APP
    assert error.input_type == input_type
    assert isinstance(error, ValueError)
    assert isinstance(error, ClipperError)


def test_huge_python_int_for_floats_is_invalid_input() -> None:
    """An int too large for any float is an InvalidInputError for "floats", not an OverflowError."""
    message = str(rejection("floats", [1.0, 10**400]))
    assert "element 1" in message
    assert "float32" in message


def test_huge_python_int_for_doubles_names_the_element() -> None:
    """An int beyond the float64 range is refused for "doubles", naming the element."""
    message = str(rejection("doubles", [1.0, 2**1030]))
    assert "element 1" in message


@pytest.mark.parametrize(
    ("input_type", "x"),
    [("doubles", [1.5, 2**70]), ("doubles", (2**70, float("inf"))), ("floats", [2**70, 0.25])],
)
def test_float_types_accept_python_ints_past_int64_that_they_can_hold(
    input_type: str, x: Any
) -> None:
    """A Python int beyond int64 but inside the float type's range is a valid element."""
    out = validate(input_type, x)
    assert out.dtype == NUMERIC_DTYPES[input_type]
    assert out.flags.writeable is False
    np.testing.assert_array_equal(out, np.array([float(v) for v in x], dtype=out.dtype))


def test_long_offending_values_are_shortened_in_the_message() -> None:
    """A huge offending element is abbreviated, so the message stays readable."""
    message = str(rejection("strings", b"x" * 10_000))
    assert len(message) < 200
    assert "..." in message


# -- cache keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
def test_equal_numeric_inputs_give_equal_keys_whatever_their_container(input_type: str) -> None:
    """A list, a tuple and an array of the same numbers validate to the same cache key."""
    key = make_key_func(input_type)
    keys = {
        key(validate(input_type, x))
        for x in ([1, 2, 3], (1, 2, 3), np.array([1, 2, 3]), np.array([1, 2, 3], dtype=np.int16))
    }
    assert len(keys) == 1


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
def test_different_numeric_inputs_give_different_keys(input_type: str) -> None:
    """Different values, orders or lengths give different keys."""
    key = make_key_func(input_type)
    inputs = [[1, 2, 3], [3, 2, 1], [1, 2], [1, 2, 3, 0], [1, 2, 4], [0, 0, 0]]
    keys = [key(validate(input_type, x)) for x in inputs]
    assert len(set(keys)) == len(inputs)


@pytest.mark.parametrize("input_type", ["integers", "floats", "doubles"])
def test_numeric_keys_are_the_full_bytes_not_a_hash(input_type: str) -> None:
    """A numeric key is the array's whole content as bytes, so decoding it gives the array back."""
    out = validate(input_type, list(range(1000)))
    key = make_key_func(input_type)(out)
    assert isinstance(key, bytes)
    assert len(key) == out.nbytes
    np.testing.assert_array_equal(np.frombuffer(key, dtype=out.dtype), out)


def test_numeric_keys_compare_by_full_content() -> None:
    """Two long inputs differing in one late element never share a key, nor in the sign of zero."""
    key = make_key_func("doubles")
    a = np.zeros(10_000)
    b = a.copy()
    b[-1] = np.nextafter(0.0, 1.0)  # the smallest possible difference, in the last element
    assert key(validate("doubles", a)) != key(validate("doubles", b))
    assert key(validate("doubles", [0.0])) != key(validate("doubles", [-0.0]))


def test_numeric_keys_keep_both_inputs_apart_in_a_dict() -> None:
    """Keys used in a dict keep inputs with different content in different entries."""
    key = make_key_func("integers")
    table = {key(validate("integers", [i, i + 1])): i for i in range(100)}
    assert len(table) == 100
    assert table[key(validate("integers", [41, 42]))] == 41


def test_string_and_bytes_keys_are_the_values() -> None:
    """Strings and bytes key by value: equal values share a key, different values do not."""
    assert make_key_func("strings")("abc") == make_key_func("strings")("ab" + "c")
    assert make_key_func("strings")("abc") != make_key_func("strings")("abd")
    assert make_key_func("bytes")(b"abc") != make_key_func("bytes")(b"abd")


def test_any_keys_are_type_tagged() -> None:
    """For "any", 1, 1.0 and True (all equal in Python) get three different keys."""
    key = make_key_func("any")
    keys = [key(1), key(1.0), key(True)]
    assert None not in keys
    assert len(set(keys)) == 3
    assert key("1") != key(b"1")
    assert key([1]) != key((1,))
    assert key([1]) != key([1.0])
    assert key(None) != key(0)


def test_any_keys_are_equal_for_equal_inputs() -> None:
    """Equal plain values, nested lists and arrays of one dtype and shape share a key."""
    key = make_key_func("any")
    assert key([1, ("a", b"b"), None]) == key([1, ("a", b"b"), None])
    assert key(np.array([1.0, 2.0])) == key(np.array([1.0, 2.0]))
    assert hash(key([1, [2.5, "x"]])) == hash(key([1, [2.5, "x"]]))


def test_any_array_keys_include_dtype_and_shape() -> None:
    """Arrays with the same bytes but another dtype or shape get different "any" keys."""
    key = make_key_func("any")
    zeros_i8 = np.zeros(1, dtype=np.int64)
    zeros_f8 = np.zeros(1, dtype=np.float64)
    assert zeros_i8.tobytes() == zeros_f8.tobytes()
    assert key(zeros_i8) != key(zeros_f8)
    assert key(np.zeros(4, dtype=np.int8)) != key(np.zeros((2, 2), dtype=np.int8))


def test_any_keys_tell_zero_from_negative_zero() -> None:
    """0.0 and -0.0 (equal in Python, different inputs to a model) get different "any" keys."""
    key = make_key_func("any")
    assert key(0.0) != key(-0.0)
    assert key([0.0]) != key([-0.0])


@pytest.mark.parametrize(
    "x",
    [
        object(),
        {"a": 1},
        {1, 2},
        [1, object()],
        (1, [2, {"k": 3}]),
        np.array([1, None], dtype=object),
        np.float64(1.0),
    ],
)
def test_unkeyable_any_inputs_get_no_key(x: Any) -> None:
    """An "any" input that cannot be keyed safely gets None (it is not cached)."""
    assert make_key_func("any")(x) is None


def test_any_key_of_a_subclass_is_none() -> None:
    """A subclass of a plain type may redefine equality, so it is not keyed."""

    class Weird(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    assert make_key_func("any")(Weird(1)) is None


# -- properties --------------------------------------------------------------------------------


@given(st.lists(st.floats(), min_size=1, max_size=50))
def test_any_list_of_doubles_validates_and_its_key_round_trips(values: list[float]) -> None:
    """For any list of Python floats, "doubles" validation succeeds and the key decodes back."""
    out = validate("doubles", values)
    key = make_key_func("doubles")(out)
    assert isinstance(key, bytes)
    decoded = np.frombuffer(key, dtype=np.float64)
    np.testing.assert_array_equal(decoded, out)
    np.testing.assert_array_equal(decoded, np.array(values))


@given(st.lists(st.floats(width=32), min_size=1, max_size=50))
def test_any_list_of_float32_values_validates_and_its_key_round_trips(values: list[float]) -> None:
    """For any list of float32-representable numbers, "floats" validation keeps them exactly."""
    out = validate("floats", values)
    key = make_key_func("floats")(out)
    assert isinstance(key, bytes)
    np.testing.assert_array_equal(np.frombuffer(key, dtype=np.float32), np.array(values))


@given(
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=20),
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=20),
)
def test_doubles_keys_are_equal_exactly_when_the_bits_are(a: list[float], b: list[float]) -> None:
    """Two "doubles" inputs share a key if and only if their float64 bits are identical."""
    key = make_key_func("doubles")
    va, vb = validate("doubles", a), validate("doubles", b)
    assert (key(va) == key(vb)) == (va.tobytes() == vb.tobytes())
