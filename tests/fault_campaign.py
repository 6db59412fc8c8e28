"""Fault injection: a seeded campaign of broken models and misbehaving callers.

Each *round* starts a fresh `Clipper` with five apps and drives it with closed-loop
callers until a query budget is spent:

========  ==========================================  =========================================
app       model(s)                                    faults its inputs may carry
========  ==========================================  =========================================
``thr``   thread backend, 3 replicas, replica 1 slow  raise, hang, wrong length, not a list
``asy``   ``async def``, 2 replicas, replica 1 slow   raise, hang, wrong length, not a list
``prc``   process backend, 2 replicas                 raise, wrong length, not a list, kill
``ens``   Exp4 over a faulty thread model and a       raise, hang, wrong length, not a list
          clean async one                             (only the faulty model sees them)
``tgt``   thread, fixed batches of 4 x 5 ms, 60 ms    raise, wrong length (bursts here are
          SLO                                         refused: queue full or would miss)
``none``  no linked model                             -
``opq``   ``async def`` on "any" inputs               outputs that are asyncio futures (then a
                                                      cache hit); an input list its caller
                                                      changes after a deadline default
========  ==========================================  =========================================

A fault rides on the input: every input is ``[code, param, nonce]`` and a model
that finds a fault code in its batch misbehaves for the whole batch (so the
batcher's retry-in-halves has to isolate it); a clean batch answers
``int(nonce)`` for each input, so every answer can be checked against its own
query. Callers also send bursts (a hundred ``predict`` calls at once, or one
``predict_batch``), cancel queries at random moments, send feedback, and in some
rounds call ``stop()`` (twice, concurrently) while the load is running.

Over every round the campaign checks, and `Tally` counts:

- every call resolves, exactly once (``lost``: calls still pending long after
  their deadline and the shutdown grace; ``twice``: a ``query_id`` seen twice);
- nothing but the documented errors leaves ``predict``/``feedback``
  (``ClipperClosedError`` once ``stop()`` has begun, ``CancelledError`` for a call
  the campaign cancelled); no exception reaches the event loop's handler, a
  thread's excepthook or the ``clipperlite`` logger at ERROR (``leaked``);
- every answer is its own query's (``wrong_answers``); an input whose fault makes
  its only model fail is never answered (``fault_answered``);
- every default names its app and a known cause (``unexplained``);
- ``metrics()`` adds up, per app: queries == answered + sum of defaults by cause,
  and each of those equals what the callers received (``metric_mismatches``);
- after the load, every model answers clean queries again with all its replicas,
  its queue is empty and the cache has nothing in flight (``not_recovered``);
- ``stop()`` returns within the grace period plus a margin and leaves no
  ``clipperlite`` thread, task or worker process behind (``leftovers``).

It checks correctness, not speed, so it lives with the tests: the suite runs a short
seeded campaign (``tests/test_faults.py::test_seeded_campaign_keeps_every_promise``,
8,000 queries, about 10 s). Run the long campaign (>= 100k queries, about a minute)
from the repository root with one command::

    python tests/fault_campaign.py --queries 100000 --seed 1

It prints the figures and exits 1 if any promise was broken (``--json`` for JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clipperlite import Clipper, ClipperClosedError, DefaultCause, Prediction
from helpers import clipperlite_tasks, clipperlite_threads, eventually, worker_processes

#: The causes `metrics()` counts defaults by.
CAUSES = frozenset(c.value for c in DefaultCause)

#: Fault codes carried by an input's first element.
OK, RAISE, HANG, WRONG_LENGTH, NOT_LIST, KILL = 0, 1, 2, 3, 4, 5
#: Issue 9's model faults: StopIteration (refused by an asyncio future), an async model
#: cancelling its own task, a worker process that forks and does not _exit.
STOP_ITERATION, SELF_CANCEL, FORK = 6, 7, 8
KIND_NAMES = {
    OK: "ok",
    RAISE: "raise",
    HANG: "hang",
    WRONG_LENGTH: "wrong_length",
    NOT_LIST: "not_list",
    KILL: "kill",
    STOP_ITERATION: "stop_iteration",
    SELF_CANCEL: "self_cancel",
    FORK: "fork",
}
#: Kinds whose input makes a model fail for sure (a hang only makes it late; a fork
#: must still be answered, with its own answer).
FAILING = {RAISE, WRONG_LENGTH, NOT_LIST, KILL, STOP_ITERATION, SELF_CANCEL}

SLOS = {"thr": 0.2, "asy": 0.2, "prc": 1.0, "ens": 0.2, "tgt": 0.06, "none": 0.2}
APP_WEIGHTS = {"thr": 0.35, "asy": 0.2, "prc": 0.12, "ens": 0.2, "tgt": 0.06, "none": 0.07}
#: Per app, the chance that an input carries each fault.
FAULT_RATES: dict[str, dict[int, float]] = {
    "thr": {RAISE: 0.02, HANG: 0.002, WRONG_LENGTH: 0.01, NOT_LIST: 0.01, STOP_ITERATION: 0.005},
    "asy": {
        RAISE: 0.02,
        HANG: 0.002,
        WRONG_LENGTH: 0.01,
        NOT_LIST: 0.01,
        STOP_ITERATION: 0.005,
        SELF_CANCEL: 0.005,
    },
    "prc": {
        RAISE: 0.02,
        WRONG_LENGTH: 0.01,
        NOT_LIST: 0.01,
        KILL: 0.01,
        STOP_ITERATION: 0.005,
        FORK: 0.003,
    },
    "ens": {RAISE: 0.02, HANG: 0.002, WRONG_LENGTH: 0.01, NOT_LIST: 0.01},
    "tgt": {RAISE: 0.01, WRONG_LENGTH: 0.01},
    "none": {},
}
#: Chance per caller step of each behaviour (the rest are plain awaited predicts).
P_CANCEL = 0.05
P_BURST = 0.006
P_FEEDBACK = 0.01
P_REPEAT = 0.1
#: A hang lasts 0.25-0.6 s (past the deadline); one in five lasts 1.2 s, over
#: HANG_TIMEOUT_S past the deadline, so the watchdog replaces the replica.
HANG_SHORT = (0.25, 0.6)
HANG_LONG = 1.2
HANG_TIMEOUT_S = 0.5
SLOW_REPLICA_S = 0.015
GRACE_S = 1.0

#: What a default's explanation says after "app 'x': model 'm' (version v) ", by cause:
#: the first pattern found at the start of the detail wins (a model's own error message
#: comes after "raised ...", so it is never searched).
_DETAIL_CAUSES = (
    (r"raised ", "model_error"),
    (r"returned ", "wrong_length"),
    (r"worker (process )?died|worker process .* (died|exited)", "worker_died"),
    (r"(has a )?full queue|queue is full", "queue_full"),
    (r"could not meet its deadline|would miss", "would_miss"),
    (r"did not answer (within|before) the deadline|hung for over", "deadline"),
    (r"(has )?no running replica|is not deployed|was stopped$|failed to deploy", "no_replica"),
    (r"was stopped while running|is shutting down", "shutdown"),
    (r"query was cancelled", "cancelled"),
)
_EXPLANATION = re.compile(r"^app '(?P<app>[^']*)': (?P<rest>.*)$", re.DOTALL)
_NO_MODEL = re.compile(r"^app '(?P<app>[^']*)':? (has )?no (linked )?model( is)?( linked)?\.?$")
_MODEL = re.compile(r"^model '[^']*'(?: \(version [^)]*\))? (?P<detail>.*)$", re.DOTALL)


def cause_of(explanation: str | None) -> tuple[str | None, str]:
    """(app named, cause) of a default's explanation; cause "unknown" if unrecognised.

    `Prediction` has no machine-readable cause, so the campaign reads it from the
    explanation's structure ("app 'a': model 'm' (version v) <detail>")."""
    text = explanation or ""
    m = _NO_MODEL.match(text)
    if m is not None:
        return m["app"], "no_model"
    m = _EXPLANATION.match(text)
    if m is None:
        return None, "unknown"
    app, rest = m["app"], m["rest"]
    if rest.startswith("the Clipper is shutting down"):
        return app, "shutdown"
    if rest.startswith("policy "):
        return app, "policy_error"
    if rest.startswith("shed at entry: the event loop is"):
        return app, "would_miss"
    if rest.startswith("confidence "):
        return app, "low_confidence"
    mm = _MODEL.match(rest)
    if mm is None:
        return app, "unknown"
    detail = mm["detail"]
    for pattern, cause in _DETAIL_CAUSES:
        if re.match(pattern, detail):
            return app, cause
    return app, "unknown"


# -- the models ---------------------------------------------------------------------------
def make_model(
    *,
    slow_suffix: str | None = None,
    work_s: float = 0.0002,
    counts: Counter[str] | None = None,
) -> Callable[..., Any]:
    """A sync model obeying the fault codes; the replica whose name ends with
    `slow_suffix` is slower (and counts its batches in `counts`). A nested function,
    so cloudpickle ships it by value to a worker process (which never imports this file)."""
    slow_s = SLOW_REPLICA_S

    def model(xs: list[Any]) -> Any:
        import os
        import threading
        import time

        if slow_suffix is not None and threading.current_thread().name.endswith(slow_suffix):
            if counts is not None:
                counts["slow_replica_batch"] += 1
            time.sleep(slow_s)
        elif work_s:
            time.sleep(work_s)
        codes = {int(x[0]) for x in xs}
        if 5 in codes:
            os._exit(17)  # the worker process dies mid-batch
        if 6 in codes:
            next(iter([]))  # StopIteration, the exhausted-iterator bug
        if 8 in codes and os.fork() == 0:
            pass  # the fork returns from the model too, without _exit
        if 1 in codes:
            p = max(int(x[1]) for x in xs if int(x[0]) == 1)
            err = (ValueError, KeyError, RuntimeError, ZeroDivisionError)[p % 4]
            raise err(f"injected fault in a batch of {len(xs)}")
        if 3 in codes:
            return [int(x[2]) for x in xs] + [-1]
        if 4 in codes:
            p = max(int(x[1]) for x in xs if int(x[0]) == 4)
            return ({"not": "a list"}, None, len(xs), "x" * len(xs))[p % 4]
        hang = max((float(x[1]) for x in xs if int(x[0]) == 2), default=0.0)
        if hang:
            time.sleep(hang)
        return [int(x[2]) for x in xs]

    return model


def make_async_model(
    *, slow_suffix: str | None = None, counts: Counter[str] | None = None
) -> Callable[..., Any]:
    """An `async def` model obeying the fault codes (it never kills anything)."""

    async def model(xs: list[Any]) -> Any:
        task = asyncio.current_task()
        if slow_suffix is not None and task is not None and task.get_name().endswith(slow_suffix):
            if counts is not None:
                counts["slow_replica_batch"] += 1
            await asyncio.sleep(SLOW_REPLICA_S)
        codes = {int(x[0]) for x in xs}
        if STOP_ITERATION in codes:
            next(iter([]))
        if SELF_CANCEL in codes and task is not None:
            asyncio.get_running_loop().call_later(0.002, task.cancel)  # a hand-made timeout
            await asyncio.sleep(1.0)
        if RAISE in codes:
            p = max(int(x[1]) for x in xs if int(x[0]) == RAISE)
            err = (ValueError, KeyError, RuntimeError, ZeroDivisionError)[p % 4]
            raise err(f"injected fault in a batch of {len(xs)}")
        if WRONG_LENGTH in codes:
            return [int(x[2]) for x in xs] + [-1]
        if NOT_LIST in codes:
            p = max(int(x[1]) for x in xs if int(x[0]) == NOT_LIST)
            return ({"not": "a list"}, None, len(xs), "x" * len(xs))[p % 4]
        hang = max((float(x[1]) for x in xs if int(x[0]) == HANG), default=0.0)
        if hang:
            await asyncio.sleep(hang)
        return [int(x[2]) for x in xs]

    return model


async def opaque_model(xs: list[Any]) -> list[Any]:
    """The ``opq`` app's model ("any" inputs ``[kind, n]``): for "future" it answers with
    an asyncio future holding n (an output that looks like an internal waiter); for
    "slow" it answers n after 50 ms (past a short SLO, so the late batch lands in the
    cache after its caller got the default)."""
    loop = asyncio.get_running_loop()
    if any(kind == "slow" for kind, _ in xs):
        await asyncio.sleep(0.05)
    out: list[Any] = []
    for kind, n in xs:
        if kind == "future":
            fut = loop.create_future()
            fut.set_result(n)
            out.append(fut)
        else:
            out.append(n)
    return out


async def clean_async_model(xs: list[Any]) -> list[int]:
    """The healthy half of the ensemble: ignores fault codes."""
    return [int(x[2]) for x in xs]


# -- what a round observes ----------------------------------------------------------------
@dataclass
class Tally:
    """Counts over every round of a campaign (the figures the campaign reports)."""

    rounds: int = 0
    queries: int = 0  # inputs sent to predict/predict_batch
    faults: Counter[str] = field(default_factory=Counter)  # fault inputs sent, by kind
    caller: Counter[str] = field(default_factory=Counter)  # caller misbehaviour, by kind
    outcomes: Counter[str] = field(default_factory=Counter)  # how calls ended
    defaults: Counter[str] = field(default_factory=Counter)  # defaults received, by cause
    answered: int = 0
    lost: int = 0
    twice: int = 0
    leaked: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    fault_answered: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    metric_mismatches: list[str] = field(default_factory=list)
    not_recovered: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    slow_stops: list[str] = field(default_factory=list)
    max_overshoot_s: float = 0.0
    max_stop_s: float = 0.0
    max_recover_s: float = 0.0
    abandoned_threads: int = 0
    replaced_replicas: int = 0
    seconds: float = 0.0

    def problems(self) -> dict[str, Any]:
        """Every violated promise (empty when the campaign passed)."""
        found: dict[str, Any] = {}
        for name in (
            "leaked",
            "wrong_answers",
            "fault_answered",
            "unexplained",
            "metric_mismatches",
            "not_recovered",
            "leftovers",
            "slow_stops",
        ):
            items = getattr(self, name)
            if items:
                found[name] = items[:10]
        if self.lost:
            found["lost"] = self.lost
        if self.twice:
            found["twice"] = self.twice
        return found

    def summary(self) -> dict[str, Any]:
        """The campaign's figures as plain values."""
        return {
            "rounds": self.rounds,
            "queries": self.queries,
            "faults_injected": dict(sorted(self.faults.items())),
            "caller_faults": dict(sorted(self.caller.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "answered": self.answered,
            "defaults_by_cause": dict(sorted(self.defaults.items())),
            "lost": self.lost,
            "resolved_twice": self.twice,
            "leaked_exceptions": len(self.leaked),
            "wrong_answers": len(self.wrong_answers),
            "fault_inputs_answered": len(self.fault_answered),
            "unexplained_defaults": len(self.unexplained),
            "metric_mismatches": len(self.metric_mismatches),
            "not_recovered": len(self.not_recovered),
            "leftovers_after_stop": len(self.leftovers),
            "max_overshoot_past_slo_ms": round(self.max_overshoot_s * 1e3, 1),
            "max_stop_s": round(self.max_stop_s, 3),
            "max_recover_s": round(self.max_recover_s, 3),
            "abandoned_threads": self.abandoned_threads,
            "replaced_replicas": self.replaced_replicas,
            "seconds": round(self.seconds, 1),
        }


# -- one round ------------------------------------------------------------------------------
class _Round:
    """One Clipper, its callers and what they saw."""

    def __init__(self, seed: int, budget: int, workers: int, tally: Tally, stop_at: float | None):
        self.rng = random.Random(seed)
        self.seed = seed
        self.budget = budget
        self.workers = workers
        self.tally = tally
        self.stop_at = stop_at  # stop mid-load after this share of the budget (or never)
        self.sent = 0
        self.nonce = seed * 10_000_000
        self.recent: list[float] = []
        self.ids: set[int] = set()
        self.returned: Counter[str] = Counter()
        self.answered_by_app: Counter[str] = Counter()
        self.defaults_by_app: dict[str, Counter[str]] = {a: Counter() for a in (*SLOS, "opq")}
        self.pending: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.stop_started = 0.0
        self.clipper = Clipper(shutdown_grace_s=GRACE_S, hang_timeout_s=HANG_TIMEOUT_S, seed=seed)

    # inputs ---------------------------------------------------------------------------
    def make_input(self, app: str) -> tuple[int, list[float]]:
        rng = self.rng
        if self.recent and rng.random() < P_REPEAT:
            return OK, [0.0, 0.0, rng.choice(self.recent)]
        self.nonce += 1
        kind = OK
        u = rng.random()
        for k, p in FAULT_RATES[app].items():
            if u < p:
                kind = k
                break
            u -= p
        if kind == HANG:
            param = HANG_LONG if rng.random() < 0.2 else rng.uniform(*HANG_SHORT)
        else:
            param = float(rng.randrange(4))
        if kind == OK:
            self.recent.append(float(self.nonce))
            if len(self.recent) > 64:
                self.recent.pop(0)
        else:
            self.tally.faults[KIND_NAMES[kind]] += 1
        return kind, [float(kind), param, float(self.nonce)]

    def pick_app(self) -> str:
        return self.rng.choices(list(APP_WEIGHTS), weights=list(APP_WEIGHTS.values()))[0]

    # outcomes -----------------------------------------------------------------------------
    def record(self, app: str, kind: int, x: list[float], p: Prediction) -> None:
        t = self.tally
        t.outcomes["prediction"] += 1
        if p.query_id in self.ids:
            t.twice += 1
        self.ids.add(p.query_id)
        self.returned[app] += 1
        if not self.stopping:
            over = p.latency_micros / 1e6 - SLOS[app]
            t.max_overshoot_s = max(t.max_overshoot_s, over)
        if not p.default:
            t.answered += 1
            self.answered_by_app[app] += 1
            if p.default_explanation is not None or p.default_cause is not None:
                t.unexplained.append(f"{app}: answered with an explanation {p!r}")
            if p.output != int(x[2]):
                t.wrong_answers.append(f"{app}: {x} answered {p.output!r}")
            if kind in FAILING and app != "ens":
                t.fault_answered.append(f"{app}: {KIND_NAMES[kind]} input {x} answered {p}")
            return
        named, read = cause_of(p.default_explanation)
        cause = p.default_cause or read
        if (
            named != app
            or read != cause
            or cause not in CAUSES
            or cause == "cancelled"
            or p.output != -1
        ):
            t.unexplained.append(f"{app}: {p!r} (cause {p.default_cause!r}, read {read!r})")
        t.defaults[cause] += 1
        self.defaults_by_app[app][cause] += 1

    def record_error(self, exc: BaseException, *, cancelled_by_us: bool) -> None:
        t = self.tally
        if isinstance(exc, asyncio.CancelledError) and cancelled_by_us:
            t.outcomes["cancelled"] += 1
        elif isinstance(exc, ClipperClosedError) and self.stopping:
            t.outcomes["closed"] += 1
        else:
            t.outcomes["leaked"] += 1
            t.leaked.append(f"{type(exc).__name__}: {exc}")

    # callers ------------------------------------------------------------------------------
    def track(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return task

    async def one(self, app: str) -> None:
        kind, x = self.make_input(app)
        self.sent += 1
        self.tally.queries += 1
        try:
            p = await self.clipper.predict(app, x)
        except BaseException as exc:
            self.record_error(exc, cancelled_by_us=False)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.record(app, kind, x, p)

    async def cancelled_one(self, app: str) -> None:
        kind, x = self.make_input(app)
        self.sent += 1
        self.tally.queries += 1
        self.tally.caller["cancel"] += 1
        task = self.track(self.clipper.predict(app, x))
        # Cancel before it starts, once it is queued, while it is likely in a batch, or
        # at any time up to past its deadline.
        when = self.rng.randrange(4)
        if when == 1:
            await asyncio.sleep(0)
        elif when == 2:
            await asyncio.sleep(self.rng.uniform(0.0, 0.003))
        elif when == 3:
            await asyncio.sleep(self.rng.uniform(0.0, 1.2 * SLOS[app]))
        task.cancel()
        try:
            p = await task
        except BaseException as exc:
            self.record_error(exc, cancelled_by_us=True)
            return
        self.record(app, kind, x, p)

    async def burst(self, app: str) -> None:
        n = self.rng.randint(20, 150)
        inputs = [self.make_input(app) for _ in range(n)]
        self.sent += n
        self.tally.queries += n
        if self.rng.random() < 0.5:
            self.tally.caller["burst_predict_batch"] += 1
            try:
                ps = await self.clipper.predict_batch(app, [x for _, x in inputs])
            except BaseException as exc:
                self.record_error(exc, cancelled_by_us=False)
                return
            for (kind, x), p in zip(inputs, ps, strict=True):
                self.record(app, kind, x, p)
            return
        self.tally.caller["burst_predicts"] += 1
        tasks = [self.track(self.clipper.predict(app, x)) for _, x in inputs]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for (kind, x), r in zip(inputs, results, strict=True):
            if isinstance(r, BaseException):
                self.record_error(r, cancelled_by_us=False)
            else:
                self.record(app, kind, x, r)

    async def feedback(self, app: str) -> None:
        _, x = self.make_input(app)
        self.tally.caller["feedback"] += 1
        try:
            await self.clipper.feedback(app, x, int(x[2]))
        except BaseException as exc:
            self.record_error(exc, cancelled_by_us=False)
            return
        self.tally.outcomes["feedback"] += 1

    async def caller(self) -> None:
        rng = self.rng
        while self.sent < self.budget:
            app = self.pick_app()
            if self.stopping:  # one more query, which must be refused with ClipperClosedError
                await self.one(app)
                return
            u = rng.random()
            if u < P_CANCEL:
                await self.cancelled_one(app)
            elif u < P_CANCEL + P_BURST:
                await self.burst(app)
            elif u < P_CANCEL + P_BURST + P_FEEDBACK:
                await self.feedback(app)
            else:
                await self.one(app)

    async def opaque_prober(self) -> None:
        """Values handed over that are not what they seem, on the ``opq`` app: model
        outputs that are asyncio futures (answered again from the cache, they must come
        back as the same opaque value), and an "any" input its caller changes after a
        deadline default (the late batch must cache the answer for the input as it was)."""
        t = self.tally
        while not self.stopping and self.sent < self.budget:
            self.nonce += 1
            n = self.nonce
            try:
                first = await self.ask_opaque(["future", n])
                again = await self.ask_opaque(["future", n])  # a cache hit
                reused = ["slow", n]
                await self.ask_opaque(reused, slo_micros=5_000)
                reused[1] = -n  # the caller reuses its list after the default
                await asyncio.sleep(0.08)  # the late batch finishes and is cached
                cached = await self.ask_opaque(["slow", n])
            except ClipperClosedError:
                return
            t.faults["future_output"] += 2
            t.faults["reused_any_input"] += 1
            for p in (first, again):
                out = p.output
                if not p.default and not (isinstance(out, asyncio.Future) and out.result() == n):
                    t.wrong_answers.append(f"opq: a future output came back as {out!r}")
            if not cached.default and cached.output != n:
                t.wrong_answers.append(
                    f"opq: input ['slow', {n}] answered {cached.output!r} after its first"
                    " caller changed its list"
                )
            await asyncio.sleep(0.01)

    async def ask_opaque(self, x: list[Any], **options: Any) -> Prediction:
        """One query of the ``opq`` app, recorded as soon as it is answered."""
        t = self.tally
        p = await self.clipper.predict("opq", x, **options)
        t.outcomes["prediction"] += 1
        if p.query_id in self.ids:
            t.twice += 1
        self.ids.add(p.query_id)
        self.returned["opq"] += 1
        if p.default:
            cause = str(p.default_cause) if p.default_cause is not None else "unknown"
            self.defaults_by_app["opq"][cause] += 1
            if cause not in CAUSES or "opq" not in (p.default_explanation or ""):
                t.unexplained.append(f"opq: {p!r}")
        else:
            t.answered += 1
            self.answered_by_app["opq"] += 1
        return p

    async def stopper(self) -> None:
        assert self.stop_at is not None
        await eventually(lambda: self.sent >= self.stop_at * self.budget, timeout=600)
        self.tally.caller["stop_mid_load"] += 1
        self.stopping = True
        loop = asyncio.get_running_loop()
        self.stop_started = loop.time()
        await asyncio.gather(self.clipper.stop(), self.clipper.stop())

    # setup, checks ---------------------------------------------------------------------
    async def deploy(self) -> None:
        c = self.clipper
        await c.start()
        for app in SLOS:
            policy = "exp4" if app == "ens" else "exp3"
            c.register_application(app, "doubles", -1, int(SLOS[app] * 1e6), policy=policy)
        await c.deploy_model(
            "thr",
            1,
            "doubles",
            make_model(slow_suffix=":1", counts=self.tally.faults),
            num_replicas=3,
            max_queue=64,
        )
        await c.deploy_model(
            "asy",
            1,
            "doubles",
            make_async_model(slow_suffix=":1", counts=self.tally.faults),
            num_replicas=2,
        )
        await c.deploy_model("prc", 1, "doubles", make_model(), num_replicas=2, backend="process")
        await c.deploy_model("ens-a", 1, "doubles", make_model(), num_replicas=2)
        await c.deploy_model("ens-b", 1, "doubles", clean_async_model)
        await c.deploy_model("tgt", 1, "doubles", make_model(work_s=0.005), batch_size=4)
        c.register_application("opq", "any", -1, 1_000_000)
        await c.deploy_model("opq", 1, "any", opaque_model)
        c.link_model_to_app("opq", "opq")
        for app, models in (
            ("thr", ["thr"]),
            ("asy", ["asy"]),
            ("prc", ["prc"]),
            ("ens", ["ens-a", "ens-b"]),
            ("tgt", ["tgt"]),
        ):
            for m in models:
                c.link_model_to_app(app, m)

    def check_metrics(self) -> None:
        t = self.tally
        apps = self.clipper.metrics()["apps"]
        for app, m in apps.items():
            total = m["answered"] + sum(m["defaults"].values())
            mine = {k: v for k, v in self.defaults_by_app[app].items() if v}
            if m["queries"] != total:
                t.metric_mismatches.append(f"{app}: queries {m['queries']} != {total}")
            if m["queries"] != self.returned[app]:
                t.metric_mismatches.append(
                    f"{app}: metrics count {m['queries']} queries, callers got {self.returned[app]}"
                )
            if m["answered"] != self.answered_by_app[app]:
                t.metric_mismatches.append(
                    f"{app}: answered {m['answered']} != {self.answered_by_app[app]}"
                )
            if m["defaults"] != mine:
                t.metric_mismatches.append(f"{app}: defaults {m['defaults']} != {mine}")

    async def check_recovered(self) -> None:
        """Clean queries are answered again by every model with all its replicas."""
        c, t = self.clipper, self.tally
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        want = {"thr": 3, "asy": 2, "prc": 2, "ens-a": 2, "ens-b": 1, "tgt": 1}

        def settled() -> bool:
            models = c.metrics()["models"]
            return c.metrics()["cache"]["inflight"] == 0 and all(
                v["queue_length"] == 0 for m in models.values() for v in m.values()
            )

        if not await eventually(settled, timeout=5.0):
            t.not_recovered.append(f"seed {self.seed}: queues or cache in-flight not drained")
        for app in ("thr", "asy", "prc", "ens", "tgt"):
            ok = False
            for _ in range(50):
                self.nonce += 1
                x = [0.0, 0.0, float(self.nonce)]
                p = await c.predict(app, x)
                self.returned[app] += 1
                if p.default:
                    self.defaults_by_app[app][p.default_cause or "unknown"] += 1
                    await asyncio.sleep(0.05)
                    continue
                self.answered_by_app[app] += 1
                ok = p.output == int(x[2])
                break
            if not ok:
                t.not_recovered.append(f"seed {self.seed}: app {app} does not answer clean queries")
        for model, n in want.items():
            if c.get_num_replicas(model) != n:
                t.not_recovered.append(
                    f"seed {self.seed}: {model} runs {c.get_num_replicas(model)}"
                )
        t.max_recover_s = max(t.max_recover_s, loop.time() - t0)

    async def check_leftovers(self) -> None:
        t = self.tally

        def clean() -> bool:
            return not (clipperlite_threads() or clipperlite_tasks() or worker_processes())

        # Abandoned threads finish their (bounded) hang: allow for the longest one.
        if not await eventually(clean, timeout=HANG_LONG + 2.0):
            t.leftovers.append(
                f"seed {self.seed}: threads {clipperlite_threads()}, tasks {clipperlite_tasks()},"
                f" processes {worker_processes()}"
            )

    async def run(self) -> None:
        t = self.tally
        loop = asyncio.get_running_loop()
        old_handler = loop.get_exception_handler()
        old_hook = threading.excepthook
        log_handler = _ErrorLog(t)
        logger = logging.getLogger("clipperlite")
        logger.addHandler(log_handler)
        loop.set_exception_handler(lambda _loop, ctx: t.leaked.append(f"loop: {ctx}"))
        threading.excepthook = lambda args: t.leaked.append(f"thread {args.thread}: {args}")
        try:
            await self.deploy()
            jobs = [loop.create_task(self.caller()) for _ in range(self.workers)]
            jobs.append(loop.create_task(self.opaque_prober()))
            if self.stop_at is not None:
                jobs.append(loop.create_task(self.stopper()))
            done, late = await asyncio.wait(jobs, timeout=max(120.0, self.budget / 50))
            for j in late:
                j.cancel()
            t.lost += len(late)
            for j in done:
                if j.exception() is not None:
                    t.leaked.append(f"caller: {j.exception()!r}")
            _, stuck = (
                await asyncio.wait(self.pending, timeout=max(SLOS.values()) + GRACE_S + 2.0)
                if self.pending
                else (set(), set())
            )
            t.lost += len(stuck)
            for task in stuck:
                task.cancel()
            if self.stop_at is None:
                await self.check_recovered()
                self.stopping = True
                self.stop_started = loop.time()
                await asyncio.gather(self.clipper.stop(), self.clipper.stop())
            took = loop.time() - self.stop_started
            t.max_stop_s = max(t.max_stop_s, took)
            if took > GRACE_S + 1.5:
                t.slow_stops.append(f"seed {self.seed}: stop() took {took:.2f} s")
            self.check_metrics()
            t.abandoned_threads += self.clipper.metrics()["abandoned_threads"]
            t.replaced_replicas += sum(
                v["replaced_replicas"]
                for m in self.clipper.metrics()["models"].values()
                for v in m.values()
            )
            await self.check_leftovers()
        finally:
            with contextlib.suppress(Exception):
                await self.clipper.stop()
            loop.set_exception_handler(old_handler)
            threading.excepthook = old_hook
            logger.removeHandler(log_handler)
            t.rounds += 1


class _ErrorLog(logging.Handler):
    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.ERROR)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        self.tally.leaked.append(f"log: {record.getMessage()}")


async def run_campaign(
    *,
    queries: int,
    seed: int = 1,
    per_round: int = 10_000,
    workers: int = 32,
    stop_every: int = 2,
) -> Tally:
    """Run rounds of about `per_round` queries until `queries` were sent; every
    `stop_every`-th round ends with stop() mid-load. Returns the tally."""
    tally = Tally()
    t0 = time.perf_counter()
    rng = random.Random(seed)
    i = 0
    while tally.queries < queries:
        budget = min(per_round, queries - tally.queries)
        stop_at = rng.uniform(0.5, 0.9) if stop_every and i % stop_every == stop_every - 1 else None
        await _Round(seed * 1000 + i, budget, workers, tally, stop_at).run()
        i += 1
    tally.seconds = time.perf_counter() - t0
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-round", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()
    tally = asyncio.run(
        run_campaign(
            queries=args.queries, seed=args.seed, per_round=args.per_round, workers=args.workers
        )
    )
    summary = tally.summary()
    problems = tally.problems()
    if args.json:
        print(json.dumps({"summary": summary, "problems": problems}, indent=2, default=str))
    else:
        for k, v in summary.items():
            print(f"{k:28s} {v}")
        print("problems" if problems else "no promise broken")
        for k, v in problems.items():
            print(f"  {k}: {v}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
