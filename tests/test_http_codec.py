"""The Clipper-JSON codec alone: request bodies in, predictions and errors out, at volume."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="the http extra is not installed")

from clipperlite import Prediction
from clipperlite.http import _codec
from clipperlite.http._codec import RequestError

INPUT_TYPES = ("integers", "floats", "doubles", "bytes", "strings", "any")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
    allow_infinity=False) | st.text()  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)
#: Enough generated cases to find the odd one, cheap enough for a 2-core CI machine.
VOLUME = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LARGE = settings(max_examples=1000, deadline=None)


def strict(value: Any) -> Any:
    """`value` through strict JSON and back (what a client would receive)."""
    return json.loads(_codec.dumps(value))


# -- parsing ---------------------------------------------------------------------------------


@VOLUME
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
def test_any_json_object_parses_to_itself(obj: dict[str, Any]) -> None:
    """A JSON object body parses to the same members."""
    assert _codec.parse_json(json.dumps(obj).encode()) == obj


@LARGE
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_request_error(body: bytes) -> None:
    """Any byte string is an object or a RequestError, never another exception."""
    try:
        assert isinstance(_codec.parse_json(body), dict)
    except RequestError as exc:
        assert exc.error in {"malformed JSON", "malformed request"}


@VOLUME
@given(json_scalars | st.lists(json_values, max_size=4))
def test_a_body_that_is_not_an_object_is_refused(value: Any) -> None:
    """A JSON array, string, number or null body is a malformed request."""
    with pytest.raises(RequestError, match="must be a JSON object"):
        _codec.parse_json(json.dumps(value).encode())


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(constant: str) -> None:
    """Python's lenient JSON constants are refused: strict JSON only."""
    with pytest.raises(RequestError, match="malformed JSON"):
        _codec.parse_json(b'{"input": [%s]}' % constant.encode())


def test_deep_nesting_is_a_request_error() -> None:
    """A body nested past the parser's recursion limit is malformed, not a crash."""
    with pytest.raises(RequestError, match="malformed JSON"):
        _codec.parse_json(b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_invalid_utf8_is_malformed() -> None:
    """Bytes that are not UTF-8 text are malformed JSON."""
    with pytest.raises(RequestError, match="malformed JSON"):
        _codec.parse_json(b'{"input": "\xff\xfe\xfa"}')


# -- inputs --------------------------------------------------------------------------------------


@LARGE
@given(st.binary(min_size=0, max_size=300))
def test_bytes_round_trip_through_base64(data: bytes) -> None:
    """encode_input then decode_input gives the same bytes back."""
    wire = _codec.encode_input(data, "bytes")
    assert isinstance(wire, str)
    assert _codec.decode_input(strict(wire), "bytes") == data


@VOLUME
@given(st.text(min_size=1).filter(lambda s: not _is_base64(s)))
def test_strings_that_are_not_base64_are_refused_for_bytes(text: str) -> None:
    """A bytes input that is not strict base64 is an invalid input."""
    with pytest.raises(RequestError, match="base64"):
        _codec.decode_input(text, "bytes")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


@given(json_values.filter(lambda v: not isinstance(v, str)))
def test_bytes_inputs_must_be_strings(value: Any) -> None:
    """A bytes input of any other JSON type is refused, naming the type."""
    with pytest.raises(RequestError, match="base64 strings"):
        _codec.decode_input(value, "bytes")


@VOLUME
@given(st.sampled_from([t for t in INPUT_TYPES if t != "bytes"]), json_values)
def test_other_inputs_pass_through_for_the_clipper_to_check(input_type: str, value: Any) -> None:
    """Numbers, lists, strings and any value reach the Clipper as JSON gave them."""
    assert _codec.decode_input(value, input_type) == value


@pytest.mark.parametrize(
    ("value", "input_type", "wire"),
    [
        (np.array([1.5, 2.0]), "doubles", [1.5, 2.0]),
        (np.array([1, 2], dtype=np.int32), "integers", [1, 2]),
        ("hi", "strings", "hi"),
        ({"a": 1}, "any", {"a": 1}),
    ],
)
def test_encode_input_is_what_a_client_sends(value: Any, input_type: str, wire: Any) -> None:
    """Inputs as models see them become the JSON a client sends."""
    assert _codec.encode_input(value, input_type) == wire


# -- request shapes ------------------------------------------------------------------------------

request_fields = st.fixed_dictionaries(
    {},
    optional={
        "input": json_values,
        "input_batch": json_values | st.lists(json_values, max_size=4),
        "label": json_values,
        "slo_micros": json_values,
        "context": json_values,
        "uid": json_values,
    },
)


@VOLUME
@given(request_fields, st.sampled_from(INPUT_TYPES))
def test_predict_bodies_decode_or_raise_request_error(
    body: dict[str, Any], input_type: str
) -> None:
    """Every generated predict body decodes to a request or raises RequestError, nothing else."""
    try:
        req = _codec.decode_predict(body, input_type)
    except RequestError as exc:
        assert exc.cause
        return
    assert ("input" in body) != ("input_batch" in body)
    assert req.batch == ("input_batch" in body)
    assert len(req.inputs) == (len(body["input_batch"]) if req.batch else 1)
    assert req.slo_micros is None or (req.slo_micros > 0 and math.isfinite(req.slo_micros))


@VOLUME
@given(request_fields, st.sampled_from(INPUT_TYPES))
def test_update_bodies_decode_or_raise_request_error(body: dict[str, Any], input_type: str) -> None:
    """Every generated update body decodes to a request or raises RequestError, nothing else."""
    try:
        req = _codec.decode_update(body, input_type)
    except RequestError:
        assert (
            "input" not in body
            or "label" not in body
            or input_type == "bytes"
            or ("context" in body and isinstance(body["context"], list | dict))
        )
        return
    assert req.label == body["label"]


def test_the_quickstart_body_decodes() -> None:
    """Clipper's quickstart body is one doubles input with the app's SLO."""
    req = _codec.decode_predict({"input": [1.1, 2.2, 3.3]}, "doubles")
    assert (req.inputs, req.batch, req.slo_micros, req.context) == (
        [[1.1, 2.2, 3.3]],
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        ({}, "missing 'input'"),
        ({"input": 1, "input_batch": [1]}, "both"),
        ({"input_batch": 3}, "must be a list"),
        ({"input": [1], "slo_micros": "fast"}, "'slo_micros' must be a number"),
        ({"input": [1], "slo_micros": True}, "'slo_micros' must be a number"),
        ({"input": [1], "slo_micros": -5}, "must be > 0"),
        ({"input": [1], "slo_micros": 1e400}, "must be > 0"),
        ({"input": [1], "context": [1, 2]}, "'context' must be"),
    ],
)
def test_malformed_predict_bodies_say_what_is_wrong(body: dict[str, Any], cause: str) -> None:
    """Each malformed predict body's cause names the field and what was expected."""
    with pytest.raises(RequestError) as info:
        _codec.decode_predict(body, "doubles")
    assert cause in info.value.cause


def test_a_bad_element_of_a_bytes_batch_is_named() -> None:
    """The cause of a bad batch input says which input it is."""
    with pytest.raises(RequestError, match="input 1 of the batch"):
        _codec.decode_predict({"input_batch": ["aGk=", 7]}, "bytes")


@pytest.mark.parametrize("missing", ["input", "label"])
def test_update_needs_input_and_label(missing: str) -> None:
    """An update without its input or label is malformed, naming the field."""
    body = {"input": [1.0], "label": 1.0, "uid": 0}
    del body[missing]
    with pytest.raises(RequestError, match=f"missing '{missing}'"):
        _codec.decode_update(body, "doubles")


# -- outputs -------------------------------------------------------------------------------------

numpy_values = st.one_of(
    st.integers(-(2**62), 2**62).map(np.int64),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.booleans().map(np.bool_),
    st.lists(st.floats(), max_size=6).map(np.array),
    st.lists(st.integers(-1000, 1000), max_size=6).map(lambda v: np.array(v, dtype=np.int32)),
)
anything = st.recursive(
    json_scalars | st.floats() | numpy_values | st.binary(max_size=8) | st.just(object()),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=4)
    ),
    max_leaves=16,
)


@VOLUME
@given(anything)
def test_every_output_encodes_to_strict_json(value: Any) -> None:
    """Whatever a model returns, the answer is strict JSON (never NaN, never an error)."""
    encoded = _codec.encode_output(value)
    assert strict(encoded) == encoded or _has_float(encoded)


def _has_float(value: Any) -> bool:
    """Float formatting may differ in the last digit after a round trip: compare loosely."""
    return isinstance(value, float) or (
        isinstance(value, list | dict)
        and any(_has_float(v) for v in (value.values() if isinstance(value, dict) else value))
    )


@VOLUME
@given(json_values)
def test_a_str_output_holding_json_is_sent_as_that_value(value: Any) -> None:
    """A `str` output that is valid JSON is sent as the JSON value (Clipper's behaviour)."""
    assert _codec.encode_output(json.dumps(value)) == value


@pytest.mark.parametrize(
    ("output", "wire"),
    [
        ("6.6", 6.6),
        ("not json", "not json"),
        ("NaN", "NaN"),
        (np.float64(6.6), 6.6),
        (np.int32(3), 3),
        (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (np.array([1.0, np.nan]), [1.0, "nan"]),
        (float("inf"), "inf"),
        ((1, "a"), [1, "a"]),
        ({1: np.float32(0.5)}, {"1": 0.5}),
        (b"\x00ab", "b'\\x00ab'"),
        (None, None),
        ("1e400", "1e400"),
        ("[1, 1e400]", "[1, 1e400]"),
        (np.longdouble(1.5), 1.5),
        (np.clongdouble(1 + 2j), "(1+2j)"),
        (10**400, 10**400),
        (10**5000, "<int of 16610 bits>"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_outputs_become_json(output: Any, wire: Any) -> None:
    """numpy becomes numbers and lists; non-JSON values their `str`: a number too large
    for a float or for a string, and numpy's extended precision, included."""
    encoded = _codec.encode_output(output)
    assert encoded == wire
    _codec.dumps(encoded)  # strict JSON, never a 500


def test_an_output_nested_too_deeply_is_cut_to_its_str() -> None:
    """A deep or self-containing output is sent, cut to a string past the depth limit."""
    loop: list[Any] = []
    loop.append(loop)
    assert isinstance(strict(_codec.encode_output(loop)), list)


def test_a_hostile_str_does_not_fail_the_answer() -> None:
    """An output whose __str__ raises is sent as its type's name."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert _codec.encode_output(Hostile()) == "<Hostile>"


def test_a_prediction_is_clippers_answer() -> None:
    """The quickstart answer, byte for byte."""
    body = _codec.dumps(_codec.predict_json([Prediction(0, 6.6)], batch=False))
    assert body == b'{"query_id":0,"output":6.6,"default":false}'


def test_a_default_says_why() -> None:
    """A default carries its explanation and cause."""
    p = Prediction(3, -1.0, default=True, default_explanation="app 'a' has no linked model")
    object.__setattr__(p, "default_cause", "no_model") if hasattr(p, "default_cause") else None
    answer = _codec.prediction_json(p)
    assert answer["default"] is True
    assert answer["default_explanation"] == "app 'a' has no linked model"
    assert "default_cause" in answer


def test_a_batch_answer_keeps_the_order() -> None:
    """input_batch answers are batch_predictions, one per input, in order."""
    answer = _codec.predict_json([Prediction(i, float(i)) for i in range(3)], batch=True)
    assert [p["query_id"] for p in answer["batch_predictions"]] == [0, 1, 2]


def test_error_bodies() -> None:
    """An error body has an error and a cause."""
    assert _codec.error_json("invalid input", "why") == {"error": "invalid input", "cause": "why"}


@pytest.mark.parametrize("number", ["1e400", "-1E+0400", "2.5e308"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_number_too_large_for_a_float_is_malformed_json(number: str, encoding: str) -> None:
    """Python reads 1e400 as an infinity: it is refused as NaN and Infinity are."""
    with pytest.raises(RequestError, match="too large for a float"):
        _codec.parse_json(f'{{"input": [1.0, {number}]}}'.encode(encoding))


@pytest.mark.parametrize("input_type", ["doubles", "floats"])
def test_a_float_input_with_309_digits_is_refused(input_type: str) -> None:
    """Without an exponent a number overflows only with 309 digits in a row: a float
    input holding one is refused when decoded."""
    body = _codec.parse_json(('{"input": [1.0, -' + "1" * 310 + ".5]}").encode())
    with pytest.raises(RequestError, match="too large for a float"):
        _codec.decode_predict(body, input_type)


def test_a_body_of_plain_floats_parses_as_json_does() -> None:
    """The fast path (no exponent in the body) gives what json.loads gives."""
    body = json.dumps({"input": [i * 0.001 for i in range(500)], "slo_micros": 5}).encode()
    assert _codec.parse_json(body) == json.loads(body)


@pytest.mark.parametrize("slo", [10**400, -(10**400)])
def test_an_slo_too_large_for_a_float_is_malformed(slo: int) -> None:
    """An integer slo_micros beyond any float is a 400 like an infinite one, not a crash."""
    with pytest.raises(RequestError, match="'slo_micros' must be > 0 and finite"):
        _codec.decode_predict({"input": [1.0], "slo_micros": slo}, "doubles")
