"""Small shared records: the `Prediction` a query returns and why a default came back."""

from __future__ import annotations

import enum
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
