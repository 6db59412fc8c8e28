"""The `Clipper`: configuration of apps, models and links; lifecycle; the public calls.

The tables' records live in `_apps`, the path of a query in `_router`.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import itertools
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from ._apps import (
    App,
    Deployment,
    Model,
    app_info,
    app_metrics,
    count,
    positive,
    version_info,
    version_key,
)
from ._batching import Query
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
from ._model import UNLINKED_SLO, ModelVersion
from ._router import Router
from ._selection import SelectionPolicy
from ._timers import DeadlineTimer
from ._types import Cause, Failure, Prediction

logger = logging.getLogger("clipperlite")


class _State(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    CLOSED = "closed"


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
        self._grace = positive("shutdown_grace_s", shutdown_grace_s, allow_zero=True)
        self._hang = positive("hang_timeout_s", hang_timeout_s)
        try:
            self._rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise ClipperError(f"seed must be None or a non-negative int, got {seed!r}") from exc
        self._deploying: dict[tuple[str, str], ModelVersion] = {}
        self._deployments = itertools.count()
        self._retiring: set[ModelVersion] = set()
        self._apps: dict[str, App] = {}
        self._models: dict[str, Model] = {}
        self._ids = itertools.count()
        self._state = _State.NOT_STARTED
        self._clock = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: DeadlineTimer | None = None
        self._router: Router | None = None
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
        self._router = Router(self._cache, self._models, loop, self._timer)
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
        if isinstance(name, str) and name in self._apps:
            raise AlreadyExistsError(f"application {name!r} already exists", name=name)
        self._apps[name] = App.check(
            name, input_type, default_output, slo_micros, policy, min_confidence, self._rng
        )

    def delete_application(self, name: str) -> None:
        """Remove an app and its links (queries already running finish)."""
        app = self._app(name)
        del self._apps[name]
        for model in app.links:
            self._update_budget(model)

    def _app(self, name: str) -> App:
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
            self._relink(app, (*app.links, model_name))
            self._update_budget(model_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        """Stop an app from querying a model."""
        app = self._app(app_name)
        if model_name not in app.links:
            raise ClipperError(
                f"model {model_name!r} is not linked to app {app_name!r}"
                f" (linked: {list(app.links) or 'none'})"
            )
        self._relink(app, tuple(m for m in app.links if m != model_name))
        self._update_budget(model_name)

    @staticmethod
    def _relink(app: App, links: tuple[str, ...]) -> None:
        """Give the app new links; a policy that has state re-initialises it at once, and
        if it refuses, the links stay as they were."""
        if app.state is not None and links:
            try:
                state = app.policy.init_state(list(links), app.state)
            except Exception as exc:
                raise ClipperError(
                    f"app {app.name!r}: policy {app.policy_name} init_state raised"
                    f" {type(exc).__name__}: {exc}; the link was not changed"
                ) from exc
            app.state, app.state_links = state, links
        app.links = links

    def _update_budget(self, model_name: str) -> None:
        model = self._models.get(model_name)
        if model is None:
            return
        slos = [a.slo for a in self._apps.values() if model_name in a.links]
        slo = min(slos) if slos else UNLINKED_SLO
        for version in model.versions.values():
            version.set_slo(slo)

    # -- models -----------------------------------------------------------------------
    def _model(self, name: str) -> Model:
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
        key = model.current if version is None else version_key(version)
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
        d = Deployment.check(
            name,
            version,
            input_type,
            func,
            num_replicas=num_replicas,
            batch_size=batch_size,
            batch_wait_micros=batch_wait_micros,
            max_queue=max_queue,
            backend=backend,
        )
        vkey, itype = d.key, d.input_type
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
            d.func,
            backend=d.backend,
            batch_size=d.batch_size,
            batch_wait=d.batch_wait,
            max_queue=d.max_queue,
            hang_timeout=self._hang,
            clock=self._clock,
        )
        mv.deployment = next(self._deployments)
        self._deploying[name, vkey] = mv
        try:
            try:
                await mv.set_num_replicas(d.num_replicas, self._grace)
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
            model = self._models[name] = Model(name, itype)
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
        n = count("num_replicas", num_replicas, minimum=0)
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
            if deployed and model is not None and version_key(version) in model.versions:
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
        slo = a.slo if slo_micros is None else positive("slo_micros", slo_micros) / MICROS
        return await self._router.answer(  # type: ignore[union-attr]
            a, xv, next(self._ids), t0, t0 + slo
        )

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
        slo = a.slo if slo_micros is None else positive("slo_micros", slo_micros) / MICROS
        deadline = t0 + slo
        ids = [next(self._ids) for _ in validated]
        answer = self._router.answer  # type: ignore[union-attr]
        return list(
            await asyncio.gather(
                *(answer(a, xv, i, t0, deadline) for xv, i in zip(validated, ids, strict=True))
            )
        )

    async def feedback(self, app: str, x: Any, y: Any) -> None:
        """Tell the app's policy the right answer for x, so its weights move toward the
        models that were right; their outputs come from the cache or are computed."""
        t0 = self._clock()
        self._require_running("send feedback")
        a = self._app(app)
        xv = a.validate(x, app)
        if not a.links:
            return
        router = self._router
        assert router is not None
        try:
            chosen = router.select(a, xv)
        except Exception as exc:
            raise ClipperError(
                f"app {app!r}: policy {a.policy_name} select raised {type(exc).__name__}: {exc}"
            ) from exc
        outputs, _ = await router.outputs(a, chosen, xv, t0, t0 + a.slo)
        # The links may have changed while the outputs were computed.
        outputs = {m: out for m, out in outputs.items() if m in a.links}
        if not outputs or self._apps.get(app) is not a:
            return
        try:
            a.state = a.policy.observe(a.policy_state(), xv, y, outputs)
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
        return copy.deepcopy(app.policy_state())

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
        app.state, app.state_links = restored, app.links

    # -- reading state ------------------------------------------------------------------
    def get_all_apps(self, *, verbose: bool = False) -> list[Any]:
        """The names of all apps (or, with verbose, their info dicts)."""
        names = sorted(self._apps)
        return [self.get_app_info(n) for n in names] if verbose else names

    def get_app_info(self, name: str) -> dict[str, Any]:
        """An app's configuration as plain values."""
        return app_info(self._app(name))

    def get_linked_models(self, app_name: str) -> list[str]:
        """The models linked to an app, in the order they were linked."""
        return list(self._app(app_name).links)

    def get_all_models(self, *, verbose: bool = False) -> list[Any]:
        """The names of all deployed models (or, with verbose, every version's info)."""
        names = sorted(self._models)
        if not verbose:
            return names
        return [
            version_info(self._models[n], mv, self._apps)
            for n in names
            for mv in self._models[n].versions.values()
        ]

    def get_model_info(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """One model version's configuration and state (the current version by default)."""
        mv = self._version(name, version)
        return version_info(self._models[name], mv, self._apps)

    def get_current_model_version(self, name: str) -> int | str:
        """The version queries to this model go to, as it was first given."""
        return self._version(name, None).version

    def get_num_replicas(self, name: str, version: int | str | None = None) -> int:
        """How many replicas of a model version run (the current version by default)."""
        return self._version(name, version).num_replicas

    def metrics(self) -> dict[str, Any]:
        """A snapshot of counters and latencies, as plain JSON-able values."""
        apps = {a.name: app_metrics(a) for a in self._apps.values()}
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
