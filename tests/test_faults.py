"""Fault injection: broken models and misbehaving callers never break a promise.

The seeded campaign lives in ``tests/fault_campaign.py`` (its long run sends >= 100k
queries: ``python tests/fault_campaign.py --queries 100000 --seed 1``); here a short run
of the same generator, and one deterministic test per fault kind and backend.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import fault_campaign as faults
from clipperlite import Clipper, Prediction
from helpers import clipperlite_threads, eventually

#: What the campaign reports that must be 0 in every run: a non-zero figure is a broken promise.
INVARIANTS = (
    "lost",
    "resolved_twice",
    "leaked_exceptions",
    "wrong_answers",
    "fault_inputs_answered",
    "unexplained_defaults",
    "metric_mismatches",
    "not_recovered",
    "leftovers_after_stop",
)


@pytest.mark.anyio
async def test_seeded_campaign_keeps_every_promise() -> None:
    """A short seeded campaign: nothing lost, resolved twice or leaked; defaults explained."""
    tally = await faults.run_campaign(queries=8_000, seed=7, per_round=2_000, workers=32)
    summary = tally.summary()
    print(summary)  # the figures, with -s
    assert {k: summary[k] for k in INVARIANTS} == dict.fromkeys(INVARIANTS, 0), tally.problems()
    assert tally.problems() == {}
    assert tally.queries >= 8_000
    # The generator really injected every kind of fault and caller misbehaviour...
    for kind in (
        *("raise", "hang", "wrong_length", "not_list", "kill", "slow_replica_batch"),
        *("stop_iteration", "self_cancel", "fork", "future_output", "reused_any_input"),
    ):
        assert tally.faults[kind] > 0, kind
    for behaviour in ("cancel", "burst_predicts", "burst_predict_batch", "stop_mid_load"):
        assert tally.caller[behaviour] > 0, behaviour
    assert tally.outcomes["cancelled"] > 0
    assert tally.outcomes["closed"] > 0
    # ... and the faults had their effects. Whether a burst is refused (queue_full,
    # would_miss) or a query is still in flight at stop() (shutdown) depends on timing,
    # so those causes are tested deterministically in test_admission.py and
    # test_shutdown.py rather than required here.
    for cause in ("model_error", "wrong_length", "worker_died", "deadline", "no_model"):
        assert tally.defaults[cause] > 0, cause


def test_cause_of_reads_every_explanation_format() -> None:
    """The campaign's explanation parser recognises each cause (so none is miscounted)."""
    cases = {
        "app 'a' has no linked model": "no_model",
        "app 'a': model 'm' (version 1) did not answer within the deadline (1 µs)": "deadline",
        "app 'a': model 'm' (version 1) raised ValueError: returned queue is full": "model_error",
        "app 'a': model 'm' (version 1) returned 3 outputs for a batch of 2": "wrong_length",
        "app 'a': model 'm' (version 1) worker died: worker process x exited": "worker_died",
        "app 'a': model 'm' (version 1) queue is full (5 queries)": "queue_full",
        "app 'a': model 'm' (version 1) has a full queue (max_queue=5)": "queue_full",
        "app 'a': model 'm' (version 1) could not meet its deadline: 9 queries": "would_miss",
        "app 'a': shed at entry: the event loop is 34 ms behind (a flood)": "would_miss",
        "app 'a': model 'm' (version 1) has no running replica": "no_replica",
        "app 'a': model 'm' is not deployed": "no_replica",
        "app 'a': the Clipper is shutting down (query for model 'm' not answered)": "shutdown",
        "app 'a': policy exp3 raised KeyError: 'x'": "policy_error",
        "app 'a': confidence 0.100 of the answer from 'm' is below min_confidence 0.5": (
            "low_confidence"
        ),
        "something else": "unknown",
    }
    for text, cause in cases.items():
        assert faults.cause_of(text)[1] == cause, text
    assert faults.cause_of("app 'a': model 'm' raised X: y")[0] == "a"


# -- one fault at a time, on every backend ---------------------------------------------------
def _x(code: int, nonce: int, param: float = 0.0) -> list[float]:
    return [float(code), param, float(nonce)]


_EXPECTED = {
    faults.RAISE: ("model_error", "raised ValueError: injected fault"),
    faults.WRONG_LENGTH: ("wrong_length", "returned 2 outputs for a batch of 1"),
    faults.NOT_LIST: ("wrong_length", "returned dict, not a list of 1 outputs"),
    faults.KILL: ("worker_died", "worker died"),
}


def _model_for(backend: str) -> Any:
    return faults.make_async_model() if backend == "async" else faults.make_model()


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["thread", "async", "process"])
async def test_each_fault_fails_only_its_own_query(backend: str) -> None:
    """A poison input in a batch of 8 fails alone, explained; the other 7 get their own answers."""
    kinds = [faults.RAISE, faults.WRONG_LENGTH, faults.NOT_LIST]
    if backend == "process":
        kinds.append(faults.KILL)
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint(
            "f",
            "doubles",
            _model_for(backend),
            default_output=-1,
            slo_micros=5_000_000,
            backend=backend,
            batch_size=8,
            batch_wait_micros=50_000,
        )
        for round_, kind in enumerate(kinds):
            base = 100 * round_
            xs = [_x(faults.OK, base + i) for i in range(7)] + [_x(kind, base + 7)]
            ps = await asyncio.gather(*(clipper.predict("f", x) for x in xs))
            cause, words = _EXPECTED[kind]
            poison = ps[-1]
            assert poison.default, poison
            assert poison.default_cause == cause
            assert faults.cause_of(poison.default_explanation) == ("f", cause)
            assert words in (poison.default_explanation or "")
            assert "model 'f'" in (poison.default_explanation or "")
            assert [p.output for p in ps[:-1]] == [base + i for i in range(7)]
            assert not any(p.default for p in ps[:-1])
            after = await clipper.predict("f", _x(faults.OK, base + 50))
            assert (after.default, after.output) == (False, base + 50)
        stats = clipper.metrics()["models"]["f"]["1"]
        assert stats["errors"] >= len(kinds)
        assert stats["retried_batches"] >= len(kinds)
        assert stats["num_replicas"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["thread", "async"])
async def test_hang_past_deadline_is_replaced_by_watchdog(backend: str) -> None:
    """A hung batch gets the deadline default and its replica is replaced without waiting."""
    async with Clipper(cache_size=0, hang_timeout_s=0.5) as clipper:
        await clipper.create_endpoint(
            "h", "doubles", _model_for(backend), default_output=-1, slo_micros=100_000
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hung = await clipper.predict("h", _x(faults.HANG, 1, param=2.5))
        assert hung.default
        assert hung.default_cause == "deadline"
        assert faults.cause_of(hung.default_explanation) == ("h", "deadline")
        assert loop.time() - t0 < 0.6  # answered at its deadline, not when the hang ends

        def replaced() -> bool:
            return bool(clipper.metrics()["models"]["h"]["1"]["replaced_replicas"])

        assert await eventually(replaced, timeout=3.0)
        p = await clipper.predict("h", _x(faults.OK, 2))
        assert (p.default, p.output) == (False, 2)
        assert loop.time() - t0 < 2.4  # before the hung call would have returned
        assert clipper.get_num_replicas("h") == 1
    # Let the abandoned hang finish so no thread outlives the test.
    await eventually(lambda: not clipperlite_threads(), timeout=3.0)


@pytest.mark.anyio
async def test_one_slow_replica_does_not_hold_up_the_others() -> None:
    """One replica slow past the SLO delays only its own batches; the others keep answering."""
    slow = faults.make_model()
    counts: dict[str, int] = {}

    def model(xs: list[Any]) -> Any:
        if threading.current_thread().name.endswith(":1"):
            counts["slow"] = counts.get("slow", 0) + 1
            time.sleep(0.4)
        return slow(xs)

    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint(
            "s", "doubles", model, default_output=-1, slo_micros=150_000, num_replicas=3
        )

        async def caller(k: int) -> list[Prediction]:
            return [await clipper.predict("s", _x(faults.OK, 1000 * k + i)) for i in range(40)]

        ps = [p for ps in await asyncio.gather(*(caller(k) for k in range(6))) for p in ps]
    answered = [p for p in ps if not p.default]
    assert counts.get("slow", 0) >= 1
    assert len(answered) >= 0.8 * len(ps)
    assert all(faults.cause_of(p.default_explanation)[1] == "deadline" for p in ps if p.default)


def _exits(xs: list[Any]) -> list[Any]:
    if any(x[0] < 0 for x in xs):
        raise SystemExit(3)
    return [float(x[2]) for x in xs]


async def _cancels(xs: list[Any]) -> list[Any]:
    if any(x[0] < 0 for x in xs):
        raise asyncio.CancelledError  # e.g. a sub-request of the model was cancelled
    return [float(x[2]) for x in xs]


@pytest.mark.anyio
@pytest.mark.parametrize("func", [_exits, _cancels], ids=["thread-SystemExit", "async-Cancelled"])
async def test_base_exception_from_model_is_a_model_error(func: Any) -> None:
    """A model raising SystemExit or CancelledError gets model_error; its replica serves on."""
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint("b", "doubles", func, default_output=-1, slo_micros=300_000)
        bad = await clipper.predict("b", [-1.0, 0.0, 1.0])
        after = [await clipper.predict("b", [0.0, 0.0, float(i)]) for i in range(3)]
    assert bad.default
    assert bad.default_cause == "model_error", bad
    assert faults.cause_of(bad.default_explanation)[1] == "model_error", bad
    assert [p.output for p in after] == [0.0, 1.0, 2.0], after


@pytest.mark.anyio
async def test_watchdog_abandoned_thread_is_counted_at_once() -> None:
    """A thread the watchdog abandons shows in metrics()["abandoned_threads"] right away."""
    release = threading.Event()

    def stuck(xs: list[Any]) -> list[Any]:
        release.wait(10)
        return [0.0] * len(xs)

    try:
        async with Clipper(cache_size=0, hang_timeout_s=0.3) as clipper:
            await clipper.create_endpoint(
                "h", "doubles", stuck, default_output=-1, slo_micros=50_000
            )
            assert (await clipper.predict("h", [1.0])).default

            def replaced() -> bool:
                return bool(clipper.metrics()["models"]["h"]["1"]["replaced_replicas"])

            assert await eventually(replaced, timeout=3.0)
            await asyncio.sleep(0.05)
            m = clipper.metrics()
            assert m["models"]["h"]["1"]["abandoned_threads"] == 1
            assert m["abandoned_threads"] == 1
    finally:
        release.set()
        await eventually(lambda: not clipperlite_threads(), timeout=3.0)


def _raises_unprintable(base: type[BaseException]) -> Any:
    """A model whose error for a negative input cannot be turned into a string (its
    `__str__` reads an attribute that was never set, a common slip in user classes)."""

    class Unprintable(base):  # type: ignore[valid-type, misc]
        def __str__(self) -> str:
            return str(self.reason)  # type: ignore[attr-defined]

    def model(xs: list[Any]) -> list[Any]:
        if any(x[0] < 0 for x in xs):
            raise Unprintable()
        return [float(x[1]) for x in xs]

    return model


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("base", [Exception, BaseException], ids=lambda b: b.__name__)
async def test_an_error_that_cannot_be_printed_is_a_model_error(
    backend: str, base: type[BaseException]
) -> None:
    """A model's error whose str() raises gets model_error naming its type, explained;
    the replica serves on, not replaced (it once killed the thread, or was called a
    shutdown)."""
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint(
            "u",
            "doubles",
            _raises_unprintable(base),
            default_output=-1,
            slo_micros=5_000_000,
            backend=backend,
        )
        bad = await clipper.predict("u", [-1.0, 0.0])
        after = [await clipper.predict("u", [0.0, float(i)]) for i in range(3)]
        stats = clipper.metrics()["models"]["u"]["1"]
    assert bad.default_cause == "model_error", bad
    assert "Unprintable: <str() failed>" in (bad.default_explanation or ""), bad
    assert [(p.default, p.output) for p in after] == [(False, 0.0), (False, 1.0), (False, 2.0)]
    assert stats["replaced_replicas"] == 0
