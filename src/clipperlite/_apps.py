"""The Clipper's tables: an app's record and statistics, a model's deployed versions,
checks of configuration values, and the plain-value views `get_*` and `metrics()` give."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._backends import BACKENDS, is_async_func
from ._clock import MICROS
from ._errors import ClipperError
from ._inputs import KeyFunc, Validator, make_key_func, make_validator, normalize_input_type
from ._model import ModelVersion
from ._selection import BUILTIN_POLICIES, SelectionPolicy
from ._stats import LatencyHistogram


class AppStats:
    """What an app's queries came to: answers, defaults by cause, latencies."""

    __slots__ = ("answered", "defaults", "latency", "queries")

    def __init__(self) -> None:
        self.queries = 0
        self.answered = 0
        self.defaults: dict[str, int] = {}
        self.latency = LatencyHistogram()


@dataclass(eq=False)
class App:
    """A registered application. `links` is replaced, never changed in place, so the
    policy state can tell by identity whether it is still for the current links."""

    name: str
    input_type: str
    default_output: Any
    slo_micros: float
    slo_given: Any
    policy: SelectionPolicy
    policy_name: str
    min_confidence: float | None
    validate: Validator
    key: KeyFunc
    links: tuple[str, ...] = ()
    state: Any = None
    state_links: tuple[str, ...] | None = None
    stats: AppStats = field(default_factory=AppStats)

    @classmethod
    def check(
        cls,
        name: object,
        input_type: object,
        default_output: Any,
        slo_micros: object,
        policy: object,
        min_confidence: object,
        rng: np.random.Generator,
    ) -> App:
        """An app from register_application's arguments, naming the first that is wrong."""
        if not isinstance(name, str) or not name:
            raise ClipperError(f"an application name is a non-empty str, got {name!r}")
        itype = normalize_input_type(input_type)
        slo = positive("slo_micros", slo_micros)
        if min_confidence is not None:
            conf = positive("min_confidence", min_confidence, allow_zero=True)
            if conf > 1:
                raise ClipperError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        pol, pol_name = make_policy(policy, rng)
        return cls(
            name=name,
            input_type=itype,
            default_output=default_output,
            slo_micros=slo,
            slo_given=slo_micros,
            policy=pol,
            policy_name=pol_name,
            min_confidence=min_confidence,  # type: ignore[arg-type]
            validate=make_validator(itype),
            key=make_key_func(itype),
        )

    @property
    def slo(self) -> float:
        return self.slo_micros / MICROS

    def policy_state(self) -> Any:
        """The policy's state for the current links (initialised when first needed)."""
        if self.state_links is not self.links:
            self.state = self.policy.init_state(list(self.links), self.state)
            self.state_links = self.links
        return self.state


@dataclass(eq=False)
class Model:
    """A deployed model: its versions by key, and which one queries go to."""

    name: str
    input_type: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    current: str | None = None

    def current_version(self) -> ModelVersion | None:
        return self.versions.get(self.current) if self.current is not None else None


def make_policy(policy: object, rng: np.random.Generator) -> tuple[SelectionPolicy, str]:
    """A policy object and its name from a name ("exp3", "exp4") or an object."""
    if isinstance(policy, str):
        factory = BUILTIN_POLICIES.get(policy.lower())
        if factory is None:
            raise ClipperError(
                f"unknown policy {policy!r}: use 'exp3', 'exp4' or a SelectionPolicy object"
            )
        return factory(rng), policy.lower()
    if isinstance(policy, type):
        raise ClipperError(
            f"policy must be an instance, not the class {policy.__name__}:"
            f" pass {policy.__name__}() (or 'exp3' / 'exp4')"
        )
    if isinstance(policy, SelectionPolicy):
        return policy, type(policy).__name__
    raise ClipperError(
        f"policy must be 'exp3', 'exp4' or an object with init_state, select, combine and"
        f" observe methods; got {policy!r}"
    )


def version_key(version: object) -> str:
    """The key of a model version: its string form (a bool is not a version)."""
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ClipperError(
            f"a model version is an int or a str, got {version!r} ({type(version).__name__})"
        )
    key = str(version)
    if not key.strip():
        raise ClipperError("a model version must not be empty")
    return key


def positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite number above zero (or at least zero), else a ClipperError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ClipperError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ClipperError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def count(name: str, value: object, *, minimum: int) -> int:
    """An int of at least `minimum`, else a ClipperError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ClipperError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def app_info(app: App) -> dict[str, Any]:
    """An app's configuration as plain values."""
    return {
        "name": app.name,
        "input_type": app.input_type,
        "default_output": app.default_output,
        "slo_micros": app.slo_given,
        "policy": app.policy_name,
        "min_confidence": app.min_confidence,
        "linked_models": list(app.links),
    }


def version_info(model: Model, mv: ModelVersion, apps: dict[str, App]) -> dict[str, Any]:
    """A model version's configuration and state as plain values."""
    return {
        "name": mv.name,
        "version": mv.version,
        "input_type": mv.input_type,
        "is_current": model.current == mv.version_key,
        "backend": mv.backend,
        "num_replicas": mv.num_replicas,
        "batch_size": mv.batch_size,
        "max_batch_size": mv.sizer.max_batch,
        "batch_wait_micros": mv.batch_wait * MICROS,
        "max_queue": mv.batcher.max_queue,
        "linked_apps": sorted(a.name for a in apps.values() if mv.name in a.links),
    }


def app_metrics(app: App) -> dict[str, Any]:
    """An app's counters and latency percentiles as plain values."""
    s = app.stats
    h = s.latency
    return {
        "queries": s.queries,
        "answered": s.answered,
        "defaults": dict(s.defaults),
        "defaults_total": sum(s.defaults.values()),
        "latency_micros": {
            "p50": h.percentile(50),
            "p99": h.percentile(99),
            "mean": h.mean,
            "max": h.max if h.count else None,
        },
    }


@dataclass(frozen=True)
class Deployment:
    """The checked arguments of one `deploy_model` call (times in seconds)."""

    name: str
    version: int | str
    key: str
    input_type: str
    func: Callable[[list[Any]], Any]
    backend: str
    num_replicas: int
    batch_size: int | None
    batch_wait: float
    max_queue: int

    @classmethod
    def check(
        cls,
        name: object,
        version: object,
        input_type: object,
        func: Any,
        *,
        num_replicas: object,
        batch_size: object,
        batch_wait_micros: object,
        max_queue: object,
        backend: str | None,
    ) -> Deployment:
        """Validate deploy_model's arguments, naming the first that is wrong."""
        if not isinstance(name, str) or not name:
            raise ClipperError(f"a model name is a non-empty str, got {name!r}")
        key = version_key(version)
        if not callable(func):
            raise ClipperError(f"func must be callable (a list of inputs -> outputs), got {func!r}")
        kind = backend if backend is not None else ("async" if is_async_func(func) else "thread")
        if kind not in BACKENDS:
            raise ClipperError(
                f"backend {kind!r} is not available in this build of clipperlite"
                f" (available: {', '.join(BACKENDS)})"
            )
        if kind in ("thread", "process") and is_async_func(func):
            raise ClipperError(f"model {name!r} is an async def: use backend='async'")
        return cls(
            name=name,
            version=version,  # type: ignore[arg-type]
            key=key,
            input_type=normalize_input_type(input_type),
            func=func,
            backend=kind,
            num_replicas=count("num_replicas", num_replicas, minimum=0),
            batch_size=None if batch_size is None else count("batch_size", batch_size, minimum=1),
            batch_wait=positive("batch_wait_micros", batch_wait_micros, allow_zero=True) / MICROS,
            max_queue=count("max_queue", max_queue, minimum=1),
        )
