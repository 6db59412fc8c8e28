"""Records and protocols shared by every layer: the `Prediction` a query returns, why a
default came back, the statistics records, and the `Backend` / `Replica` seam."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable


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


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """The prediction cache, shared by every model."""

    #: Cached predictions now.
    size: int
    #: The most predictions it keeps (0: caching is off).
    maxsize: int
    #: Queries being computed that identical queries may join.
    inflight: int


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
