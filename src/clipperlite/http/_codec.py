"""Clipper's REST wire format: request bodies to values, predictions and errors to JSON.

Pure code: no web framework, no event loop, no I/O. The routes in `_app.py` read a
body, hand it here, and send back what comes out. Everything from the network is
parsed as strict JSON (no NaN or Infinity, no pickles, nothing else); every way a
body can be wrong raises `RequestError`, which the routes answer with a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipperlite import Prediction

#: Nesting kept when an output is turned into JSON; deeper parts are sent as their `str`.
MAX_OUTPUT_DEPTH = 64

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlevel = 2


class RequestError(ValueError):
    """A request body that cannot be served: not JSON, a missing field, a wrong type."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        #: What kind of mistake it is (the error body's "error").
        self.error = error
        #: What exactly was wrong (the error body's "cause").
        self.cause = cause


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A decoded `POST /{app}/predict` body."""

    #: The inputs, decoded for the app's input type (one unless `batch`).
    inputs: list[Any]
    #: Whether the body used `input_batch` (the answer is then `batch_predictions`).
    batch: bool
    #: The query's own latency objective, or None for the app's.
    slo_micros: float | None
    #: The selection context, or None for the app's shared state.
    context: Any


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A decoded `POST /{app}/update` body (Clipper's feedback)."""

    #: The input, decoded for the app's input type.
    input: Any
    #: The right answer for the input, as sent.
    label: Any
    #: The selection context, or None for the app's shared state.
    context: Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float, refusing one too large for it (`1e400`), which Python
    would otherwise read as an infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


#: The input types whose inputs are flat lists of numbers, checked for an infinity.
_FLOAT_TYPES = frozenset({"doubles", "floats"})

#: Past this many bits an int may have more digits than Python turns into a string
#: (`sys.get_int_max_str_digits`, 4,300 by default); such ints are checked.
_LARGE_INT_BITS = 14_000


def parse_json(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object.

    Args:
        body: The raw body (UTF-8, -16 or -32, as JSON allows).

    Returns:
        The object's members.

    Raises:
        RequestError: The body is not strict JSON (NaN and Infinity are refused, and
            so is a number too large for a float), is nested too deeply to parse, or
            is not an object.
    """
    try:
        # Floats are checked one by one (3x slower) only where an exponent may hide an
        # overflow: a body with an "e" (or a UTF-16/-32 one, a NUL in its first bytes).
        # Without one, only 309 digits in a row overflow: `decode_input` catches that.
        check = b"e" in body or b"E" in body or b"\x00" in body[:4]
        value = json.loads(
            body, parse_constant=_reject_constant, parse_float=_finite_float if check else None
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError("malformed JSON", str(exc) or type(exc).__name__) from None
    if not isinstance(value, dict):
        raise RequestError(
            "malformed request", f"the body must be a JSON object, got {_json_type(value)}"
        )
    return value


def decode_input(value: Any, input_type: str) -> Any:
    """One input as the app's models expect it: base64 strings become bytes.

    Numbers, lists and strings are passed on as JSON gave them: the Clipper itself
    checks them against the input type (and raises `InvalidInputError`).

    Args:
        value: The JSON value of `input` (or one element of `input_batch`).
        input_type: The app's canonical input type ("integers", "bytes", ...).

    Returns:
        The value to give `Clipper.predict`.

    Raises:
        RequestError: A "bytes" input is not a base64 string.
    """
    if input_type != "bytes":
        if (
            input_type in _FLOAT_TYPES
            and type(value) is list
            and (math.inf in value or -math.inf in value)
        ):
            raise RequestError("invalid input", "a number in the input is too large for a float")
        return value
    if not isinstance(value, str):
        raise RequestError(
            "invalid input", f"bytes inputs travel as base64 strings, got {_json_type(value)}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError("invalid input", f"the input is not valid base64: {exc}") from None


def encode_input(value: Any, input_type: str) -> Any:
    """The JSON form of one input (what a client sends): bytes become base64 strings.

    Args:
        value: An input as a model would see it.
        input_type: The app's canonical input type.

    Returns:
        A JSON-able value that `decode_input` turns back into `value`.
    """
    if input_type == "bytes":
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def decode_predict(body: Mapping[str, Any], input_type: str) -> PredictRequest:
    """A predict body: `{"input": x}` or `{"input_batch": [x, ...]}`, optionally with
    `"slo_micros"` and `"context"`.

    Args:
        body: The parsed JSON object.
        input_type: The app's canonical input type.

    Returns:
        The decoded request.

    Raises:
        RequestError: Neither or both of `input` and `input_batch`, a batch that is not
            a list, a bad input, `slo_micros` or `context`.
    """
    has_one, has_batch = "input" in body, "input_batch" in body
    if has_one == has_batch:
        raise RequestError(
            "malformed request",
            "both 'input' and 'input_batch' given; send one"
            if has_one
            else "missing 'input' (or 'input_batch' for several inputs)",
        )
    if has_one:
        inputs = [decode_input(body["input"], input_type)]
    else:
        batch = body["input_batch"]
        if not isinstance(batch, list):
            raise RequestError(
                "malformed request", f"'input_batch' must be a list, got {_json_type(batch)}"
            )
        inputs = []
        try:
            for x in batch:
                inputs.append(decode_input(x, input_type))
        except RequestError as exc:
            cause = f"input {len(inputs)} of the batch: {exc.cause}"
            raise RequestError(exc.error, cause) from None
    return PredictRequest(
        inputs, has_batch, _slo(body.get("slo_micros")), decode_context(body.get("context"))
    )


def decode_update(body: Mapping[str, Any], input_type: str) -> UpdateRequest:
    """An update body: `{"input": x, "label": y}`; Clipper's `"uid"` is ignored.

    Args:
        body: The parsed JSON object.
        input_type: The app's canonical input type.

    Returns:
        The decoded request.

    Raises:
        RequestError: A missing `input` or `label`, a bad input or `context`.
    """
    for name in ("input", "label"):
        if name not in body:
            raise RequestError("malformed request", f"missing {name!r}")
    return UpdateRequest(
        decode_input(body["input"], input_type), body["label"], decode_context(body.get("context"))
    )


def decode_context(value: Any) -> Any:
    """A selection context: a string, a number, true/false or null (None).

    Raises:
        RequestError: Any other JSON value (a list or object is not a context).
    """
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    raise RequestError(
        "malformed request",
        f"'context' must be a string, a number, a boolean or null, got {_json_type(value)}",
    )


def _slo(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(
            "malformed request", f"'slo_micros' must be a number, got {_json_type(value)}"
        )
    try:
        slo = float(value)
    except OverflowError:  # an int too large for a float
        slo = math.inf
    if not slo > 0 or math.isinf(slo):
        raise RequestError(
            "malformed request", f"'slo_micros' must be > 0 and finite, got {describe(value)}"
        )
    return slo


def to_json_value(value: Any, depth: int = 0) -> Any:
    """An output as a JSON value: numpy scalars and arrays become numbers and lists;
    NaN, infinities, bytes and any other object become their `str`.

    Args:
        value: What a model (or an app's default) gave.
        depth: How deep in a container `value` is (past `MAX_OUTPUT_DEPTH`, `str`).

    Returns:
        A value `json.dumps(..., allow_nan=False)` accepts.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= _LARGE_INT_BITS else _large_int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        item = value.item()
        if isinstance(item, np.generic):  # longdouble and clongdouble stay numpy
            item = float(item) if isinstance(item, np.floating) else str(item)
        return to_json_value(item, depth)
    if depth < MAX_OUTPUT_DEPTH:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, list | tuple):
            return [to_json_value(v, depth + 1) for v in value]
        if isinstance(value, Mapping):
            return {
                k if isinstance(k, str) else str(k): to_json_value(v, depth + 1)
                for k, v in value.items()
            }
    try:
        return str(value)
    except Exception:  # a hostile __str__ must not fail the answer
        return f"<{type(value).__name__}>"


def _large_int(value: int) -> Any:
    """An int with too many digits for a string is sent as a note of its size."""
    try:
        str(value)
    except ValueError:
        return f"<int of {value.bit_length()} bits>"
    return value


def encode_output(value: Any) -> Any:
    """A prediction's output as JSON: a `str` holding valid JSON is sent as that JSON
    value (as Clipper did, so `str(sum(x))` models answer numbers); everything else as
    `to_json_value` makes it.
    """
    if isinstance(value, str):
        try:
            return json.loads(value, parse_constant=_reject_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            return value
    return to_json_value(value)


def prediction_json(prediction: Prediction) -> dict[str, Any]:
    """One prediction as Clipper's REST API answers it: `query_id`, `output`, `default`,
    plus `default_explanation` and `default_cause` when `default` is true."""
    answer: dict[str, Any] = {
        "query_id": prediction.query_id,
        "output": encode_output(prediction.output),
        "default": prediction.default,
    }
    if prediction.default:
        answer["default_explanation"] = prediction.default_explanation
        cause = getattr(prediction, "default_cause", None)
        answer["default_cause"] = None if cause is None else str(cause)
    return answer


def predict_json(predictions: list[Prediction], *, batch: bool) -> dict[str, Any]:
    """The answer to a predict body: one prediction, or `batch_predictions` in order."""
    if batch:
        return {"batch_predictions": [prediction_json(p) for p in predictions]}
    return prediction_json(predictions[0])


def error_json(error: str, cause: str) -> dict[str, str]:
    """An error body: `{"error": what kind, "cause": what exactly}`."""
    return {"error": error, "cause": cause}


def dumps(value: Any) -> bytes:
    """Compact, strict JSON bytes (`{"query_id":0,"output":6.6,"default":false}`).

    Raises:
        ValueError: `value` holds NaN or an infinity (pass it through
            `to_json_value` first).
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def describe(value: Any) -> str:
    """A short repr for messages (a long app name or value is cut)."""
    return _REPR.repr(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
