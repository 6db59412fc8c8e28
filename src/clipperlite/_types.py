"""Records and protocols shared by every layer: the `Prediction` a query returns, why a
default came back, the statistics records, and the `Backend` / `Replica` seam."""

from __future__ import annotations

import enum
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np


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
    default_cause: DefaultCause | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        """The four essential fields; for a default also its cause and latency."""
        return _prediction_repr(self)

    def _repr_html_(self) -> str:
        """A small table for notebooks: output, default and why, latency, confidence."""
        return _prediction_html(self)


def _fast_constructor() -> Callable[..., Prediction]:
    """Build a Prediction without the frozen dataclass's `__init__`.

    A frozen dataclass sets each field through `object.__setattr__` (about 2 µs for
    eight fields); calling the slots' own descriptors does the same stores in C (under
    1 µs). The record is the same frozen dataclass: fields, equality, repr, hashing
    and immutability are unchanged.
    """
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7 = (
        getattr(Prediction, f).__set__
        for f in (
            "query_id",
            "output",
            "default",
            "default_explanation",
            "models_answered",
            "confidence",
            "latency_micros",
            "default_cause",
        )
    )

    def make(
        query_id: int,
        output: Any,
        default: bool,
        explanation: str | None,
        models: int,
        confidence: float,
        latency: float,
        cause: DefaultCause | None,
    ) -> Prediction:
        p = new(Prediction)
        s0(p, query_id)
        s1(p, output)
        s2(p, default)
        s3(p, explanation)
        s4(p, models)
        s5(p, confidence)
        s6(p, latency)
        s7(p, cause)
        return p

    return make


class DefaultCause(str, enum.Enum):
    """Why a query was answered with its app's default output.

    A `str` enum: each member compares equal to its value, and the values are the keys
    of `metrics()`' defaults and the `cause` label of the Prometheus exporter.
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

    def __str__(self) -> str:
        return self.value


#: make_prediction(query_id, output, default, explanation, models_answered, confidence,
#: latency_micros, default_cause): the query path's way to build a Prediction.
make_prediction = _fast_constructor()


class _Dropped(str, enum.Enum):
    """Internal causes: a query nobody waits for any more is dropped, and counted only in
    its model's `cancelled_in_queue` (never a caller's default)."""

    CANCELLED = "cancelled"


#: The cause of a query dropped because nobody waits for it any more.
CANCELLED = _Dropped.CANCELLED


@dataclass(frozen=True, slots=True)
class Failure:
    """What a model-side step hands back instead of an output; the facade explains it."""

    cause: DefaultCause | _Dropped
    detail: str = ""


#: Output types that cannot change in place: handed to any number of callers as they are
#: (numpy's scalars too, so a list of them is copied as a flat list).
ATOMIC = frozenset(
    {type(None), bool, int, float, complex, str, bytes, Failure}
    | {np.dtype(c).type for c in "?bBhHiIlLqQefdgFDGSU"}
)

#: Items (list and tuple entries, dict values) `detached` copies at most per output: a
#: container that would pass it is shared, so an output that refers to a big shared
#: structure never costs a copy of it on every answer.
_DETACH_BUDGET = 4096


def detached(value: Any) -> Any:
    """An output no other caller holds: its containers copied, its values shared.

    Lists, dicts and tuples are rebuilt (a tuple only when it holds a container), and
    a numeric numpy array is copied, so a caller editing the structure it got back (a
    dict's entries, a list, an array in place) changes neither the cache nor another
    caller's answer. Anything else (numbers, strings, numpy scalars, objects of other
    types, and containers past `_DETACH_BUDGET` items in all) is shared as it is.
    """
    return _detach(value, [_DETACH_BUDGET])


def _detach(value: Any, left: list[int]) -> Any:
    t = type(value)
    if t in ATOMIC:
        return value
    if t is np.ndarray:
        return value if value.dtype.kind == "O" else value.copy()
    if t is not list and t is not dict and t is not tuple:
        return value
    if len(value) > left[0]:
        return value
    left[0] -= len(value)
    if t is dict:
        return {k: v if type(v) in ATOMIC else _detach(v, left) for k, v in value.items()}
    if ATOMIC.issuperset(map(type, value)):
        return value if t is tuple else value.copy()
    items = [v if type(v) in ATOMIC else _detach(v, left) for v in value]
    return tuple(items) if t is tuple else items


def copier(value: Any) -> Callable[[Any], Any] | None:
    """How to give each caller its own copy of `value` cheaply (None: share it): what a
    cache works out once per entry, so a hit costs a C-level copy of a flat list."""
    t = type(value)
    if t in ATOMIC:
        return None
    if t is np.ndarray:
        return None if value.dtype.kind == "O" else np.ndarray.copy
    if t is list and ATOMIC.issuperset(map(type, value)):
        return list.copy
    if t is dict and ATOMIC.issuperset(map(type, value.values())):
        return dict.copy
    if t is tuple and ATOMIC.issuperset(map(type, value)):
        return None
    if t is list or t is dict or t is tuple:
        return detached
    return None


class BatchResult(NamedTuple):
    """What `Replica.run_batch` returns: the model's outputs, one per input, and the
    seconds the model itself took, measured where it ran (so batch sizing is not skewed
    by hand-off and event-loop delays)."""

    #: The model's outputs, in the order of the inputs.
    outputs: list[Any]
    #: Seconds the model call took, timed around the call where it ran.
    seconds: float


@runtime_checkable
class Replica(Protocol):
    """One running copy of a model, made by `Backend.start_replica`.

    Contract (checked by the backend contract suite, `tests/backend_contract.py`):
    `run_batch` runs the model once on the whole list and returns a `BatchResult`; an
    exception the model raises is raised from `run_batch` (any `Exception`; the
    replica serves on); a replica whose worker died raises `WorkerDiedError` and may
    be used again (it restarts its worker) or be replaced by the caller; `stop`
    returns within about `grace_s` seconds, True when the worker ended, False when it
    is stuck in the model and was abandoned. Calls are never concurrent: a replica
    runs one batch at a time.
    """

    async def run_batch(self, inputs: list[Any]) -> BatchResult:
        """Run the model on a batch of inputs."""
        ...

    async def stop(self, grace_s: float) -> bool:
        """Stop within `grace_s` seconds; False if the worker had to be abandoned."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Where a model's `func` runs: starts replicas holding it.

    `start_replica` returns once the replica can run batches (the model loaded), and
    raises if it cannot (the deployment then fails with that error). Cancelled while
    starting, it leaves nothing running behind. Built in: "thread", "async" and
    "process"; more are found by name through the `clipperlite.backends` entry
    point group (`backend="ray"` with the `ray` extra).
    """

    async def start_replica(self, func: Callable[[list[Any]], Any], *, name: str) -> Replica:
        """Start one replica of `func`; `name` is unique per replica, for logs."""
        ...


# -- statistics records (`Clipper.statistics()`) -------------------------------------------


@dataclass(frozen=True, slots=True)
class HistogramStatistics:
    """A histogram as Prometheus keeps one: cumulative counts at upper bounds."""

    #: Upper bounds, increasing; the last is `inf` (latencies in seconds, sizes in items).
    bounds: tuple[float, ...]
    #: `counts[i]`: how many observations were less than or equal to `bounds[i]`.
    counts: tuple[int, ...]
    #: How many observations in all (equal to `counts[-1]`).
    count: int
    #: The sum of every observation (seconds or items).
    sum: float


@dataclass(frozen=True, slots=True)
class AppStatistics:
    """What one application's queries came to, since it was registered."""

    #: The application's name.
    name: str
    #: Its latency objective, in microseconds.
    slo_micros: float
    #: Its selection policy's name ("exp3", "exp4" or the class name).
    policy: str
    #: The models linked to it, in link order.
    linked_models: tuple[str, ...]
    #: Queries answered in all (a `predict_batch` of N counts N), defaults included.
    queries: int
    #: Queries answered by a model (not the default).
    answered: int
    #: Defaults by cause; only causes that happened appear.
    defaults: Mapping[DefaultCause, int]
    #: Median query latency in microseconds (None before the first query).
    latency_p50_micros: float | None
    #: 99th-percentile query latency in microseconds (None before the first query).
    latency_p99_micros: float | None
    #: Mean query latency in microseconds (None before the first query).
    latency_mean_micros: float | None
    #: Largest query latency in microseconds (None before the first query).
    latency_max_micros: float | None
    #: Query latency (seconds), from the call to the answer.
    latency: HistogramStatistics

    @property
    def defaults_total(self) -> int:
        """Defaults of every cause."""
        return sum(self.defaults.values())

    def _repr_html_(self) -> str:
        """This app's row of the notebook view, as an HTML table."""
        return _apps_html((self,), caption="Application")


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """One deployed (or stopped) model version: batching, queue, errors and cache."""

    #: The model's name.
    name: str
    #: The version, as first given (int or str).
    version: int | str
    #: Whether queries to the model go to this version.
    is_current: bool
    #: True once the version was stopped (its final figures are kept).
    stopped: bool
    #: The backend's name ("thread", "process", "async", "ray", or a class name).
    backend: str
    #: Replicas running now.
    num_replicas: int
    #: Batches run (retries of failed halves not counted).
    batches: int
    #: Queries those batches carried.
    items: int
    #: Mean batch size (0.0 before the first batch).
    mean_batch_size: float
    #: The largest batch a replica may take now (AIMD's current limit, or the fixed size).
    max_batch_size: int
    #: Expected latency of a full batch in microseconds (the fit of the model's latency
    #: against batch size, at the current limit), as admission control estimates it.
    batch_latency_micros: float
    #: The batch-latency budget B that AIMD sizes batches against, in microseconds
    #: (None for a fixed `batch_size`): half the tightest SLO of the apps it serves.
    batch_budget_micros: float | None
    #: Queries waiting in the queue now.
    queue_length: int
    #: Batches that failed (the model raised, returned the wrong length, its worker died).
    errors: int
    #: Retries of failed batches in halves (to isolate a bad input).
    retried_batches: int
    #: Queries dropped in the queue because their deadline passed.
    expired_in_queue: int
    #: Queries dropped in the queue because every caller had gone.
    cancelled_in_queue: int
    #: Queries refused because the queue was full.
    rejected_queue_full: int
    #: Queries refused or dropped because they could not meet their deadline.
    rejected_would_miss: int
    #: Queries answered from the cache.
    cache_hits: int
    #: Queries that looked in the cache and missed (or joined an identical one in flight).
    cache_misses: int
    #: Replica threads stuck in the model and abandoned.
    abandoned_threads: int
    #: Replicas replaced (hung, crashed or ended).
    replaced_replicas: int
    #: Batch latency (seconds), as the backend measured the model.
    batch_latency: HistogramStatistics
    #: Batch size (items).
    batch_size: HistogramStatistics

    def _repr_html_(self) -> str:
        """This version's row of the notebook view, as an HTML table."""
        return _models_html((self,), caption="Model version")


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """The prediction cache, shared by every model."""

    #: Cached predictions now.
    size: int
    #: The most predictions it keeps (0: caching is off).
    maxsize: int
    #: Queries being computed that identical queries may join.
    inflight: int
    #: Estimated bytes of the cached keys and outputs now ...
    nbytes: int = 0
    #: ... and the most it keeps (`Clipper(cache_max_bytes=...)`).
    max_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ClipperStatistics:
    """One snapshot of a Clipper's figures (`Clipper.statistics()`)."""

    #: "not started", "running" or "closed".
    state: str
    #: Every registered application, by name order.
    apps: tuple[AppStatistics, ...]
    #: Every model version deployed or stopped since start, by name then deploy order.
    models: tuple[ModelStatistics, ...]
    #: The prediction cache.
    cache: CacheStatistics
    #: Replica threads abandoned in all (stopped versions included).
    abandoned_threads: int

    def _repr_html_(self) -> str:
        """The notebook view: apps and model versions as HTML tables (`Clipper._repr_html_`)."""
        return _statistics_html(self)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch a model version ran (`Clipper.history()`)."""

    #: When the batch ended, in the Clipper's clock (seconds, monotonic).
    time: float
    #: How many queries it carried.
    size: int
    #: Seconds the model took, as the backend measured it.
    latency: float
    #: The batch size limit after this batch (what AIMD decided).
    max_batch: int
    #: Queries still queued when it ended.
    queue_length: int
    #: Whether it failed (the model raised, returned the wrong length, its worker died).
    failed: bool


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


_APP_HEADERS = [
    "app",
    "SLO",
    "policy",
    "linked models",
    "queries",
    "answered",
    "p50",
    "p99",
    "defaults by cause",
]
_MODEL_HEADERS = [
    "model",
    "version",
    "current",
    "state",
    "replicas",
    "backend",
    "batches",
    "mean batch",
    "max batch",
    "batch latency",
    "queue",
    "errors",
    "cache hits",
    "cache misses",
]


def _app_row(a: AppStatistics) -> str:
    p99_bad = a.latency_p99_micros is not None and a.latency_p99_micros > a.slo_micros
    defaults = ", ".join(
        f"{_cause_name(cause)}: {n}"
        for cause, n in sorted(a.defaults.items(), key=lambda kv: -kv[1])
    )
    return _row(
        [
            _cell(a.name),
            _cell(_micros(a.slo_micros), num=True),
            _cell(a.policy),
            _cell(", ".join(a.linked_models) or "none", cls="" if a.linked_models else "dim"),
            _cell(a.queries, num=True),
            _cell(a.answered, num=True),
            _cell(_micros(a.latency_p50_micros), num=True),
            _cell(_micros(a.latency_p99_micros), num=True, cls="bad" if p99_bad else ""),
            _cell(defaults or "none", cls="bad" if defaults else "dim"),
        ]
    )


def _model_row(m: ModelStatistics) -> str:
    return _row(
        [
            _cell(m.name),
            _cell(m.version),
            _cell("✓" if m.is_current else ""),
            _cell("stopped" if m.stopped else "running", cls="dim" if m.stopped else ""),
            _cell(m.num_replicas, num=True),
            _cell(m.backend),
            _cell(m.batches, num=True),
            _cell(f"{m.mean_batch_size:.1f}", num=True),
            _cell(m.max_batch_size, num=True),
            _cell(_micros(m.batch_latency_micros if m.batches else None), num=True),
            _cell(m.queue_length, num=True),
            _cell(m.errors, num=True, cls="bad" if m.errors else ""),
            _cell(m.cache_hits, num=True),
            _cell(m.cache_misses, num=True),
        ]
    )


def _apps_html(apps: tuple[AppStatistics, ...], caption: str = "Applications") -> str:
    return _table(_APP_HEADERS, [_app_row(a) for a in apps], caption=caption)


def _models_html(models: tuple[ModelStatistics, ...], caption: str = "Model versions") -> str:
    return _table(_MODEL_HEADERS, [_model_row(m) for m in models], caption=caption)


def _statistics_html(s: ClipperStatistics) -> str:
    c = s.cache
    cache = "off" if c.maxsize == 0 else f"{c.size} of {c.maxsize} cached, {c.inflight} in flight"
    summary = (
        f"<b>Clipper</b> {html.escape(s.state)} · {len(s.apps)} apps · "
        f"{len(s.models)} model versions · cache: {html.escape(cache)}"
    )
    if s.abandoned_threads:
        summary += f' · <span class="bad">{s.abandoned_threads} abandoned threads</span>'
    return (
        f'<div class="clipperlite">{_STYLE}<div>{summary}</div>'
        f"{_apps_html(s.apps)}{_models_html(s.models)}</div>"
    )
