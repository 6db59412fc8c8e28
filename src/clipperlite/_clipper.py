"""The `Clipper`: tables of apps, models and links; lifecycle; predict and feedback."""

from __future__ import annotations

import asyncio
import copy
import enum
import itertools
import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from ._backends import BACKENDS, is_async_func
from ._batching import DONE, Query
from ._cache import PredictionCache
from ._clock import MICROS, monotonic
from ._errors import (
    AlreadyExistsError,
    ClipperClosedError,
    ClipperError,
    InvalidInputError,
    UnknownApplicationError,
    UnknownModelError,
)
from ._inputs import KeyFunc, Validator, make_key_func, make_validator, normalize_input_type
from ._model import UNLINKED_SLO, ModelVersion
from ._selection import BUILTIN_POLICIES, SelectionPolicy
from ._stats import LatencyHistogram
from ._timers import DeadlineTimer
from ._types import Cause, Failure, Prediction

logger = logging.getLogger("clipperlite")

_MISS = PredictionCache.MISS


class _State(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    CLOSED = "closed"


class _AppStats:
    __slots__ = ("answered", "defaults", "latency", "queries")

    def __init__(self) -> None:
        self.queries = 0
        self.answered = 0
        self.defaults: dict[str, int] = {}
        self.latency = LatencyHistogram()


@dataclass(eq=False)
class _App:
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
    links: list[str] = field(default_factory=list)
    state: Any = None
    state_models: tuple[str, ...] = ()
    stats: _AppStats = field(default_factory=_AppStats)

    @property
    def slo(self) -> float:
        return self.slo_micros / MICROS


@dataclass(eq=False)
class _Model:
    name: str
    input_type: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    current: str | None = None


def _version_key(version: object) -> str:
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ClipperError(
            f"a model version is an int or a str, got {version!r} ({type(version).__name__})"
        )
    key = str(version)
    if not key.strip():
        raise ClipperError("a model version must not be empty")
    return key


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ClipperError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ClipperError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ClipperError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


_LATE = Failure(Cause.DEADLINE, "did not answer within the deadline")


def _expire(fut: asyncio.Future[Any], failure: Failure) -> None:
    if not fut.done():
        fut.set_result(failure)


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Clipper:
    """An embedded prediction server: apps, models, batching, caching and selection.

    Configuration is keyword-only. `cache_size` is the number of cached predictions
    (LRU, 0 turns caching off); `shutdown_grace_s` bounds how long `stop()` lets
    running batches finish; a replica still in one batch `hang_timeout_s` after the
    last deadline of its queries is replaced; `seed` seeds the policies made by name
    (`policy="exp3"`); a policy object brings its own generator.
    """

    def __init__(
        self,
        *,
        cache_size: int = 10_000,
        shutdown_grace_s: float = 3.0,
        hang_timeout_s: float = 5.0,
        seed: int | None = None,
    ) -> None:
        try:
            self._cache: PredictionCache[Query] = PredictionCache(cache_size)
        except ValueError as exc:
            raise ClipperError(str(exc)) from None
        self._grace = _positive("shutdown_grace_s", shutdown_grace_s, allow_zero=True)
        self._hang = _positive("hang_timeout_s", hang_timeout_s)
        try:
            self._rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise ClipperError(f"seed must be None or a non-negative int, got {seed!r}") from exc
        self._deploying: dict[tuple[str, str], ModelVersion] = {}
        self._deployments = itertools.count()
        self._retiring: set[ModelVersion] = set()
        self._apps: dict[str, _App] = {}
        self._models: dict[str, _Model] = {}
        self._ids = itertools.count()
        self._state = _State.NOT_STARTED
        self._clock = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: DeadlineTimer | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._abandoned = 0

    def __repr__(self) -> str:
        return f"<Clipper {self._state.value}: {len(self._apps)} apps, {len(self._models)} models>"

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> Clipper:
        """Start serving; returns the Clipper itself (`clipper = await Clipper().start()`)."""
        if self._state is _State.RUNNING:
            raise ClipperError("this Clipper is already running")
        if self._state is _State.CLOSED:
            raise ClipperError("this Clipper was stopped and cannot start again; make a new one")
        self._loop = loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._timer = DeadlineTimer(loop)
        self._state = _State.RUNNING
        return self

    async def stop(self) -> None:
        """Stop admitting queries, answer every waiting one, stop every replica (idempotent).

        The shutdown runs as a task of its own: a caller cancelled while waiting (a
        timeout around `stop()`) does not cut it short, and every later `stop()` waits
        for it to finish.
        """
        if self._state is _State.NOT_STARTED:
            self._state = _State.CLOSED
            return
        if self._stopping is None:
            self._state = _State.CLOSED
            self._stopping = asyncio.get_running_loop().create_task(
                self._shutdown(), name="clipperlite:shutdown"
            )
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        failure = Failure(Cause.SHUTDOWN, "the Clipper is shutting down")
        versions = [v for m in self._models.values() for v in m.versions.values()]
        versions += self._deploying.values()  # their deploy_model raises ClipperClosedError
        versions += self._retiring  # being stopped by stop_model: a second stop() waits
        await asyncio.gather(*(v.stop(self._grace, failure) for v in versions))
        if self._timer is not None:
            self._timer.expire_all()
            self._timer.close()

    aclose = stop

    async def __aenter__(self) -> Clipper:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether the Clipper accepts queries and deployments."""
        return self._state is _State.RUNNING

    def _require_running(self, what: str) -> None:
        if self._state is not _State.RUNNING:
            state = "has not been started" if self._state is _State.NOT_STARTED else "is stopped"
            raise ClipperClosedError(f"cannot {what}: this Clipper {state}")

    # -- applications ----------------------------------------------------------------------
    def register_application(
        self,
        name: str,
        input_type: str,
        default_output: Any,
        slo_micros: float,
        *,
        policy: str | SelectionPolicy = "exp3",
        min_confidence: float | None = None,
    ) -> None:
        """Register an app: its input type, the output to give when no model can answer in
        time, its latency objective in microseconds and how it picks among linked models."""
        if not isinstance(name, str) or not name:
            raise ClipperError(f"an application name is a non-empty str, got {name!r}")
        if name in self._apps:
            raise AlreadyExistsError(f"application {name!r} already exists", name=name)
        itype = normalize_input_type(input_type)
        slo = _positive("slo_micros", slo_micros)
        if min_confidence is not None:
            conf = _positive("min_confidence", min_confidence, allow_zero=True)
            if conf > 1:
                raise ClipperError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        pol, pol_name = self._make_policy(policy)
        self._apps[name] = _App(
            name=name,
            input_type=itype,
            default_output=default_output,
            slo_micros=slo,
            slo_given=slo_micros,
            policy=pol,
            policy_name=pol_name,
            min_confidence=min_confidence,
            validate=make_validator(itype),
            key=make_key_func(itype),
        )

    def _make_policy(self, policy: object) -> tuple[SelectionPolicy, str]:
        if isinstance(policy, str):
            factory = BUILTIN_POLICIES.get(policy.lower())
            if factory is None:
                raise ClipperError(
                    f"unknown policy {policy!r}: use 'exp3', 'exp4' or a SelectionPolicy object"
                )
            return factory(self._rng), policy.lower()
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

    def delete_application(self, name: str) -> None:
        """Remove an app and its links (queries already running finish)."""
        app = self._app(name)
        del self._apps[name]
        for model in app.links:
            self._update_budget(model)

    def _app(self, name: str) -> _App:
        app = self._apps.get(name)
        if app is None:
            raise UnknownApplicationError(
                f"no application named {name!r}"
                + (f" (known: {', '.join(sorted(self._apps))})" if self._apps else ""),
                app=name,
            )
        return app

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        """Let an app query a model (an app may link several; its policy picks)."""
        app = self._app(app_name)
        model = self._model(model_name)
        if model.input_type != app.input_type:
            raise ClipperError(
                f"cannot link model {model_name!r} ({model.input_type}) to app {app_name!r}"
                f" ({app.input_type}): an app and its models must have the same input type"
            )
        if model_name not in app.links:
            app.links.append(model_name)
            self._relinked(app, lambda: app.links.remove(model_name))
            self._update_budget(model_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        """Stop an app from querying a model."""
        app = self._app(app_name)
        if model_name not in app.links:
            raise ClipperError(
                f"model {model_name!r} is not linked to app {app_name!r}"
                f" (linked: {app.links or 'none'})"
            )
        index = app.links.index(model_name)
        app.links.remove(model_name)
        self._relinked(app, lambda: app.links.insert(index, model_name))
        self._update_budget(model_name)

    def _relinked(self, app: _App, undo: Callable[[], None]) -> None:
        if app.state is not None and app.links:
            try:
                state = app.policy.init_state(list(app.links), app.state)
            except Exception as exc:
                undo()
                raise ClipperError(
                    f"app {app.name!r}: policy {app.policy_name} init_state raised"
                    f" {type(exc).__name__}: {exc}; the link was not changed"
                ) from exc
            app.state = state
            app.state_models = tuple(app.links)

    def _policy_state(self, app: _App) -> Any:
        if app.state is None or app.state_models != tuple(app.links):
            app.state = app.policy.init_state(list(app.links), app.state)
            app.state_models = tuple(app.links)
        return app.state

    def _update_budget(self, model_name: str) -> None:
        model = self._models.get(model_name)
        if model is None:
            return
        slos = [a.slo for a in self._apps.values() if model_name in a.links]
        slo = min(slos) if slos else UNLINKED_SLO
        for version in model.versions.values():
            version.set_slo(slo)

    # -- models -----------------------------------------------------------------------
    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise UnknownModelError(
                f"no model named {name!r} is deployed"
                + (f" (deployed: {', '.join(sorted(self._models))})" if self._models else ""),
                model=name,
            )
        return model

    def _version(self, name: str, version: int | str | None) -> ModelVersion:
        model = self._model(name)
        key = model.current if version is None else _version_key(version)
        mv = model.versions.get(key) if key is not None else None
        if mv is None:
            raise UnknownModelError(
                f"model {name!r} has no deployed version {version!r}"
                f" (deployed: {', '.join(model.versions) or 'none'})",
                model=name,
                version=None if version is None else str(version),
            )
        return mv

    async def deploy_model(
        self,
        name: str,
        version: int | str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        num_replicas: int = 1,
        batch_size: int | None = None,
        batch_wait_micros: float = 0,
        max_queue: int = 10_000,
        backend: str | None = None,
    ) -> None:
        """Deploy a version of a model and make it current; older versions stay deployed.

        `func` takes a list of inputs and returns a list of as many outputs. A plain
        function runs on worker threads (one per replica), an `async def` on the loop.
        `batch_size=None` lets AIMD size batches; an int fixes the size.
        """
        self._require_running("deploy a model")
        if not isinstance(name, str) or not name:
            raise ClipperError(f"a model name is a non-empty str, got {name!r}")
        vkey = _version_key(version)
        itype = normalize_input_type(input_type)
        if not callable(func):
            raise ClipperError(f"func must be callable (a list of inputs -> outputs), got {func!r}")
        replicas = _count("num_replicas", num_replicas, minimum=0)
        if batch_size is not None:
            batch_size = _count("batch_size", batch_size, minimum=1)
        wait = _positive("batch_wait_micros", batch_wait_micros, allow_zero=True) / MICROS
        queue_bound = _count("max_queue", max_queue, minimum=1)
        kind = backend if backend is not None else ("async" if is_async_func(func) else "thread")
        if kind not in BACKENDS:
            raise ClipperError(
                f"backend {kind!r} is not available in this build of clipperlite"
                f" (available: {', '.join(BACKENDS)})"
            )
        if kind in ("thread", "process") and is_async_func(func):
            raise ClipperError(f"model {name!r} is an async def: use backend='async'")
        for linked in self._apps.values():
            if name in linked.links and linked.input_type != itype:
                raise ClipperError(
                    f"model {name!r} is linked to app {linked.name!r}, which takes"
                    f" {linked.input_type}; it cannot be deployed taking {itype}"
                    " (unlink it first, or deploy under another name)"
                )
        existing = self._models.get(name)
        if (name, vkey) in self._deploying:
            raise AlreadyExistsError(
                f"model {name!r} version {version!r} is being deployed already", name=name
            )
        for (other, _), pending in self._deploying.items():
            if other == name and pending.input_type != itype:
                raise ClipperError(
                    f"model {name!r} is being deployed taking {pending.input_type}; a version"
                    f" cannot take {itype}: deploy it under another name"
                )
        if existing is not None:
            if vkey in existing.versions:
                raise AlreadyExistsError(
                    f"model {name!r} version {version!r} is already deployed", name=name
                )
            if existing.input_type != itype:
                raise ClipperError(
                    f"model {name!r} takes {existing.input_type}; a new version cannot take"
                    f" {itype}: deploy it under another name"
                )
        mv = ModelVersion(
            name,
            version,
            itype,
            func,
            backend=kind,
            batch_size=batch_size,
            batch_wait=wait,
            max_queue=queue_bound,
            hang_timeout=self._hang,
            clock=self._clock,
        )
        mv.deployment = next(self._deployments)
        self._deploying[name, vkey] = mv
        try:
            try:
                await mv.set_num_replicas(replicas, self._grace)
            except BaseException as exc:
                await asyncio.shield(mv.stop(0.0, Failure(Cause.NO_REPLICA, "failed to deploy")))
                if isinstance(exc, Exception):
                    if self._state is not _State.RUNNING:
                        raise ClipperClosedError(
                            f"cannot deploy model {name!r}: the Clipper stopped meanwhile"
                        ) from exc
                    raise ClipperError(
                        f"deploying model {name!r} version {version!r} failed: {exc}"
                    ) from exc
                raise
            if self._state is not _State.RUNNING:  # stopped while replicas were starting
                await mv.stop(0.0, Failure(Cause.SHUTDOWN, "the Clipper is shutting down"))
                self._require_running("deploy a model")
        finally:
            del self._deploying[name, vkey]
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(name, itype)
        self._cache.drop(lambda k: k[0] == name and k[1] == vkey)
        model.versions[vkey] = mv
        model.current = vkey
        self._update_budget(name)

    def set_model_version(self, name: str, version: int | str) -> None:
        """Make an already deployed version the current one (rollback or roll forward)."""
        mv = self._version(name, version)
        self._models[name].current = mv.version_key

    async def set_num_replicas(
        self, name: str, num_replicas: int, version: int | str | None = None
    ) -> None:
        """Scale a model version (the current one by default); 0 stops serving it."""
        self._require_running("change replicas")
        n = _count("num_replicas", num_replicas, minimum=0)
        mv = self._version(name, version)
        await mv.set_num_replicas(n, self._grace)

    async def stop_model(self, name: str, version: int | str | None = None) -> None:
        """Stop one version of a model, or all of them; linked apps then answer defaults.

        Stopping the current version makes the most recently deployed remaining one
        current. After `stop()` this does nothing.
        """
        if self._state is _State.CLOSED:
            return
        model = self._model(name)
        keys = (
            list(model.versions) if version is None else [self._version(name, version).version_key]
        )
        # Take them out of service before any await, so queries move on at once.
        stopping = [model.versions.pop(key) for key in keys]
        if model.current not in model.versions:
            model.current = next(reversed(model.versions), None)
        if not model.versions and self._models.get(name) is model:
            del self._models[name]
        for mv in stopping:
            self._cache.drop(lambda k, key=mv.version_key: k[0] == name and k[1] == key)
        self._retiring.update(stopping)  # stop() waits for these too
        try:
            await asyncio.gather(
                *(mv.stop(self._grace, Failure(Cause.NO_REPLICA, "was stopped")) for mv in stopping)
            )
        finally:
            self._retiring.difference_update(stopping)
        self._abandoned += sum(mv.abandoned for mv in stopping)

    async def create_endpoint(
        self,
        name: str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        default_output: Any = None,
        version: int | str = 1,
        slo_micros: float = 3_000_000,
        **deploy_options: Any,
    ) -> None:
        """Register an app, deploy a model and link them, all under `name`; all or nothing."""
        self._require_running("create an endpoint")
        if name in self._models:
            raise AlreadyExistsError(f"a model named {name!r} is already deployed", name=name)
        self.register_application(name, input_type, default_output, slo_micros)
        deployed = False
        try:
            await self.deploy_model(name, version, input_type, func, **deploy_options)
            deployed = True
            self.link_model_to_app(name, name)
        except BaseException:
            self._apps.pop(name, None)
            model = self._models.get(name)
            if deployed and model is not None and _version_key(version) in model.versions:
                await asyncio.shield(self.stop_model(name, version))  # only what it made
            raise

    # -- queries ----------------------------------------------------------------------
    async def predict(self, app: str, x: Any, *, slo_micros: float | None = None) -> Prediction:
        """Answer one query within the app's SLO (or `slo_micros`), or give the default."""
        t0 = self._clock()
        if self._state is not _State.RUNNING:
            self._require_running("predict")
        a = self._apps.get(app)
        if a is None:
            a = self._app(app)
        xv = a.validate(x, app)
        slo = a.slo if slo_micros is None else _positive("slo_micros", slo_micros) / MICROS
        return await self._answer(a, xv, next(self._ids), t0, t0 + slo)

    async def predict_batch(
        self, app: str, xs: Sequence[Any], *, slo_micros: float | None = None
    ) -> list[Prediction]:
        """Answer several inputs, one Prediction each, in order; all are validated first."""
        t0 = self._clock()
        self._require_running("predict")
        a = self._app(app)
        if isinstance(xs, str | bytes) or not isinstance(xs, Sequence | np.ndarray):
            raise ClipperError(f"predict_batch takes a sequence of inputs, got {type(xs).__name__}")
        validated: list[Any] = []
        try:
            for x in xs:
                validated.append(a.validate(x, app))  # noqa: PERF401 (its length is the index)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"input {len(validated)} of the batch: {exc}", app=app, input_type=a.input_type
            ) from None
        slo = a.slo if slo_micros is None else _positive("slo_micros", slo_micros) / MICROS
        deadline = t0 + slo
        ids = [next(self._ids) for _ in validated]
        return list(
            await asyncio.gather(
                *(
                    self._answer(a, xv, i, t0, deadline)
                    for xv, i in zip(validated, ids, strict=True)
                )
            )
        )

    def _finish(
        self, a: _App, qid: int, t0: float, output: Any, models: int, confidence: float
    ) -> Prediction:
        latency = (self._clock() - t0) * MICROS
        stats = a.stats
        stats.queries += 1
        stats.answered += 1
        stats.latency.record(latency)
        return Prediction(qid, output, False, None, models, confidence, latency)

    def _default(
        self,
        a: _App,
        qid: int,
        t0: float,
        cause: Cause,
        explanation: str,
        models: int = 0,
        confidence: float = 0.0,
    ) -> Prediction:
        latency = (self._clock() - t0) * MICROS
        stats = a.stats
        stats.queries += 1
        stats.defaults[cause.value] = stats.defaults.get(cause.value, 0) + 1
        stats.latency.record(latency)
        return Prediction(
            qid, a.default_output, True, explanation, models, confidence, latency, cause.value
        )

    def _explain(
        self, a: _App, name: str, mv: ModelVersion | None, failure: Failure, slo: float
    ) -> str:
        model = f"model {name!r}" if mv is None else f"model {name!r} (version {mv.version!r})"
        if failure.cause is Cause.DEADLINE:
            return (
                f"app {a.name!r}: {model} did not answer within the deadline"
                f" ({slo * MICROS:.0f} µs)"
            )
        if failure.cause is Cause.SHUTDOWN:
            return f"app {a.name!r}: the Clipper is shutting down (query for {model} not answered)"
        return f"app {a.name!r}: {model} {failure.detail}"

    def _start(
        self, a: _App, name: str, xv: Any, key: Hashable | None, now: float, deadline: float
    ) -> tuple[Any, ModelVersion | None]:
        """Begin getting `name`'s output for xv: the output, a Failure, or a future to await."""
        model = self._models.get(name)
        mv = model.versions.get(model.current) if model is not None and model.current else None
        if mv is None:
            return Failure(Cause.NO_REPLICA, "is not deployed"), None
        ck = None
        cache = self._cache
        if key is not None and cache.enabled:
            # The deployment's serial too: a batch of a stopped deployment finishing late
            # must not answer for a new deployment of the same version.
            ck = (name, mv.version_key, mv.deployment, key)
            out = cache.get(ck)
            if out is not _MISS:
                mv.cache_hits += 1
                return out, mv
            mv.cache_misses += 1
            q = cache.pending(ck)
            if q is not None and q.state != DONE and q.deadline > now:
                fut = self._loop.create_future()  # type: ignore[union-attr]
                q.waiters.append(fut)
                mv.batcher.queue.reschedule(q, deadline)
                return fut, mv
        q = Query(xv, deadline, now, self._settle if ck is not None else None, ck)
        fut = self._loop.create_future()  # type: ignore[union-attr]
        q.waiters.append(fut)
        failure = mv.submit(q)
        if failure is not None:
            return failure, mv
        if ck is not None:
            cache.begin(ck, q)
        return fut, mv

    def _settle(self, q: Query, outcome: Any) -> None:
        cache = self._cache
        cache.end(q.key, q)
        if not isinstance(outcome, Failure):
            cache.put(q.key, outcome)

    async def _answer(self, a: _App, xv: Any, qid: int, t0: float, deadline: float) -> Prediction:
        if not a.links:
            return self._default(a, qid, t0, Cause.NO_MODEL, f"app {a.name!r} has no linked model")
        policy = a.policy
        try:
            state = self._policy_state(a)
            chosen = policy.select(state, xv)
            if (len(chosen) != 1 or chosen[0] not in a.links) and (
                not chosen or any(m not in a.links for m in chosen)
            ):
                raise ClipperError(f"selected {chosen!r}, but the linked models are {a.links!r}")
        except Exception as exc:
            return self._default(
                a,
                qid,
                t0,
                Cause.POLICY_ERROR,
                f"app {a.name!r}: policy {a.policy_name} raised {type(exc).__name__}: {exc}",
            )
        now = self._clock()
        key = a.key(xv) if self._cache.enabled else None
        outputs, failures = await self._gather(a, chosen, xv, key, now, deadline)
        if not outputs:
            name, mv, failure = failures[0]
            return self._default(
                a, qid, t0, failure.cause, self._explain(a, name, mv, failure, deadline - t0)
            )
        try:
            answer, confidence = policy.combine(state, xv, outputs)
            confidence = float(confidence)
            if not 0.0 <= confidence <= 1.0:
                raise ValueError(f"confidence {confidence!r} is not in [0, 1]")
        except Exception as exc:
            return self._default(
                a,
                qid,
                t0,
                Cause.POLICY_ERROR,
                f"app {a.name!r}: policy {a.policy_name} combine raised"
                f" {type(exc).__name__}: {exc}",
                len(outputs),
            )
        if a.min_confidence is not None and confidence < a.min_confidence:
            return self._default(
                a,
                qid,
                t0,
                Cause.LOW_CONFIDENCE,
                f"app {a.name!r}: confidence {confidence:.3f} of the answer from"
                f" {', '.join(map(repr, outputs))} is below min_confidence {a.min_confidence}",
                len(outputs),
                confidence,
            )
        return self._finish(a, qid, t0, answer, len(outputs), confidence)

    async def _gather(
        self, a: _App, chosen: list[str], xv: Any, key: Hashable | None, now: float, deadline: float
    ) -> tuple[dict[str, Any], list[tuple[str, ModelVersion | None, Failure]]]:
        """Outputs of the chosen models that arrive by the deadline, and why the rest did not."""
        timer = self._timer
        assert timer is not None
        if len(chosen) == 1:  # the common case (Exp3), kept lean
            name = chosen[0]
            got, mv = self._start(a, name, xv, key, now, deadline)
            if isinstance(got, asyncio.Future):
                timer.add(deadline, got, _LATE)
                got = await got
            if isinstance(got, Failure):
                return {}, [(name, mv, got)]
            return {name: got}, []
        outputs: dict[str, Any] = {}
        failures: list[tuple[str, ModelVersion | None, Failure]] = []
        waiting: list[tuple[str, ModelVersion | None, asyncio.Future[Any]]] = []
        for name in chosen:
            got, mv = self._start(a, name, xv, key, now, deadline)
            if isinstance(got, asyncio.Future):
                waiting.append((name, mv, got))
            elif isinstance(got, Failure):
                failures.append((name, mv, got))
            else:
                outputs[name] = got
        if waiting:
            await self._wait_all([f for _, _, f in waiting], deadline)
            for name, mv, fut in waiting:
                result = fut.result()
                if isinstance(result, Failure):
                    failures.append((name, mv, result))
                else:
                    outputs[name] = result
        return outputs, failures

    async def _wait_all(self, futs: list[asyncio.Future[Any]], deadline: float) -> None:
        """Wait until every future is done or the deadline passes; stragglers then get
        the deadline failure, which also tells their queries that we stopped waiting."""
        loop = self._loop
        assert loop is not None and self._timer is not None
        everyone: asyncio.Future[Any] = loop.create_future()
        left = [len(futs)]

        def one_done(_: asyncio.Future[Any]) -> None:
            left[0] -= 1
            if left[0] == 0:
                _set_none(everyone)

        for f in futs:
            f.add_done_callback(one_done)
        self._timer.add(deadline, everyone, None)
        try:
            await everyone
        finally:
            for f in futs:
                f.remove_done_callback(one_done)
                _expire(f, _LATE)

    async def feedback(self, app: str, x: Any, y: Any) -> None:
        """Tell the app's policy the right answer for x, so its weights move toward the
        models that were right; their outputs come from the cache or are computed."""
        t0 = self._clock()
        self._require_running("send feedback")
        a = self._app(app)
        xv = a.validate(x, app)
        if not a.links:
            return
        try:
            chosen = a.policy.select(self._policy_state(a), xv)
            if not chosen or any(m not in a.links for m in chosen):
                raise ClipperError(f"selected {chosen!r}, but the linked models are {a.links!r}")
        except Exception as exc:
            raise ClipperError(
                f"app {app!r}: policy {a.policy_name} select raised {type(exc).__name__}: {exc}"
            ) from exc
        key = a.key(xv) if self._cache.enabled else None
        outputs, _ = await self._gather(a, chosen, xv, key, self._clock(), t0 + a.slo)
        # The links may have changed while the outputs were computed.
        outputs = {m: out for m, out in outputs.items() if m in a.links}
        if not outputs or self._apps.get(app) is not a:
            return
        try:
            state = self._policy_state(a)
            a.state = a.policy.observe(state, xv, y, outputs)
        except Exception as exc:
            raise ClipperError(
                f"app {app!r}: policy {a.policy_name} observe raised {type(exc).__name__}: {exc}"
            ) from exc

    # -- policy state -------------------------------------------------------------------
    def get_policy_state(self, app_name: str) -> Any:
        """The app's learned selection state as plain JSON-able values (a copy), or None
        while the app has no linked model. Save it to carry learning across restarts."""
        app = self._app(app_name)
        if not app.links:
            return None
        return copy.deepcopy(self._policy_state(app))

    def set_policy_state(self, app_name: str, state: Any) -> None:
        """Restore a state from `get_policy_state` (checked: it may name only linked models)."""
        app = self._app(app_name)
        if not app.links:
            raise ClipperError(f"app {app_name!r} has no linked model: link its models first")
        restore = getattr(app.policy, "restore_state", None)
        try:
            restored = (
                restore(copy.deepcopy(state), list(app.links))
                if restore is not None
                else copy.deepcopy(state)
            )
        except ValueError as exc:
            raise ClipperError(
                f"cannot restore the policy state of app {app_name!r}: {exc}"
            ) from exc
        app.state = restored
        app.state_models = tuple(app.links)

    # -- reading state ------------------------------------------------------------------
    def get_all_apps(self, *, verbose: bool = False) -> list[Any]:
        """The names of all apps (or, with verbose, their info dicts)."""
        names = sorted(self._apps)
        return [self.get_app_info(n) for n in names] if verbose else names

    def get_app_info(self, name: str) -> dict[str, Any]:
        """An app's configuration as plain values."""
        a = self._app(name)
        return {
            "name": a.name,
            "input_type": a.input_type,
            "default_output": a.default_output,
            "slo_micros": a.slo_given,
            "policy": a.policy_name,
            "min_confidence": a.min_confidence,
            "linked_models": list(a.links),
        }

    def get_linked_models(self, app_name: str) -> list[str]:
        """The models linked to an app, in the order they were linked."""
        return list(self._app(app_name).links)

    def get_all_models(self, *, verbose: bool = False) -> list[Any]:
        """The names of all deployed models (or, with verbose, every version's info)."""
        names = sorted(self._models)
        if not verbose:
            return names
        return [
            self._version_info(self._models[n], mv)
            for n in names
            for mv in self._models[n].versions.values()
        ]

    def get_model_info(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """One model version's configuration and state (the current version by default)."""
        mv = self._version(name, version)
        return self._version_info(self._models[name], mv)

    def _version_info(self, model: _Model, mv: ModelVersion) -> dict[str, Any]:
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
            "linked_apps": sorted(a.name for a in self._apps.values() if mv.name in a.links),
        }

    def get_current_model_version(self, name: str) -> int | str:
        """The version queries to this model go to, as it was first given."""
        return self._version(name, None).version

    def get_num_replicas(self, name: str, version: int | str | None = None) -> int:
        """How many replicas of a model version run (the current version by default)."""
        return self._version(name, version).num_replicas

    def metrics(self) -> dict[str, Any]:
        """A snapshot of counters and latencies, as plain JSON-able values."""
        apps = {}
        for a in self._apps.values():
            s = a.stats
            h = s.latency
            apps[a.name] = {
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
        models: dict[str, dict[str, Any]] = {}
        for m in self._models.values():
            models[m.name] = {
                key: {**mv.statistics(), "version": mv.version, "is_current": m.current == key}
                for key, mv in m.versions.items()
            }
        return {
            "apps": apps,
            "models": models,
            "cache": {
                "size": len(self._cache),
                "maxsize": self._cache.maxsize,
                "inflight": self._cache.inflight,
            },
            "abandoned_threads": self._abandoned
            + sum(mv.abandoned for m in self._models.values() for mv in m.versions.values()),
            "state": self._state.value,
        }
