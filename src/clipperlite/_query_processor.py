"""Clipper's QueryProcessor: the path of one query (the policy's choice, the cache, the
model's batcher, the deadline, the combined answer, counted in its app's statistics)
and of one feedback (the same choice and outputs, then the policy's update)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from ._cache import PredictionCache
from ._clock import MICROS
from ._errors import ClipperError, describe
from ._inputs import join_key
from ._model import ModelVersion
from ._queue import DONE, QUEUED, Query
from ._registry import App, Model, Served
from ._selection import Exp3
from ._timers import DeadlineTimer
from ._types import DefaultCause, Failure, Prediction, make_prediction

logger = logging.getLogger("clipperlite")

_MISS = PredictionCache.MISS
_LATE = Failure(DefaultCause.DEADLINE, "did not answer within the deadline")
_NOT_DEPLOYED = Failure(DefaultCause.NO_REPLICA, "is not deployed")
#: Explanations remembered (one per app, model version, failure and SLO), then cleared.
_EXPLAINED_MAX = 4096
#: `outputs()` computes the input's key itself.
_NO_KEY: Any = object()

#: Why a chosen model gave no output: (model name, its current version if any, failure).
Miss = tuple[str, ModelVersion | None, Failure]


def _expire(fut: asyncio.Future[Any], failure: Failure) -> None:
    if not fut.done():
        fut.set_result(failure)


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class QueryProcessor:
    """Answers queries and feedback against the Clipper's tables, cache and deadline timer."""

    def __init__(
        self,
        cache: PredictionCache[Query],
        models: dict[str, Model],
        loop: asyncio.AbstractEventLoop,
        timer: DeadlineTimer,
    ) -> None:
        self._cache = cache
        self._models = models
        self._loop = loop
        self._timer = timer
        self.clock = loop.time
        self._settle_cb = self._settle  # one bound method, not one per query
        self._explained: dict[tuple[Any, ...], str] = {}

    # -- the fast path: one linked model, Exp3 (no choice to make) -------------------------
    @staticmethod
    def sole_model(a: App) -> str | None:
        """The model every query of `a` goes to when there is no choice to make: one
        linked model under the built-in Exp3 (which would select it and return its
        output with confidence 1); None otherwise (the policy is asked)."""
        links = a.links
        if len(links) == 1 and a.policy.__class__ is Exp3:
            return links[0]
        return None

    def begin(
        self, a: App, name: str, xv: Any, qid: int, t0: float, deadline: float
    ) -> Prediction | asyncio.Future[Any]:
        """Start a query of `a` on its sole model `name`: its Prediction when known at once
        (a cache hit, a refusal), else a future whose result goes to `conclude`."""
        keyer = a.key if self._cache.enabled else None
        got, mv, waiter = self._start(name, xv, None, t0, deadline, keyer)
        if waiter is not None:
            return waiter  # the batcher's timers (or the joiner's own) keep its deadline
        if type(got) is Failure:
            return self._failed(a, qid, t0, deadline, name, mv, got)
        return self._answered(a, qid, t0, got)

    def conclude(
        self, a: App, name: str, qid: int, t0: float, deadline: float, got: Any
    ) -> Prediction:
        """The Prediction of a query `begin` left waiting, from what its future got."""
        if got.__class__ is Failure:
            model = self._models.get(name)
            mv = model.current_version() if model is not None else None
            return self._failed(a, qid, t0, deadline, name, mv, got)
        return self._answered(a, qid, t0, got)

    def _answered(self, a: App, qid: int, t0: float, out: Any) -> Prediction:
        stats = a.stats
        stats.answered += 1
        stats.queries += 1
        latency = (self.clock() - t0) * MICROS
        stats.latency.record(latency)
        return make_prediction(qid, out, False, None, 1, 1.0, latency, None)

    def _failed(
        self,
        a: App,
        qid: int,
        t0: float,
        deadline: float,
        name: str,
        mv: ModelVersion | None,
        failure: Failure,
    ) -> Prediction:
        cause = failure.cause
        assert isinstance(cause, DefaultCause)  # a cancelled query has no caller left
        if cause is DefaultCause.DEADLINE and not a.slo_warned:
            self._warn_slo(a, name, mv)
        return self._default(a, qid, t0, cause, self._explain(a, name, mv, failure, deadline - t0))

    def _join(self, q: Query, mv: ModelVersion, deadline: float) -> asyncio.Future[Any]:
        """Wait for an identical query in flight (single flight), answered by `deadline`.

        The batcher's timers answer a query's callers at its latest deadline; a joiner
        (rare) has a timer entry of its own, and so has the first caller once a joiner
        due later extends the query past the first caller's deadline."""
        fut = self._loop.create_future()
        q.add_waiter(fut)
        timer = self._timer
        timer.add(deadline, fut, _LATE)
        if deadline > q.deadline:
            if q.deadline == q.due:
                assert q.waiter is not None
                timer.add(q.due, q.waiter, _LATE)
            if q.state != QUEUED:
                q.deadline = deadline  # running: lives on for this caller
        mv.batcher.queue.reschedule(q, deadline)
        return fut

    @staticmethod
    def select(a: App, xv: Any, state: Any) -> list[str]:
        """The linked models the app's policy picks for xv in `state` (raises if it
        misbehaves)."""
        chosen = a.policy.select(state, xv)
        if type(chosen) is not list:  # a tuple or an array of names is fine, a str is not
            if isinstance(chosen, str | bytes) or not isinstance(chosen, Iterable):
                raise ClipperError(f"select must return a list of model names, got {chosen!r}")
            chosen = list(chosen)
        if (len(chosen) != 1 or chosen[0] not in a.links) and (
            not chosen or any(m not in a.links for m in chosen)
        ):
            raise ClipperError(f"selected {chosen!r}, but the linked models are {list(a.links)!r}")
        return chosen

    async def answer(
        self, a: App, xv: Any, qid: int, t0: float, deadline: float, context: Hashable = None
    ) -> Prediction:
        """One query of app `a` on validated input xv, answered by `deadline`, with the
        policy state of `context` (None: the app's shared state)."""
        if not a.links:
            return self._default(
                a, qid, t0, DefaultCause.NO_MODEL, f"app {a.name!r} has no linked model"
            )
        policy = a.policy
        key = _NO_KEY
        probability = None
        try:
            state = a.policy_state() if context is None else a.context_state(context)
            chosen = self.select(a, xv, state)
            if len(a.links) > 1:  # a choice to remember for the feedback join
                key = a.key(xv)
                chance = getattr(policy, "probability", None)
                if chance is not None and len(chosen) == 1:
                    probability = float(chance(state, chosen[0]))
        except Exception as exc:
            return self._default(
                a,
                qid,
                t0,
                DefaultCause.POLICY_ERROR,
                f"app {a.name!r}: policy {a.policy_name} raised {describe(exc)}",
            )
        outputs, misses = await self.outputs(a, chosen, xv, t0, deadline, key)
        if key is not _NO_KEY and key is not None and outputs:
            a.remember((context, join_key(key)), Served(tuple(outputs), probability))
        if not outputs:
            name, mv, failure = misses[0]
            cause = failure.cause
            assert isinstance(cause, DefaultCause)  # a cancelled query has no caller left
            explanation = self._explain(a, name, mv, failure, deadline - t0)
            if cause is DefaultCause.DEADLINE and not a.slo_warned:
                self._warn_slo(a, name, mv)
            return self._default(a, qid, t0, cause, explanation)
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
                DefaultCause.POLICY_ERROR,
                f"app {a.name!r}: policy {a.policy_name} combine raised {describe(exc)}",
                len(outputs),
            )
        if a.min_confidence is not None and confidence < a.min_confidence:
            return self._default(
                a,
                qid,
                t0,
                DefaultCause.LOW_CONFIDENCE,
                f"app {a.name!r}: confidence {confidence:.3f} of the answer from"
                f" {', '.join(map(repr, outputs))} is below min_confidence {a.min_confidence}",
                len(outputs),
                confidence,
            )
        a.stats.answered += 1
        latency = self._record(a, t0)
        return make_prediction(qid, answer, False, None, len(outputs), confidence, latency, None)

    async def outputs(
        self,
        a: App,
        chosen: list[str],
        xv: Any,
        now: float,
        deadline: float,
        key: Hashable = _NO_KEY,
    ) -> tuple[dict[str, Any], list[Miss]]:
        """Outputs of the chosen models that arrive by the deadline, and why the rest did not
        (`now`: when the query arrived; `key`: xv's key if the caller has it)."""
        if not self._cache.enabled:
            key = None
        if len(chosen) == 1:  # the common case (Exp3), kept lean
            name = chosen[0]
            # The key is made only if this model's outputs are cached (no work for cache=False).
            if key is _NO_KEY:
                got, mv, waiter = self._start(name, xv, None, now, deadline, a.key)
            else:
                got, mv, waiter = self._start(name, xv, key, now, deadline)
            if waiter is not None:  # its deadline is kept as in `begin`
                got = await waiter
            if type(got) is Failure:
                return {}, [(name, mv, got)]
            return {name: got}, []
        if key is _NO_KEY:
            key = a.key(xv)
        outputs: dict[str, Any] = {}
        misses: list[Miss] = []
        waiting: list[tuple[str, ModelVersion | None, asyncio.Future[Any]]] = []
        for name in chosen:
            got, mv, waiter = self._start(name, xv, key, now, deadline)
            if waiter is not None:
                waiting.append((name, mv, waiter))
            elif type(got) is Failure:
                misses.append((name, mv, got))
            else:
                outputs[name] = got
        if waiting:
            await self._wait_all([f for _, _, f in waiting], deadline)
            for name, mv, fut in waiting:
                result = fut.result()
                if type(result) is Failure:
                    misses.append((name, mv, result))
                else:
                    outputs[name] = result
        return outputs, misses

    def _start(
        self,
        name: str,
        xv: Any,
        key: Hashable | None,
        now: float,
        deadline: float,
        keyer: Callable[[Any], Hashable | None] | None = None,
    ) -> tuple[Any, ModelVersion | None, asyncio.Future[Any] | None]:
        """Begin getting `name`'s output for xv: (the output or a Failure, its version, None),
        or (None, its version, a future of ours to await). The waiter travels in a slot of
        its own, so a model's output is opaque whatever its type (an asyncio Task too)."""
        model = self._models.get(name)
        mv = model.current_version() if model is not None else None
        if mv is None:
            return _NOT_DEPLOYED, None, None
        ck = None
        cache = self._cache
        if keyer is not None and mv.cache:
            key = keyer(xv)
        if key is not None and mv.cache:
            ck = mv.cache_key(key)
            out = cache.get(ck)
            if out is not _MISS:
                mv.cache_hits += 1
                return out, mv, None
            mv.cache_misses += 1
            q = cache.pending(ck)
            if q is not None and q.state != DONE and q.deadline > now:
                return None, mv, self._join(q, mv, deadline)
        fut = self._loop.create_future()
        q = Query(xv, deadline, now, self._settle_cb if ck is not None else None, ck, fut)
        failure = mv.submit(q)
        if failure is not None:
            return failure, mv, None
        if ck is not None:
            cache.begin(ck, q)
        return None, mv, fut

    def _settle(self, q: Query, outcome: Any) -> None:
        cache = self._cache
        cache.end(q.key, q)
        if type(outcome) is not Failure:
            cache.put(q.key, outcome)

    async def feedback(self, a: App, xv: Any, y: Any, t0: float, context: Hashable = None) -> None:
        """Apply feedback y for xv to the policy state of `context`: the models that
        answered its prediction (recorded then, with their probability), else those the
        policy selects now; their outputs (cached, else computed within the app's SLO);
        then the policy's update. Raises ClipperError if the policy fails."""
        if not a.links:
            return
        served: Served | None = None
        key = _NO_KEY
        chosen: list[str] = []
        if len(a.links) > 1:
            key = a.key(xv)
            if key is not None:
                served = a.served.pop((context, join_key(key)), None)
            if served is not None:
                chosen = [m for m in served.answered if m in a.links]
        if not chosen:
            served = None
            try:
                state = a.policy_state() if context is None else a.context_state(context)
                chosen = self.select(a, xv, state)
            except Exception as exc:
                raise ClipperError(
                    f"app {a.name!r}: policy {a.policy_name} select raised {describe(exc)}"
                ) from exc
        outputs, _ = await self.outputs(a, chosen, xv, t0, t0 + a.slo, key)
        # The links may have changed while the outputs were computed.
        outputs = {m: out for m, out in outputs.items() if m in a.links}
        if not outputs:
            return
        policy = a.policy
        try:
            # Read after the wait: another feedback may have moved the state meanwhile.
            state = a.policy_state() if context is None else a.context_state(context)
            if served is not None and served.probability is not None:
                new = policy.observe(  # type: ignore[call-arg]
                    state, xv, y, outputs, probability=served.probability
                )
            else:
                new = policy.observe(state, xv, y, outputs)
        except Exception as exc:
            raise ClipperError(
                f"app {a.name!r}: policy {a.policy_name} observe raised {describe(exc)}"
            ) from exc
        a.set_context_state(context, new)

    async def _wait_all(self, futs: list[asyncio.Future[Any]], deadline: float) -> None:
        """Wait until every future is done or the deadline passes; stragglers then get
        the deadline failure, which also tells their queries that we stopped waiting."""
        everyone: asyncio.Future[Any] = self._loop.create_future()
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

    def shed(self, a: App, qid: int, t0: float, lag: float) -> Prediction:
        """A query refused at entry because the event loop is too far behind (a flood)."""
        return self._default(
            a,
            qid,
            t0,
            DefaultCause.WOULD_MISS,
            f"app {a.name!r}: shed at entry: the event loop is {lag * 1e3:.0f} ms behind"
            " (a flood of queries), so this query could not meet its deadline",
        )

    def _default(
        self,
        a: App,
        qid: int,
        t0: float,
        cause: DefaultCause,
        explanation: str,
        models: int = 0,
        confidence: float = 0.0,
    ) -> Prediction:
        defaults = a.stats.defaults
        defaults[cause] = defaults.get(cause, 0) + 1
        latency = self._record(a, t0)
        return make_prediction(
            qid, a.default(), True, explanation, models, confidence, latency, cause
        )

    def _record(self, a: App, t0: float) -> float:
        """Count one query of app `a` that started at t0; its latency in microseconds."""
        latency = (self.clock() - t0) * MICROS
        a.stats.queries += 1
        a.stats.latency.record(latency)
        return latency

    def _explain(
        self, a: App, name: str, mv: ModelVersion | None, failure: Failure, slo: float
    ) -> str:
        """The explanation of a default, built once per app, model version, failure and
        SLO (a refusal or a deadline under overload costs a lookup, not a format)."""
        key = (a.name, name, None if mv is None else mv.serial, failure, round(slo * MICROS))
        explained = self._explained
        text = explained.get(key)
        if text is None:
            if len(explained) >= _EXPLAINED_MAX:
                explained.clear()
            text = explained[key] = self._format(a, name, mv, failure, slo)
        return text

    @staticmethod
    def _warn_slo(a: App, name: str, mv: ModelVersion | None) -> None:
        """Say once per app, at WARNING, when its SLO cannot be met: below the model's
        measured batch latency, or so small it was likely given in milliseconds."""
        slo = a.slo_micros
        latency = mv.batcher.stats.latency_ewma * MICROS if mv is not None else 0.0
        if latency > slo:
            why = f"below model {name!r}'s measured batch latency ({latency:.0f} µs)"
        elif slo < 1000:
            why = f"under 1 ms: slo_micros is in microseconds ({slo:g} ms is {slo * 1000:.0f})"
        else:
            return
        a.slo_warned = True
        logger.warning(
            "clipperlite: app %r has slo_micros=%g, %s; its queries get the default"
            " (deadline). Raise slo_micros.",
            a.name,
            slo,
            why,
        )

    @staticmethod
    def _format(a: App, name: str, mv: ModelVersion | None, failure: Failure, slo: float) -> str:
        model = f"model {name!r}" if mv is None else f"model {name!r} (version {mv.version!r})"
        if failure.cause is DefaultCause.DEADLINE:
            return (
                f"app {a.name!r}: {model} did not answer within the deadline"
                f" ({slo * MICROS:.0f} µs)"
            )
        if failure.cause is DefaultCause.SHUTDOWN:
            return f"app {a.name!r}: the Clipper is shutting down (query for {model} not answered)"
        return f"app {a.name!r}: {model} {failure.detail}"
