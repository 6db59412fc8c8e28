"""The `Clipper`: its lifecycle and the public calls, over the registry's tables and the
query processor's path of a query."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import enum
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.from_thread
import numpy as np

from . import _defaults
from ._backends import resolve_backend
from ._cache import PredictionCache
from ._clock import MICROS, monotonic
from ._errors import (
    AlreadyExistsError,
    ClipperClosedError,
    ClipperError,
    InvalidInputError,
    describe,
)
from ._model import ModelVersion
from ._query_processor import QueryProcessor
from ._queue import Query
from ._registry import DeploySpec, Registry, count, positive, version_key
from ._selection import SelectionPolicy
from ._timers import DeadlineTimer, Heartbeat
from ._types import (
    BatchRecord,
    CacheStatistics,
    ClipperStatistics,
    DefaultCause,
    Failure,
    ModelStatistics,
    Prediction,
)

logger = logging.getLogger("clipperlite")


class _State(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    CLOSED = "closed"


class Clipper:
    """An embedded prediction server: apps, models, batching, caching and selection.

    A Clipper is not started, running or closed. Configuration calls (apps, links,
    `set_model_version`) work in any state; deploying, scaling and querying need a
    running one. It belongs to the event loop that started it.

    Args:
        cache_size: How many predictions the LRU cache holds, across all models;
            0 turns caching off (and the coalescing of identical concurrent queries).
        cache_max_bytes: The most bytes of keys and outputs the cache holds (numpy
            `nbytes`, the length of bytes and str, a small estimate for other values),
            so large inputs such as images cannot fill memory (256 MiB by default).
        shutdown_grace_s: How long `stop()`, `stop_model` and scaling down let running
            batches finish before their queries get a default (0 allowed).
        hang_timeout_s: A replica still in one batch this long after the last deadline
            of its queries is hung and replaced.
        history_size: Batches remembered per model version for `history()`.
        seed: Seeds the random choices of the policies made by name
            (`policy="exp3"`), so runs repeat; a policy object brings its own.

    Raises:
        ClipperError: An option is out of range.
    """

    def __init__(
        self,
        *,
        cache_size: int = _defaults.CACHE_SIZE,
        cache_max_bytes: int = _defaults.CACHE_MAX_BYTES,
        shutdown_grace_s: float = _defaults.SHUTDOWN_GRACE_S,
        hang_timeout_s: float = _defaults.HANG_TIMEOUT_S,
        history_size: int = _defaults.HISTORY_SIZE,
        seed: int | None = None,
    ) -> None:
        try:
            self._cache: PredictionCache[Query] = PredictionCache(cache_size, cache_max_bytes)
        except ValueError as exc:
            raise ClipperError(str(exc)) from None
        self._grace = positive("shutdown_grace_s", shutdown_grace_s, allow_zero=True)
        self._hang = positive("hang_timeout_s", hang_timeout_s)
        self._history_size = count("history_size", history_size, minimum=1)
        try:
            rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise ClipperError(f"seed must be None or a non-negative int, got {seed!r}") from exc
        self._registry = Registry(rng)
        #: Versions whose replicas are starting (stop() stops them too).
        self._deploying: set[ModelVersion] = set()
        #: Versions being stopped by stop_model (a concurrent stop() waits for them).
        self._retiring: set[ModelVersion] = set()
        self._serials = itertools.count()
        self._ids = itertools.count()
        self._state = _State.NOT_STARTED
        self._clock = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The thread of that loop (configuration calls while running belong to it).
        self._thread: int | None = None
        self._timer: DeadlineTimer | None = None
        self._heartbeat: Heartbeat | None = None
        self._processor: QueryProcessor | None = None
        self._stopping: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        r = self._registry
        return f"<Clipper {self._state.value}: {len(r.apps)} apps, {len(r.models)} models>"

    def _repr_html_(self) -> str:
        """The notebook view: `statistics()` as HTML tables of apps and model versions."""
        return self.statistics()._repr_html_()

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> Clipper:
        """Start serving on the running event loop.

        Returns:
            The Clipper itself, so a notebook can write `clipper = await Clipper().start()`.

        Raises:
            ClipperError: It is already running, or it was stopped (make a new one).
        """
        if self._state is _State.RUNNING:
            raise ClipperError("this Clipper is already running")
        if self._state is _State.CLOSED:
            raise ClipperError("this Clipper was stopped and cannot start again; make a new one")
        self._loop = loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._clock = loop.time
        self._timer = DeadlineTimer(loop)
        self._heartbeat = Heartbeat(loop, _defaults.HEARTBEAT_S)
        self._processor = QueryProcessor(self._cache, self._registry.models, loop, self._timer)
        self._state = _State.RUNNING
        return self

    async def stop(self) -> None:
        """Stop admitting queries, answer every waiting one, stop every replica.

        Running batches get `shutdown_grace_s` to finish; a replica stuck in its model
        beyond that is abandoned (counted in `metrics()`), never waited for. The
        shutdown runs as a task of its own: a caller cancelled while waiting does not
        cut it short. Idempotent: a later call waits for the first to finish.
        """
        if self._state is _State.NOT_STARTED:
            self._state = _State.CLOSED
            return
        self._check_loop("stop")
        if self._stopping is None:
            self._state = _State.CLOSED
            self._stopping = asyncio.get_running_loop().create_task(
                self._shutdown(), name="clipperlite:shutdown"
            )
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        failure = Failure(DefaultCause.SHUTDOWN, "the Clipper is shutting down")
        versions = self._registry.all_versions()
        versions += self._deploying  # their deploy_model raises ClipperClosedError
        versions += self._retiring  # being stopped by stop_model: a second stop() waits
        await asyncio.gather(*(v.stop(self._grace, failure) for v in versions))
        if self._timer is not None:
            self._timer.expire_all()
            self._timer.close()
        if self._heartbeat is not None:
            self._heartbeat.close()

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
        self._check_loop(what)

    def _check_loop(self, what: str) -> None:
        """Raise unless called on the event loop that started this Clipper (a cheap
        identity check, at the entry of each async call)."""
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise self._wrong_place(what, "event loop")

    def _check_thread(self, what: str) -> None:
        """Raise unless a running Clipper is configured from its own loop's thread."""
        if self._thread is not None and threading.get_ident() != self._thread:
            if self._state is _State.RUNNING:
                raise self._wrong_place(what, "thread")

    def _wrong_place(self, what: str, where: str) -> ClipperError:
        assert self._loop is not None
        if self._loop.is_closed():
            return ClipperError(
                f"cannot {what}: the event loop that started this Clipper has ended (its"
                " asyncio.run returned); a Clipper lives on one loop: make a new one in"
                " this loop, and stop each Clipper before its loop ends (async with Clipper())"
            )
        other = "thread" if threading.get_ident() != self._thread else "event loop"
        return ClipperError(
            f"cannot {what} from this {where}: this Clipper belongs to the event loop that"
            f" started it, and this is another {other}. From synchronous code in another"
            " thread use `with clipper.blocking() as c: c.predict(...)`; from another event"
            " loop, start a Clipper of its own there (in tests: a fixture driven by the same"
            " runner as the test)"
        )

    # -- applications and links ----------------------------------------------------------
    def register_application(
        self,
        name: str,
        input_type: str,
        default_output: Any,
        slo_micros: float,
        *,
        policy: str | SelectionPolicy = _defaults.POLICY,
        min_confidence: float | None = None,
        max_contexts: int = _defaults.MAX_CONTEXTS,
    ) -> None:
        """Register an application.

        Args:
            name: The app's name (what `predict` is called with).
            input_type: What its inputs are: "integers", "floats", "doubles", "bytes",
                "strings" or "any" (or one of Clipper's aliases, "ints", "double", ...).
            default_output: The output given when no model can answer in time.
            slo_micros: Its latency objective in microseconds: every query is answered
                within it (plus a small margin), by a model or with the default.
            policy: How it picks among linked models: "exp3" (one model per query),
                "exp4" (all, combined by weight) or a `SelectionPolicy` object.
            min_confidence: Below this confidence in [0, 1] an answer is replaced by the
                default (explained).
            max_contexts: How many contexts (users, sessions: see `predict`'s `context`)
                keep a policy state of their own; beyond it the least recently used is
                dropped (and starts afresh if it comes back). The shared state of
                `context=None` does not count.

        Raises:
            AlreadyExistsError: An app of that name exists.
            ClipperError: An argument is wrong (the message names it).
        """
        self._check_thread("register an application")
        self._registry.register_application(
            name, input_type, default_output, slo_micros, policy, min_confidence, max_contexts
        )

    def delete_application(self, name: str) -> None:
        """Remove an app and its links (queries already running finish).

        Raises:
            UnknownApplicationError: No app has that name.
        """
        self._check_thread("delete an application")
        self._registry.delete_application(name)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        """Let an app query a model (an app may link several; its policy picks).

        Raises:
            UnknownApplicationError: No app has that name.
            UnknownModelError: No model of that name is deployed.
            ClipperError: The app and the model take different input types, or the
                app's policy refused the new links (they are then unchanged).
        """
        self._check_thread("link a model")
        self._registry.link(app_name, model_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        """Stop an app from querying a model.

        Raises:
            UnknownApplicationError: No app has that name.
            ClipperError: The model is not linked to the app.
        """
        self._check_thread("unlink a model")
        self._registry.unlink(app_name, model_name)

    # -- models ---------------------------------------------------------------------------
    async def deploy_model(
        self,
        name: str,
        version: int | str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        num_replicas: int = 1,
        batch_size: int | None = None,
        batch_wait_micros: float = _defaults.BATCH_WAIT_MICROS,
        max_queue: int = _defaults.MAX_QUEUE,
        backend: Any = None,
        backend_options: dict[str, Any] | None = None,
        cache: bool = True,
    ) -> None:
        """Deploy a version of a model and make it current; older versions stay deployed,
        so rolling back (`set_model_version`) is instant.

        Args:
            name: The model's name (what apps link to).
            version: An int or a str, keyed by its string form (1 and "1" are the same).
            input_type: The input type it takes (that of the apps it will serve).
            func: Takes a list of inputs and returns a list of as many outputs: a plain
                function (run on worker threads by default) or an `async def` (run on
                the loop).
            num_replicas: Replicas to start; 0 deploys without serving.
            batch_size: None lets AIMD size batches against the SLO; an int fixes it.
            batch_wait_micros: How long a short batch may wait for more queries.
            max_queue: The most queries waiting for this version; beyond it a query gets
                the default at once.
            backend: "thread", "async", "process", a name from the
                `clipperlite.backends` entry points ("ray"), or a `Backend` object.
            backend_options: Options for a backend given by name (for Ray: num_cpus,
                num_gpus, resources, address).
            cache: False keeps this version's outputs out of the cache.

        Raises:
            ClipperClosedError: The Clipper is not running (or stopped meanwhile).
            AlreadyExistsError: This version is deployed or being deployed.
            ClipperError: An argument is wrong, the backend is not installed, or the
                replicas failed to start (chained to the cause).
        """
        self._require_running("deploy a model")
        spec = DeploySpec.check(
            name,
            version,
            input_type,
            func,
            num_replicas=num_replicas,
            batch_size=batch_size,
            batch_wait_micros=batch_wait_micros,
            max_queue=max_queue,
            cache=cache,
        )
        chosen, backend_name = resolve_backend(backend, func, backend_options)
        registry = self._registry
        registry.begin_deploy(spec)
        mv = ModelVersion(
            spec.name,
            spec.version,
            spec.input_type,
            spec.func,
            backend=chosen,
            backend_name=backend_name,
            batch_size=spec.batch_size,
            batch_wait=spec.batch_wait,
            max_queue=spec.max_queue,
            hang_timeout=self._hang,
            clock=self._clock,
            cache=spec.cache,
            history_size=self._history_size,
            serial=next(self._serials),
        )
        self._deploying.add(mv)
        try:
            try:
                await mv.set_num_replicas(spec.num_replicas, self._grace)
            except BaseException as exc:
                await self._retire(mv, 0.0, Failure(DefaultCause.NO_REPLICA, "failed to deploy"))
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
                await self._retire(
                    mv, 0.0, Failure(DefaultCause.SHUTDOWN, "the Clipper is shutting down")
                )
                self._require_running("deploy a model")
        finally:
            self._deploying.discard(mv)
            registry.end_deploy(spec)
        registry.add_version(mv)
        logger.info(
            "deployed model %r version %r (%s backend, %d replicas)",
            name,
            version,
            backend_name,
            spec.num_replicas,
        )

    def set_model_version(self, name: str, version: int | str) -> None:
        """Make an already deployed version the current one (rollback or roll forward).

        Raises:
            UnknownModelError: The model or that version is not deployed.
        """
        self._check_thread("set a model version")
        self._registry.set_current(name, version)
        logger.info("model %r: version %r is now current", name, version)

    async def set_num_replicas(
        self, name: str, num_replicas: int, version: int | str | None = None
    ) -> None:
        """Scale a model version (the current one by default).

        With 0, queued and new queries get the default at once ("no running replica");
        cached answers are still served. A replica being removed finishes its batch
        within `shutdown_grace_s`.

        Raises:
            ClipperClosedError: The Clipper is not running.
            UnknownModelError: The model or that version is not deployed.
            ClipperError: `num_replicas` is not an int >= 0.
        """
        self._require_running("change replicas")
        n = count("num_replicas", num_replicas, minimum=0)
        mv = self._registry.version(name, version)
        await mv.set_num_replicas(n, self._grace)

    async def stop_model(self, name: str, version: int | str | None = None) -> None:
        """Stop one version of a model, or all of them; linked apps then answer defaults
        until another version or model serves them.

        Stopping the current version makes the most recently deployed remaining one
        current. The stopped versions' final figures stay in `statistics()`. After
        `stop()` this does nothing, so teardown code may call it freely.

        Raises:
            UnknownModelError: The model or that version is not deployed.
        """
        if self._state is _State.CLOSED:
            return
        self._check_loop("stop a model")
        stopping = self._registry.take_out_of_service(name, version)
        for mv in stopping:
            self._cache.drop(mv.owns_key)
        failure = Failure(DefaultCause.NO_REPLICA, "was stopped")
        await asyncio.gather(*(self._retire(mv, self._grace, failure) for mv in stopping))

    def _retire(self, mv: ModelVersion, grace: float, failure: Failure) -> asyncio.Future[None]:
        """Start stopping `mv`; until that ends, whoever awaited it cancelled or not,
        `stop()` waits for it too, so no replica outlives `stop()`."""
        task = mv.stop_task(grace, failure)
        if not task.done():
            self._retiring.add(mv)
            task.add_done_callback(lambda _: self._retiring.discard(mv))
        return asyncio.shield(task)

    async def create_endpoint(
        self,
        name: str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        default_output: Any = None,
        version: int | str = 1,
        slo_micros: float = _defaults.ENDPOINT_SLO_MICROS,
        **deploy_options: Any,
    ) -> None:
        """Register an app, deploy a model and link them, all under `name`; all or nothing.

        Args:
            name: The app's and the model's name.
            input_type: What the inputs are.
            func: The model (see `deploy_model`).
            default_output: The app's default output.
            version: The model's version.
            slo_micros: The app's latency objective in microseconds.
            **deploy_options: `deploy_model`'s keyword options.

        Raises:
            ClipperError: The errors of `register_application` and `deploy_model`; if
                the deployment fails, nothing of it stays registered.
        """
        self._require_running("create an endpoint")
        if name in self._registry.models:
            raise AlreadyExistsError(f"a model named {name!r} is already deployed", name=name)
        self.register_application(name, input_type, default_output, slo_micros)
        deployed = False
        try:
            await self.deploy_model(name, version, input_type, func, **deploy_options)
            deployed = True
            self.link_model_to_app(name, name)
        except BaseException:
            self._registry.apps.pop(name, None)
            model = self._registry.models.get(name)
            if deployed and model is not None and version_key(version) in model.versions:
                await asyncio.shield(self.stop_model(name, version))  # only what it made
            raise

    # -- queries ----------------------------------------------------------------------------
    async def predict(
        self,
        app: str,
        x: Any,
        *,
        slo_micros: float | None = None,
        context: Hashable | None = None,
    ) -> Prediction:
        """Answer one query within the app's SLO, or give its default output, explained.

        Args:
            app: The application's name.
            x: The input, of the app's input type.
            slo_micros: Replaces the app's SLO for this query.
            context: Who asks (a user, a session, a region: any hashable): its own
                policy state chooses the models, made on first use, so selection
                learns per context. None uses the app's shared state. Outputs and
                the cache are shared by every context.

        Returns:
            A `Prediction`; a model's failure or a missed deadline is a default with
            `default_explanation` and `default_cause`, never an exception.

        Raises:
            ClipperClosedError: The Clipper is not running.
            UnknownApplicationError: No app has that name.
            InvalidInputError: x does not fit the app's input type (no model sees it).
            ClipperError: The context is not hashable.
        """
        t0 = self._clock()
        if self._state is not _State.RUNNING or asyncio.get_running_loop() is not self._loop:
            self._require_running("predict")
        registry = self._registry
        a = registry.apps.get(app)
        if a is None:
            a = registry.app(app)
        xv = a.validate(x, app)
        slo = a.slo if slo_micros is None else positive("slo_micros", slo_micros) / MICROS
        beat: Heartbeat = self._heartbeat  # type: ignore[assignment]
        if t0 - beat.last > slo * _defaults.SHED_LAG_SHARE + _defaults.HEARTBEAT_S:
            # The heartbeat is late. Yield once to see whether the loop still is: a
            # flood keeps it busy past this query's share of the SLO, while after a
            # one-off stall (the caller's own blocking code, a collection) one turn
            # of the loop is quick and the query has its whole SLO ahead of it. The
            # yield also lets the heartbeat run for a caller awaiting queries in turn,
            # and comes before anything is counted, so a caller cancelled here counts
            # nothing.
            lag = beat.lag(t0)
            await asyncio.sleep(0)
            turn = self._clock() - t0
            if turn > slo * _defaults.SHED_LAG_SHARE:
                return self._processor.shed(  # type: ignore[union-attr]
                    a, next(self._ids), t0, max(lag, turn)
                )
        if context is not None:
            _check_context(app, context)
            return await self._processor.answer(  # type: ignore[union-attr]
                a, xv, next(self._ids), t0, t0 + slo, context
            )
        proc: QueryProcessor = self._processor  # type: ignore[assignment]
        qid = next(self._ids)
        deadline = t0 + slo
        name = proc.sole_model(a)
        if name is None:
            return await proc.answer(a, xv, qid, t0, deadline)
        # One linked model and nothing to choose: this coroutine is the query's only one.
        got = proc.begin(a, name, xv, qid, t0, deadline)
        if got.__class__ is Prediction:
            return got
        return proc.conclude(a, name, qid, t0, deadline, await got)  # type: ignore[misc]

    async def predict_batch(
        self,
        app: str,
        xs: Sequence[Any],
        *,
        slo_micros: float | None = None,
        context: Hashable | None = None,
    ) -> list[Prediction]:
        """Answer several inputs (Clipper's `input_batch`), under one deadline.

        Args:
            app: The application's name.
            xs: The inputs; every one is validated before any is queued.
            slo_micros: Replaces the app's SLO for these queries.
            context: Whose policy state chooses the models (see `predict`).

        Returns:
            One Prediction per input, in order, each with its own `query_id`.

        Raises:
            ClipperClosedError: The Clipper is not running.
            UnknownApplicationError: No app has that name.
            InvalidInputError: An input does not fit (the message says which one).
            ClipperError: xs is not a sequence, or the context is not hashable.
        """
        t0 = self._clock()
        self._require_running("predict")
        a = self._registry.app(app)
        if context is not None:
            _check_context(app, context)
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
        slo = a.slo if slo_micros is None else positive("slo_micros", slo_micros) / MICROS
        deadline = t0 + slo
        ids = [next(self._ids) for _ in validated]
        answer = self._processor.answer  # type: ignore[union-attr]
        return list(
            await asyncio.gather(
                *(
                    answer(a, xv, i, t0, deadline, context)
                    for xv, i in zip(validated, ids, strict=True)
                )
            )
        )

    async def feedback(self, app: str, x: Any, y: Any, *, context: Hashable | None = None) -> None:
        """Tell the app's policy the right answer y for x (Clipper's `update`), so its
        weights move toward the models that were right.

        Feedback is joined to what was served: if x was predicted recently in this
        context, the models that answered it then are the ones updated (Exp3: the one
        it drew, importance weighted by the probability it had then), their outputs
        taken from the cache, so no model is called again. For an x not predicted
        (or long ago), the policy selects the models now and their outputs come from
        the cache, else are computed within the app's SLO (a model that does not
        answer in time is left out). Feedbacks to one app are applied one at a time.

        Args:
            app: The application's name.
            x: The input the feedback is about.
            y: Its right answer (the label).
            context: Whose policy state learns (see `predict`); None: the shared one.

        Raises:
            ClipperClosedError: The Clipper is not running.
            UnknownApplicationError: No app has that name.
            InvalidInputError: x does not fit the app's input type.
            ClipperError: The policy raised (chained to its error), or the context is
                not hashable.
        """
        t0 = self._clock()
        self._require_running("send feedback")
        a = self._registry.app(app)
        xv = a.validate(x, app)
        if context is not None:
            _check_context(app, context)
        await self._processor.feedback(a, xv, y, t0, context)  # type: ignore[union-attr]

    # -- policy state -------------------------------------------------------------------
    def get_policy_state(self, app_name: str, context: Hashable | None = None) -> Any:
        """The learned selection state of an app's context (a copy).

        Save it to carry learning across restarts, or to share it between processes.

        Args:
            app_name: The application's name.
            context: Whose state (see `predict`); None: the app's shared state.

        Returns:
            The state, or None while no model is linked, or for a context that was
            never used or was dropped (`max_contexts`). Reading does not count as a
            use of the context.

        Raises:
            UnknownApplicationError: No app has that name.
            ClipperError: The context is not hashable.
        """
        self._check_thread("read a policy state")
        app = self._registry.app(app_name)
        if not app.links:
            return None
        try:
            if context is None:
                return copy.deepcopy(app.policy_state())
            _check_context(app_name, context)
            entry = app.contexts.get(context)
            if entry is None:
                return None
            if entry.links is not app.links:
                entry.state = app.policy.init_state(list(app.links), entry.state)
                entry.links = app.links
            return copy.deepcopy(entry.state)
        except ClipperError:
            raise
        except Exception as exc:  # the policy's init_state, or a state that cannot be copied
            raise ClipperError(
                f"cannot read the policy state of app {app_name!r}: {describe(exc)}"
            ) from exc

    def set_policy_state(self, app_name: str, state: Any, context: Hashable | None = None) -> None:
        """Restore a state from `get_policy_state` (checked: it may name only linked models).

        Args:
            app_name: The application's name.
            state: The state, as `get_policy_state` gave it.
            context: Whose state (see `predict`); None: the app's shared state. A
                context set here counts as used (toward `max_contexts`).

        Raises:
            UnknownApplicationError: No app has that name.
            ClipperError: The app has no linked model, the state does not fit, or the
                context is not hashable.
        """
        self._check_thread("set a policy state")
        app = self._registry.app(app_name)
        if context is not None:
            _check_context(app_name, context)
        if not app.links:
            raise ClipperError(f"app {app_name!r} has no linked model: link its models first")
        restore = getattr(app.policy, "restore_state", None)
        try:
            restored = (
                restore(copy.deepcopy(state), list(app.links))
                if restore is not None
                else copy.deepcopy(state)
            )
        except Exception as exc:  # a state that does not fit, cannot be copied, is too deep
            raise ClipperError(
                f"cannot restore the policy state of app {app_name!r}: {describe(exc)}"
            ) from exc
        app.set_context_state(context, restored)

    # -- synchronous callers ---------------------------------------------------------------
    @contextlib.contextmanager
    def blocking(self) -> Iterator[BlockingClipper]:
        """Use this running Clipper from synchronous code in another thread (Flask, Django,
        a script) while its event loop runs elsewhere::

            with clipper.blocking() as c:
                c.predict("app", [1.0, 2.0])

        The object has the same query, model and configuration calls, synchronous; each
        runs on the Clipper's own loop through an anyio blocking portal hosted there for
        the life of the `with` block.

        Raises:
            ClipperClosedError: The Clipper is not running.
            ClipperError: Called on the Clipper's own event loop thread (where the calls
                are awaited instead: blocking there would stop the loop).
        """
        if self._state is not _State.RUNNING:
            self._require_running("use blocking()")
        loop = self._loop
        assert loop is not None
        if threading.get_ident() == self._thread:
            raise ClipperError(
                "blocking() is for synchronous code in other threads; on the Clipper's own"
                " event loop, await its calls instead (await clipper.predict(...))"
            )
        if loop.is_closed():
            raise self._wrong_place("use blocking()", "thread")
        if not loop.is_running():
            raise ClipperError(_LOOP_NOT_RUNNING)
        ready: concurrent.futures.Future[tuple[Any, Any]] = concurrent.futures.Future()

        async def host() -> None:
            async with anyio.from_thread.BlockingPortal() as portal:
                done = anyio.Event()
                ready.set_result((portal, done))
                await done.wait()

        hosting = asyncio.run_coroutine_threadsafe(host(), loop)
        either: list[concurrent.futures.Future[Any]] = [ready, hosting]
        first = concurrent.futures.FIRST_COMPLETED
        while not concurrent.futures.wait(either, timeout=0.1, return_when=first).done:
            if loop.is_closed() or not loop.is_running():  # it stopped before hosting us
                hosting.cancel()
                raise ClipperError(_LOOP_NOT_RUNNING)
        if not ready.done():  # the portal could not start: say why
            hosting.result()
            raise ClipperClosedError("cannot use blocking(): the Clipper's event loop stopped")
        portal, done = ready.result()
        try:
            yield BlockingClipper(self, portal)
        finally:
            portal.call(done.set)
            hosting.result()

    # -- reading state ------------------------------------------------------------------
    def get_all_apps(self, *, verbose: bool = False) -> list[Any]:
        """The names of all apps, sorted (or, with verbose, their info dicts)."""
        names = sorted(self._registry.apps)
        return [self.get_app_info(n) for n in names] if verbose else names

    def get_app_info(self, name: str) -> dict[str, Any]:
        """An app's configuration as plain values.

        Raises:
            UnknownApplicationError: No app has that name.
        """
        return self._registry.app_info(name)

    def get_linked_models(self, app_name: str) -> list[str]:
        """The models linked to an app, in the order they were linked.

        Raises:
            UnknownApplicationError: No app has that name.
        """
        return list(self._registry.app(app_name).links)

    def get_all_models(self, *, verbose: bool = False) -> list[Any]:
        """The names of all deployed models, sorted (or, with verbose, every version's info)."""
        registry = self._registry
        if not verbose:
            return sorted(registry.models)
        return [registry.version_info(mv) for mv in registry.all_versions()]

    def get_model_info(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """One model version's configuration and state (the current version by default).

        Raises:
            UnknownModelError: The model or that version is not deployed.
        """
        return self._registry.version_info(self._registry.version(name, version))

    def get_current_model_version(self, name: str) -> int | str:
        """The version queries to this model go to, as it was first given.

        Raises:
            UnknownModelError: The model is not deployed.
        """
        return self._registry.version(name, None).version

    def get_num_replicas(self, name: str, version: int | str | None = None) -> int:
        """How many replicas of a model version run (the current version by default).

        Raises:
            UnknownModelError: The model or that version is not deployed.
        """
        return self._registry.version(name, version).num_replicas

    def statistics(self) -> ClipperStatistics:
        """One snapshot of every figure, as frozen typed records (safe from any thread).

        Returns:
            Apps (queries, defaults by cause, latency percentiles and histogram), model
            versions deployed or stopped (batches, batch size and latency histograms,
            queue, errors, cache hits and misses) and the cache. Nothing is added to
            the query path: this only reads counters.
        """
        registry = self._registry
        apps = tuple(registry.apps[n].statistics() for n in sorted(registry.apps))
        models: list[ModelStatistics] = []
        for n in sorted(registry.models):
            models += [
                mv.statistics(is_current=registry.is_current(mv))
                for mv in list(registry.models[n].versions.values())
            ]
        models += [
            mv.statistics(is_current=False)
            for _, mv in sorted(registry.stopped.items(), key=lambda kv: kv[0])
        ]
        cache = self._cache
        abandoned = registry.abandoned_before + sum(m.abandoned_threads for m in models)
        return ClipperStatistics(
            state=self._state.value,
            apps=apps,
            models=tuple(models),
            cache=CacheStatistics(
                size=len(cache),
                maxsize=cache.maxsize,
                inflight=cache.inflight,
                nbytes=cache.nbytes,
                max_bytes=cache.max_bytes,
            ),
            abandoned_threads=abandoned,
        )

    def history(self, name: str, version: int | str | None = None) -> list[BatchRecord]:
        """The recent batches of a model version (the current one by default), oldest
        first: the last `history_size` batches, each its time, size, latency, max_batch
        after it and queue length. A stopped version's history is kept with its figures.

        Raises:
            UnknownModelError: The model or that version was never deployed.
        """
        return self._registry.any_version(name, version).history()

    def metrics(self) -> dict[str, Any]:
        """`statistics()` as plain JSON-able values: per app (queries, defaults by cause,
        latency p50/p99 in µs), per model version (batches, mean and current max batch
        size, queue length, errors, cache hits and misses), the cache."""
        return _metrics(self.statistics())


class BlockingClipper:
    """A running Clipper's calls made synchronous, for code in another thread; see
    `Clipper.blocking()`. Each call runs on the Clipper's loop and returns its result
    (or raises its error) here."""

    def __init__(self, clipper: Clipper, portal: Any) -> None:
        self._clipper = clipper
        self._portal = portal

    def __repr__(self) -> str:
        return f"<BlockingClipper of {self._clipper!r}>"

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(functools.partial(func, *args, **kwargs))

    # queries
    def predict(self, app: str, x: Any, **options: Any) -> Prediction:
        """`Clipper.predict`, synchronous."""
        result: Prediction = self._call(self._clipper.predict, app, x, **options)
        return result

    def predict_batch(self, app: str, xs: Sequence[Any], **options: Any) -> list[Prediction]:
        """`Clipper.predict_batch`, synchronous."""
        result: list[Prediction] = self._call(self._clipper.predict_batch, app, xs, **options)
        return result

    def feedback(self, app: str, x: Any, y: Any, **options: Any) -> None:
        """`Clipper.feedback`, synchronous."""
        self._call(self._clipper.feedback, app, x, y, **options)

    # models
    def deploy_model(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.deploy_model`, synchronous."""
        self._call(self._clipper.deploy_model, *args, **kwargs)

    def create_endpoint(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.create_endpoint`, synchronous."""
        self._call(self._clipper.create_endpoint, *args, **kwargs)

    def set_num_replicas(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.set_num_replicas`, synchronous."""
        self._call(self._clipper.set_num_replicas, *args, **kwargs)

    def stop_model(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.stop_model`, synchronous."""
        self._call(self._clipper.stop_model, *args, **kwargs)

    # configuration and reading state: run on the loop's thread, as they must
    def register_application(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.register_application`."""
        self._call(self._clipper.register_application, *args, **kwargs)

    def delete_application(self, name: str) -> None:
        """`Clipper.delete_application`."""
        self._call(self._clipper.delete_application, name)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        """`Clipper.link_model_to_app`."""
        self._call(self._clipper.link_model_to_app, app_name, model_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        """`Clipper.unlink_model_from_app`."""
        self._call(self._clipper.unlink_model_from_app, app_name, model_name)

    def set_model_version(self, name: str, version: int | str) -> None:
        """`Clipper.set_model_version`."""
        self._call(self._clipper.set_model_version, name, version)

    def get_policy_state(self, *args: Any, **kwargs: Any) -> Any:
        """`Clipper.get_policy_state`."""
        return self._call(self._clipper.get_policy_state, *args, **kwargs)

    def set_policy_state(self, *args: Any, **kwargs: Any) -> None:
        """`Clipper.set_policy_state`."""
        self._call(self._clipper.set_policy_state, *args, **kwargs)

    def get_all_apps(self, **kwargs: Any) -> list[Any]:
        """`Clipper.get_all_apps`."""
        result: list[Any] = self._call(self._clipper.get_all_apps, **kwargs)
        return result

    def get_app_info(self, name: str) -> dict[str, Any]:
        """`Clipper.get_app_info`."""
        result: dict[str, Any] = self._call(self._clipper.get_app_info, name)
        return result

    def get_linked_models(self, app_name: str) -> list[str]:
        """`Clipper.get_linked_models`."""
        result: list[str] = self._call(self._clipper.get_linked_models, app_name)
        return result

    def get_all_models(self, **kwargs: Any) -> list[Any]:
        """`Clipper.get_all_models`."""
        result: list[Any] = self._call(self._clipper.get_all_models, **kwargs)
        return result

    def get_model_info(self, *args: Any) -> dict[str, Any]:
        """`Clipper.get_model_info`."""
        result: dict[str, Any] = self._call(self._clipper.get_model_info, *args)
        return result

    def get_current_model_version(self, name: str) -> int | str:
        """`Clipper.get_current_model_version`."""
        result: int | str = self._call(self._clipper.get_current_model_version, name)
        return result

    def get_num_replicas(self, *args: Any) -> int:
        """`Clipper.get_num_replicas`."""
        result: int = self._call(self._clipper.get_num_replicas, *args)
        return result

    # plain reads, safe from any thread
    def statistics(self) -> ClipperStatistics:
        """`Clipper.statistics`."""
        return self._clipper.statistics()

    def metrics(self) -> dict[str, Any]:
        """`Clipper.metrics`."""
        return self._clipper.metrics()

    def history(self, name: str, version: int | str | None = None) -> list[BatchRecord]:
        """`Clipper.history`."""
        return self._clipper.history(name, version)


_LOOP_NOT_RUNNING = (
    "cannot use blocking(): the Clipper's event loop is not running (stopped between"
    " run_until_complete calls?); blocking() needs that loop running in its own thread,"
    " e.g. loop.run_forever() or asyncio.run(main()) there"
)


def _check_context(app: str, context: object) -> None:
    """A context must be hashable (it keys a policy state), else a ClipperError naming it."""
    try:
        hash(context)
    except Exception as exc:  # unhashable, or a __hash__ that raises
        try:
            shown = repr(context)
        except Exception:
            shown = f"<{type(context).__name__}>"
        raise ClipperError(
            f"app {app!r}: a context must be hashable (a str, an int, a tuple...), got"
            f" {shown[:200]} ({type(context).__name__}: hashing it raised {describe(exc)})"
        ) from None


def _metrics(s: ClipperStatistics) -> dict[str, Any]:
    apps = {
        a.name: {
            "queries": a.queries,
            "answered": a.answered,
            "defaults": {str(c.value): n for c, n in a.defaults.items()},
            "defaults_total": a.defaults_total,
            "latency_micros": {
                "p50": a.latency_p50_micros,
                "p99": a.latency_p99_micros,
                "mean": a.latency_mean_micros,
                "max": a.latency_max_micros,
            },
        }
        for a in s.apps
    }
    models: dict[str, dict[str, Any]] = {}
    for m in s.models:
        if m.stopped and str(m.version) in models.get(m.name, {}):
            continue  # a live deployment of that version takes the place
        models.setdefault(m.name, {})[str(m.version)] = {
            "batches": m.batches,
            "mean_batch_size": m.mean_batch_size,
            "max_batch_size": m.max_batch_size,
            "batch_latency_micros": m.batch_latency_micros,
            "queue_length": m.queue_length,
            "errors": m.errors,
            "retried_batches": m.retried_batches,
            "expired_in_queue": m.expired_in_queue,
            "cancelled_in_queue": m.cancelled_in_queue,
            "rejected_queue_full": m.rejected_queue_full,
            "rejected_would_miss": m.rejected_would_miss,
            "cache_hits": m.cache_hits,
            "cache_misses": m.cache_misses,
            "num_replicas": m.num_replicas,
            "abandoned_threads": m.abandoned_threads,
            "replaced_replicas": m.replaced_replicas,
            "version": m.version,
            "is_current": m.is_current,
            "stopped": m.stopped,
        }
    return {
        "apps": apps,
        "models": models,
        "cache": {
            "size": s.cache.size,
            "maxsize": s.cache.maxsize,
            "inflight": s.cache.inflight,
            "bytes": s.cache.nbytes,
            "max_bytes": s.cache.max_bytes,
        },
        "abandoned_threads": s.abandoned_threads,
        "state": s.state,
    }
