"""Small shared records: the `Prediction` a query returns and why a default came back."""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer to one query: a model's output, or the app's default with the reason."""

    query_id: int
    output: Any
    default: bool = False
    default_explanation: str | None = None
    #: How many of the selected models answered in time (0 for most defaults).
    models_answered: int = field(default=0, repr=False, compare=False)
    #: The combined answer's confidence in [0, 1] (1.0 for a single model).
    confidence: float = field(default=0.0, repr=False, compare=False)
    #: Time from the call to the answer, in microseconds.
    latency_micros: float = field(default=0.0, repr=False, compare=False)
    #: Why the default came back, as counted in `metrics()` (None when `default` is False).
    default_cause: str | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        """The four essential fields; for a default also its cause and latency."""
        return _prediction_repr(self)

    def _repr_html_(self) -> str:
        """A small table for notebooks: output, default and why, latency, confidence."""
        return _prediction_html(self)


class Cause(str, enum.Enum):
    """Why a query was answered with its app's default output (the keys of `metrics()`).

    CANCELLED is internal: a query nobody waits for any more is dropped, and counted
    only in its model's `cancelled_in_queue`.
    """

    NO_MODEL = "no_model"
    NO_REPLICA = "no_replica"
    DEADLINE = "deadline"
    MODEL_ERROR = "model_error"
    WRONG_LENGTH = "wrong_length"
    WORKER_DIED = "worker_died"
    QUEUE_FULL = "queue_full"
    WOULD_MISS = "would_miss"
    LOW_CONFIDENCE = "low_confidence"
    POLICY_ERROR = "policy_error"
    SHUTDOWN = "shutdown"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Failure:
    """What a model-side step hands back instead of an output; the facade explains it."""

    cause: Cause
    detail: str = ""


class Timed:
    """A batch's outputs with the time the model itself took, measured where it ran
    (so batch sizing is not skewed by hand-off and event-loop delays)."""

    __slots__ = ("outputs", "seconds")

    def __init__(self, outputs: Any, seconds: float) -> None:
        self.outputs = outputs
        self.seconds = seconds


class WorkerDied(Exception):
    """Raised by a backend when the worker running a batch died (a process crashed)."""


# -- rendering: plain and HTML reprs (notebooks) ---------------------------------------------
# Standard library only. Every string a user chose (app and model names, outputs,
# explanations, backend names) goes through `html.escape` before it reaches the markup.

_STYLE = (
    "<style>"
    ".clipperlite table{border-collapse:collapse;margin:0.3em 0 0.8em 0;font-size:90%}"
    ".clipperlite th,.clipperlite td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    ".clipperlite th{background:#f3f3f3}"
    ".clipperlite caption{text-align:left}"
    ".clipperlite td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".clipperlite .bad{color:#b00020;font-weight:bold}"
    ".clipperlite .ok{color:#1b5e20}"
    ".clipperlite .dim{color:#777}"
    "</style>"
)
_LONG = 200  # characters of an output's repr shown before it is cut


def _cell(value: object, *, num: bool = False, cls: str = "") -> str:
    """One escaped table cell."""
    classes = " ".join(c for c in ("num" if num else "", cls) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{html.escape(str(value))}</td>"


def _row(cells: list[str]) -> str:
    return "<tr>" + "".join(cells) + "</tr>"


def _table(headers: list[str], rows: list[str], *, caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    cap = f"<caption><b>{html.escape(caption)}</b></caption>" if caption else ""
    body = "".join(rows) if rows else _row([f'<td colspan="{len(headers)}" class="dim">none</td>'])
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _micros(value: float | None) -> str:
    """A duration in microseconds, in the unit that reads best ('850 µs', '1.21 ms', '2.5 s')."""
    if value is None:
        return "–"
    if value < 1_000:
        return f"{value:.0f} µs"
    if value < 1_000_000:
        return f"{value / 1_000:.3g} ms"
    return f"{value / 1_000_000:.3g} s"


def _short(value: Any) -> str:
    """`repr(value)`, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _LONG else text[: _LONG - 1] + "…"


def _cause_name(cause: Any) -> str:
    """A cause's plain value ('deadline'), whether given as the enum or as its string."""
    return str(getattr(cause, "value", cause))


def _prediction_repr(p: Prediction) -> str:
    text = (
        f"Prediction(query_id={p.query_id!r}, output={p.output!r}, default={p.default!r}, "
        f"default_explanation={p.default_explanation!r}"
    )
    if p.default:
        cause = None if p.default_cause is None else _cause_name(p.default_cause)
        text += f", default_cause={cause!r}, latency_micros={p.latency_micros:.0f}"
    return text + ")"


def _prediction_html(p: Prediction) -> str:
    if p.default:
        cause = "–" if p.default_cause is None else _cause_name(p.default_cause)
        status = (
            f'<span class="bad">default</span> ({html.escape(cause)}): '
            f"{html.escape(p.default_explanation or '')}"
        )
    else:
        status = '<span class="ok">answered by a model</span>'
    rows = [
        _row(["<th>query</th>", _cell(p.query_id, num=True)]),
        _row(["<th>output</th>", f"<td><code>{html.escape(_short(p.output))}</code></td>"]),
        _row(["<th>status</th>", f"<td>{status}</td>"]),
        _row(["<th>latency</th>", _cell(_micros(p.latency_micros), num=True)]),
        _row(["<th>confidence</th>", _cell(f"{p.confidence:.2f}", num=True)]),
        _row(["<th>models answered</th>", _cell(p.models_answered, num=True)]),
    ]
    return (
        f'<div class="clipperlite">{_STYLE}<table><caption>'
        f"<b>Prediction</b></caption><tbody>{''.join(rows)}</tbody></table></div>"
    )
