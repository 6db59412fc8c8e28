"""Property: under random load, failures and cancellations every query resolves exactly once.

Each example runs a fresh Clipper on a fresh event loop (`asyncio.run`), in real time
with small SLOs; no assertion depends on tight timing. Set CLIPPERLITE_PROPERTY_EXAMPLES
to run more examples than the default 25 (a few hundred take well under a minute).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipperlite import Clipper, Prediction

#: What the model does with one batch: answer, raise, return too few outputs, or sleep first.
ACTIONS = ("ok", "ok", "raise", "short", "slow")
POOL = (0.0, 1.0, 2.0, 3.0, 4.0)  # a small pool of inputs, so that queries coalesce


@dataclass(frozen=True)
class Call:
    x: float
    slo_micros: int
    cancel_after: float | None  # seconds after submission, or never


@dataclass(frozen=True)
class Scenario:
    bursts: list[list[Call]]
    gaps: list[float]
    actions: list[str]
    slow_s: float
    async_model: bool
    two_models: bool
    batch_size: int | None
    batch_wait_micros: int
    max_queue: int
    num_replicas: int
    cache_size: int


calls = st.builds(
    Call,
    x=st.sampled_from(POOL),
    slo_micros=st.sampled_from([10_000, 20_000, 30_000, 50_000]),
    cancel_after=st.one_of(st.none(), st.none(), st.floats(0.0, 0.03)),
)

scenarios = st.builds(
    Scenario,
    bursts=st.lists(st.lists(calls, min_size=1, max_size=12), min_size=1, max_size=4),
    gaps=st.lists(st.floats(0.0, 0.02), min_size=4, max_size=4),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=8),
    slow_s=st.floats(0.02, 0.06),
    async_model=st.booleans(),
    two_models=st.booleans(),
    batch_size=st.one_of(st.none(), st.integers(1, 4)),
    batch_wait_micros=st.sampled_from([0, 5_000]),
    max_queue=st.sampled_from([2, 1_000]),
    num_replicas=st.integers(1, 2),
    cache_size=st.sampled_from([0, 100]),
)


class ScriptedModel:
    """Doubles each input's first element; what it does to each batch follows a script."""

    def __init__(self, actions: list[str], slow_s: float) -> None:
        self.actions = actions
        self.slow_s = slow_s
        self.calls = 0
        self.lock = threading.Lock()

    def next_action(self) -> str:
        with self.lock:
            action = self.actions[self.calls % len(self.actions)]
            self.calls += 1
        return action

    def finish(self, action: str, xs: list[Any]) -> list[Any]:
        if action == "raise":
            raise RuntimeError("scripted failure")
        out = [float(np.asarray(x)[0]) * 2 for x in xs]
        return out[:-1] if action == "short" else out

    def __call__(self, xs: list[Any]) -> list[Any]:
        action = self.next_action()
        if action == "slow":
            time.sleep(self.slow_s)
        return self.finish(action, xs)


class AsyncScriptedModel(ScriptedModel):
    """The same script as an `async def` model."""

    async def __call__(self, xs: list[Any]) -> list[Any]:  # type: ignore[override]
        action = self.next_action()
        if action == "slow":
            await asyncio.sleep(self.slow_s)
        return self.finish(action, xs)


async def run(s: Scenario) -> None:
    """Play the scenario and check every invariant."""
    loop = asyncio.get_running_loop()
    tasks: list[tuple[Call, asyncio.Task[Prediction]]] = []
    async with Clipper(cache_size=s.cache_size, shutdown_grace_s=1.0, seed=1) as c:
        c.register_application("app", "doubles", -1.0, 50_000, policy="exp4")
        for name in ("m1", "m2") if s.two_models else ("m1",):
            model_cls = AsyncScriptedModel if s.async_model else ScriptedModel
            await c.deploy_model(
                name,
                1,
                "doubles",
                model_cls(s.actions, s.slow_s),
                batch_size=s.batch_size,
                batch_wait_micros=s.batch_wait_micros,
                max_queue=s.max_queue,
                num_replicas=s.num_replicas,
            )
            c.link_model_to_app("app", name)
        for burst, gap in zip(s.bursts, s.gaps, strict=False):
            for call in burst:
                task = asyncio.ensure_future(
                    c.predict("app", [call.x, 1.0], slo_micros=call.slo_micros)
                )
                if call.cancel_after is not None:
                    loop.call_later(call.cancel_after, task.cancel)
                tasks.append((call, task))
            await asyncio.sleep(gap)
        _, pending = await asyncio.wait([t for _, t in tasks], timeout=10.0)
        assert not pending, "a predict call never returned"
        answered = 0
        ids = set()
        causes: Counter[str] = Counter()
        for call, task in tasks:
            if task.cancelled():
                assert call.cancel_after is not None, "a call nobody cancelled was cancelled"
                continue
            exc = task.exception()
            assert exc is None, f"predict raised {exc!r}"
            p = task.result()
            assert isinstance(p, Prediction)
            ids.add(p.query_id)
            answered += 1
            if p.default:
                assert p.output == -1.0
                assert isinstance(p.default_explanation, str)
                assert p.default_explanation
                causes[p.default_cause] += 1
            else:
                assert p.default_explanation is None
                assert p.output == call.x * 2
        assert len(ids) == answered
        stats = c.metrics()["apps"]["app"]
        assert stats["queries"] == stats["answered"] + sum(stats["defaults"].values())
        assert stats["queries"] == answered
        assert causes == Counter({k: v for k, v in stats["defaults"].items() if v})


@settings(
    max_examples=int(os.environ.get("CLIPPERLITE_PROPERTY_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios)
def test_every_query_resolves_exactly_once(s: Scenario) -> None:
    """Random load, SLOs, cancels and failures: each predict returns one explained Prediction."""
    asyncio.run(run(s))
