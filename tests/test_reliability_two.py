"""Reliability, round two: what an adversarial review broke (issue 9), one test each."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import anyio
import pytest

from clipperlite import Clipper, DefaultCause
from helpers import clipperlite_threads, version_stats, worker_processes

# -- models (nested where a worker process must load them by value) --------------------


def stop_iteration_model(xs: list[Any]) -> list[Any]:
    """Raises StopIteration on a 13, answers the rest."""
    if any(x == 13 for x in xs):
        next(iter([]))
    return [x * 2 for x in xs]


async def async_stop_iteration_model(xs: list[Any]) -> list[Any]:
    """The async twin of `stop_iteration_model`."""
    return stop_iteration_model(xs)


def _process_stop_iteration() -> Any:
    def model(xs: list[Any]) -> list[Any]:
        if any(x == 13 for x in xs):
            next(iter([]))
        return [x * 2 for x in xs]

    return model


# -- 1: StopIteration --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["thread", "process", "async"])
async def test_stop_iteration_is_a_model_error_and_the_replica_serves_on(backend: str) -> None:
    """A model raising StopIteration gives a "model raised" default, counted; it serves on."""
    func: Any = {
        "thread": stop_iteration_model,
        "async": async_stop_iteration_model,
        "process": _process_stop_iteration(),
    }[backend]
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", "dflt", 2_000_000)
        await c.deploy_model("m", 1, "any", func, backend=backend, batch_size=1)
        c.link_model_to_app("a", "m")
        t0 = time.monotonic()
        bad = await c.predict("a", 13)
        assert time.monotonic() - t0 < 1.0  # not the deadline, nor the watchdog
        assert bad.default and bad.default_cause is DefaultCause.MODEL_ERROR
        assert "StopIteration" in (bad.default_explanation or "")
        good = await c.predict("a", 2)
        assert not good.default and good.output == 4
        stats = version_stats(c, "m")
        assert stats["errors"] == 1
        assert stats["replaced_replicas"] == 0


# -- 2: "any" inputs reused by the caller --------------------------------------------------


@pytest.mark.anyio
async def test_any_input_mutated_after_a_deadline_does_not_poison_the_cache() -> None:
    """A late batch computes on, and caches for, the input as it was at predict time."""
    gate = asyncio.Event()

    async def model(xs: list[Any]) -> list[Any]:
        await gate.wait()
        return [sum(x) for x in xs]

    async with Clipper() as c:
        c.register_application("a", "any", -1, 20_000)
        await c.deploy_model("m", 1, "any", model)
        c.link_model_to_app("a", "m")
        x = [1, 2, 3]
        late = await c.predict("a", x)
        assert late.default_cause is DefaultCause.DEADLINE
        x[0] = 100  # the caller reuses its list
        gate.set()
        await asyncio.sleep(0.05)  # the late batch finishes and is cached
        again = await c.predict("a", [1, 2, 3], slo_micros=1_000_000)
        assert again.output == 6


# -- 3: model outputs that are futures -------------------------------------------------------


@pytest.mark.anyio
async def test_a_future_as_an_output_is_an_opaque_value_on_a_cache_hit() -> None:
    """An output that is an asyncio Future is returned as is, on a miss and on a hit."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Future[Any]] = []

    async def model(xs: list[Any]) -> list[Any]:
        outs = [loop.create_future() for _ in xs]
        made.extend(outs)
        return outs

    async with Clipper() as c:
        c.register_application("a", "any", "dflt", 50_000)
        c.register_application("b", "any", "dflt-b", 50_000)
        await c.deploy_model("m", 1, "any", model)
        await c.deploy_model("other", 1, "any", lambda xs: list(xs))
        c.link_model_to_app("a", "m")
        c.link_model_to_app("b", "other")
        first = await c.predict("a", 1)
        assert first.output is made[0]
        hit = await c.predict("a", 1)  # cached: the future itself
        assert not hit.default and hit.output is made[0]
        assert not made[0].done()  # nobody set a result on the model's future
        other = await c.predict("b", 5)  # the shared deadline timer still works
        assert other.output == 5
        await asyncio.sleep(0.08)  # past the deadline registered for the hit
        late = await c.predict("b", 6, slo_micros=1_000)
        assert late.output == 6 or late.default_cause is DefaultCause.DEADLINE


def test_the_deadline_timer_survives_a_future_that_refuses_a_result() -> None:
    """One entry whose set_result raises does not stop the others from expiring."""
    from clipperlite._timers import DeadlineTimer

    loop = asyncio.new_event_loop()
    try:
        timer = DeadlineTimer(loop)
        bad: asyncio.Future[Any] = loop.create_future()
        good: asyncio.Future[Any] = loop.create_future()

        class Refusing(asyncio.Future):  # type: ignore[type-arg]
            def set_result(self, result: Any) -> None:
                raise asyncio.InvalidStateError("refused")

        refusing = Refusing(loop=loop)
        now = loop.time()
        timer.add(now, refusing, "late")
        timer.add(now, bad, "late")
        timer.add(now + 0.001, good, "late")
        loop.run_until_complete(asyncio.sleep(0.02))
        assert bad.result() == "late" and good.result() == "late"
    finally:
        loop.close()


# -- 4: a crashed worker reported before the restart ------------------------------------------


def _crash_on_13() -> Any:
    def model(xs: list[Any]) -> list[Any]:
        import os

        if any(x == 13 for x in xs):
            os._exit(3)
        return list(xs)

    return model


@pytest.mark.anyio
async def test_a_crashed_worker_is_reported_before_it_is_restarted() -> None:
    """With an SLO shorter than a restart, the crash is explained as worker_died."""
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", "dflt", 60_000)
        await c.deploy_model("m", 1, "any", _crash_on_13(), backend="process", batch_size=1)
        c.link_model_to_app("a", "m")
        assert (await c.predict("a", 1)).output == 1
        crashed = await c.predict("a", 13)
        assert crashed.default_cause is DefaultCause.WORKER_DIED, crashed
        # The replacement comes up in the background and serves the next query.
        for _ in range(100):
            p = await c.predict("a", 2, slo_micros=2_000_000)
            if not p.default:
                break
        assert p.output == 2


# -- 5: an async model cancelling itself -------------------------------------------------------


@pytest.mark.anyio
async def test_an_async_model_cancelling_itself_is_a_model_error_and_serves_on() -> None:
    """A model whose own timeout cancels its task is a model error, not a shutdown."""

    async def model(xs: list[Any]) -> list[Any]:
        if 13 in xs:
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_later(0.005, task.cancel)  # a hand-made timeout
            await asyncio.sleep(1)
        return list(xs)

    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", "dflt", 1_000_000)
        await c.deploy_model("m", 1, "any", model, batch_size=1)
        c.link_model_to_app("a", "m")
        bad = await c.predict("a", 13)
        assert bad.default_cause is DefaultCause.MODEL_ERROR, bad
        assert "Cancelled" in (bad.default_explanation or "")
        good = await c.predict("a", 2)
        assert good.output == 2
        assert version_stats(c, "m")["num_replicas"] == 1


@pytest.mark.anyio
async def test_a_late_self_cancel_does_not_kill_the_replica() -> None:
    """A model that arms a cancel of its task and returns early leaves the replica serving."""

    async def model(xs: list[Any]) -> list[Any]:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.005, task.cancel)
        return list(xs)

    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", "dflt", 1_000_000)
        await c.deploy_model("m", 1, "any", model, batch_size=1)
        c.link_model_to_app("a", "m")
        assert (await c.predict("a", 1)).output == 1
        await asyncio.sleep(0.03)
        p = await c.predict("a", 2)
        assert p.output == 2, p


# -- 6: delayed batching ends in time for the earliest deadline --------------------------------


@pytest.mark.anyio
async def test_batch_wait_ends_in_time_for_the_earliest_deadline() -> None:
    """A lone 200 ms query on an idle replica with a 1 s batch wait is answered in time."""
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "doubles", -1.0, 200_000)
        await c.deploy_model(
            "m", 1, "doubles", lambda xs: [float(x[0]) for x in xs], batch_wait_micros=1_000_000
        )
        c.link_model_to_app("a", "m")
        await c.predict("a", [0.0], slo_micros=5_000_000)  # warm: a latency estimate
        p = await c.predict("a", [1.0])
        assert not p.default, p
        assert p.output == 1.0


# -- 7: cancellation paths leave nothing behind -------------------------------------------------


@pytest.mark.anyio
async def test_stop_after_a_timed_out_stop_model_waits_for_that_stop() -> None:
    """stop() after a stop_model cut short by a timeout still stops the model's thread."""
    release = time.monotonic() + 0.4

    def model(xs: list[Any]) -> list[Any]:
        while time.monotonic() < release:
            time.sleep(0.01)
        return list(xs)

    c = Clipper(cache_size=0, shutdown_grace_s=2.0)
    await c.start()
    c.register_application("a", "any", "dflt", 5_000_000)
    await c.deploy_model("m", 1, "any", model)
    c.link_model_to_app("a", "m")
    running = asyncio.ensure_future(c.predict("a", 1))
    await asyncio.sleep(0.05)
    with anyio.move_on_after(0.05):
        await c.stop_model("m")
    await c.stop()
    assert clipperlite_threads() == []
    p = await running
    assert p.output == 1 or p.default_cause in (DefaultCause.NO_REPLICA, DefaultCause.SHUTDOWN)
    assert p.default_cause is not DefaultCause.DEADLINE


def _slow_to_load() -> Any:
    import time as _t

    class Slow:
        def __reduce__(self) -> Any:
            return (_t.sleep, (0.0,))

    def model(xs: list[Any]) -> list[Any]:
        return list(xs)

    return model


@pytest.mark.anyio
async def test_deploy_cancelled_by_an_anyio_scope_leaves_no_worker_process() -> None:
    """A deploy_model cut by an anyio cancel scope leaves no worker process after stop()."""
    before = set(worker_processes())
    c = Clipper()
    await c.start()
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2):
        with anyio.move_on_after(delay):
            await c.deploy_model(f"m{delay}", 1, "any", _slow_to_load(), backend="process")
    await c.stop()
    await asyncio.sleep(0.05)
    assert set(worker_processes()) - before == set()


# -- 8: other threads and event loops ---------------------------------------------------------


class _LoopThread:
    """A Clipper started on an event loop running in a background thread."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clipper = Clipper()
        self.run(self.clipper.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.clipper.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_a_clipper_used_from_another_loop_says_what_to_do() -> None:
    """predict and stop from another thread's loop raise a ClipperError naming blocking()."""
    from clipperlite import ClipperError

    bg = _LoopThread()
    try:
        with bg.clipper.blocking() as sync:
            sync.register_application("a", "any", "d", 1_000_000)

        async def elsewhere() -> None:
            with pytest.raises(ClipperError, match="blocking"):
                await bg.clipper.predict("a", 1)
            with pytest.raises(ClipperError, match="event loop"):
                await bg.clipper.stop()
            with pytest.raises(ClipperError, match="event loop"):
                await bg.clipper.deploy_model("m", 1, "any", lambda xs: xs)

        asyncio.run(elsewhere())
        with pytest.raises(ClipperError, match="thread"):
            bg.clipper.register_application("b", "any", "d", 1_000_000)
        assert bg.clipper.running  # not half-used: it still serves its own loop
        assert bg.clipper.get_all_apps() == ["a"]
    finally:
        bg.close()


def test_a_clipper_after_its_asyncio_run_ended_says_so() -> None:
    """A Clipper whose asyncio.run ended raises a ClipperError, not a bare RuntimeError."""
    from clipperlite import ClipperError

    c = Clipper()
    c.register_application("a", "any", "d", 1_000_000)

    async def first() -> None:
        await c.start()

    asyncio.run(first())

    async def second() -> None:
        with pytest.raises(ClipperError, match="ended"):
            await c.predict("a", 1)
        with pytest.raises(ClipperError, match="ended"):
            await c.stop()

    asyncio.run(second())


def test_blocking_gives_synchronous_calls_backed_by_the_clippers_loop() -> None:
    """clipper.blocking() serves Flask-style synchronous code from another thread."""
    bg = _LoopThread()
    try:
        with bg.clipper.blocking() as sync:
            sync.register_application("a", "doubles", -1.0, 1_000_000)
            sync.deploy_model("m", 1, "doubles", lambda xs: [float(sum(x)) for x in xs])
            sync.link_model_to_app("a", "m")
            assert sync.predict("a", [1.0, 2.0]).output == 3.0
            assert [p.output for p in sync.predict_batch("a", [[1.0], [2.0]])] == [1.0, 2.0]
            sync.feedback("a", [1.0, 2.0], 3.0)
            assert sync.get_linked_models("a") == ["m"]
            assert sync.metrics()["apps"]["a"]["queries"] == 3
    finally:
        bg.close()


@pytest.mark.anyio
async def test_blocking_on_the_clippers_own_loop_is_refused() -> None:
    """blocking() inside the loop would deadlock it: a ClipperError says to await instead."""
    from clipperlite import ClipperError

    async with Clipper() as c:
        with pytest.raises(ClipperError, match="await"), c.blocking():
            pass


def test_blocking_while_the_clippers_loop_is_not_running_is_refused() -> None:
    """A Clipper started by run_until_complete, its loop stopped, cannot host the portal:
    blocking() from another thread raises at once, saying why, instead of hanging."""
    import threading

    from clipperlite import ClipperError

    loop = asyncio.new_event_loop()
    clipper = Clipper()
    loop.run_until_complete(clipper.start())
    errors: list[BaseException] = []

    def use() -> None:
        try:
            with clipper.blocking():
                pass
        except BaseException as exc:
            errors.append(exc)

    try:
        worker = threading.Thread(target=use, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], ClipperError), errors
        assert "not running" in str(errors[0])
    finally:
        loop.run_until_complete(clipper.stop())
        loop.close()


# -- 12: the cache bounded by bytes ------------------------------------------------------------


@pytest.mark.anyio
async def test_cache_max_bytes_bounds_big_inputs() -> None:
    """300 distinct 100 kB inputs keep the cache under cache_max_bytes (LRU dropped)."""
    async with Clipper(cache_max_bytes=2_000_000) as c:
        c.register_application("a", "bytes", b"", 5_000_000)
        await c.deploy_model("m", 1, "bytes", lambda xs: [len(x) for x in xs])
        c.link_model_to_app("a", "m")
        for i in range(300):
            x = i.to_bytes(4, "big") * 25_000
            assert (await c.predict("a", x)).output == 100_000
        cache = c.statistics().cache
        assert 0 < cache.nbytes <= 2_000_000
        assert cache.size <= 20
        assert c.metrics()["cache"]["max_bytes"] == 2_000_000
        last = i.to_bytes(4, "big") * 25_000
        await c.predict("a", last)
        assert version_stats(c, "m")["cache_hits"] == 1  # the newest is still cached


def test_cache_max_bytes_has_a_safe_default_and_checks_its_value() -> None:
    """The default byte bound is 256 MiB; a bad value is a ClipperError."""
    from clipperlite import ClipperError

    assert Clipper().statistics().cache.max_bytes == 256 * 1024 * 1024
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ClipperError, match="cache_max_bytes"):
            Clipper(cache_max_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_cache_false_keeps_outputs_out_and_makes_no_key() -> None:
    """deploy_model(cache=False): nothing cached and the app's key function never runs."""
    async with Clipper() as c:
        c.register_application("a", "any", None, 1_000_000)
        await c.deploy_model("m", 1, "any", lambda xs: list(xs), cache=False)
        c.link_model_to_app("a", "m")
        app = c._registry.apps["a"]
        calls: list[Any] = []
        real = app.key
        app.key = lambda x: calls.append(x) or real(x)
        for _ in range(3):
            assert (await c.predict("a", (1, 2))).output == (1, 2)
        assert calls == []
        assert c.statistics().cache.size == 0


# -- 11: logging ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_model_exception_is_logged_with_its_traceback_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first exception is logged at WARNING with its traceback; the next are held back."""
    import logging

    def broken(xs: list[Any]) -> list[Any]:
        raise ValueError("kaput")

    caplog.set_level(logging.INFO, logger="clipperlite")
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", None, 1_000_000)
        await c.deploy_model("m", 1, "any", broken, batch_size=1)
        c.link_model_to_app("a", "m")
        for i in range(5):
            assert (await c.predict("a", i)).default_cause is DefaultCause.MODEL_ERROR
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    record = warnings[0]
    assert record.name == "clipperlite"
    assert "'m' version 1" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert "broken" in caplog.text and "kaput" in caplog.text  # the traceback
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("deployed model 'm'" in m for m in infos)


def test_the_error_log_says_how_many_were_held_back(caplog: pytest.LogCaptureFixture) -> None:
    """After the interval, the next log line counts the exceptions left out."""
    import logging

    from clipperlite._aimd import FixedBatchSize
    from clipperlite._batching import Batcher

    now = [0.0]
    b = Batcher(FixedBatchSize(1), clock=lambda: now[0], label="'m' version 1")
    caplog.set_level(logging.WARNING, logger="clipperlite")
    for t in (0.0, 1.0, 2.0, 11.0):
        now[0] = t
        b._log_failure(ValueError("x"), 1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "2 more since the last one logged" in lines[1]


@pytest.mark.anyio
async def test_a_per_item_model_gets_a_hint_that_func_receives_a_list() -> None:
    """A TypeError on the whole batch is explained with the list-of-inputs hint."""
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "doubles", None, 1_000_000)
        await c.deploy_model("m", 1, "doubles", lambda x: x.sum() + "s")  # per item
        c.link_model_to_app("a", "m")
        p = await c.predict("a", [1.0])
        assert "func receives a list of inputs" in (p.default_explanation or "")


# -- 9: values that are not what they claim, and the smaller classes ----------------------------


class LyingList(list):  # type: ignore[type-arg]
    """A list whose len() and iteration lie about what it holds."""

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Any:
        return iter([0.0])


@pytest.mark.anyio
async def test_a_model_output_list_lying_about_its_length_is_wrong_length() -> None:
    """A list subclass claiming the batch's length but holding fewer is a wrong_length default."""
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", "dflt", 1_000_000)
        await c.deploy_model("m", 1, "any", lambda xs: LyingList(), batch_size=1)
        c.link_model_to_app("a", "m")
        p = await c.predict("a", 1)
        assert p.default_cause is DefaultCause.WRONG_LENGTH, p
        assert version_stats(c, "m")["replaced_replicas"] == 0
        assert (await c.predict("a", 2)).default_cause is DefaultCause.WRONG_LENGTH


@pytest.mark.anyio
async def test_a_list_subclass_input_is_validated_as_what_it_holds() -> None:
    """A numeric input that is a lying list subclass is validated by its real items."""
    from clipperlite import InvalidInputError

    async with Clipper(cache_size=0) as c:
        c.register_application("a", "doubles", -1.0, 1_000_000)
        await c.deploy_model("m", 1, "doubles", lambda xs: [float(x.sum()) for x in xs])
        c.link_model_to_app("a", "m")
        lying = LyingList([1.0, 2.0, "three"])
        with pytest.raises(InvalidInputError):
            await c.predict("a", lying)
        assert (await c.predict("a", LyingList([1.0, 2.0]))).output == 3.0


class EqualToAll(str):
    """A str that claims to equal every other str, with one hash."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


@pytest.mark.anyio
async def test_a_str_subclass_cannot_decide_cache_hits() -> None:
    """Inputs are exact builtin str (and bytes) before a key is made."""
    async with Clipper() as c:
        c.register_application("a", "strings", "", 1_000_000)
        seen: list[type] = []

        def model(xs: list[Any]) -> list[Any]:
            seen.extend(type(x) for x in xs)
            return [x.upper() for x in xs]

        await c.deploy_model("m", 1, "strings", model)
        c.link_model_to_app("a", "m")
        assert (await c.predict("a", "abc")).output == "ABC"
        assert (await c.predict("a", EqualToAll("xyz"))).output == "XYZ"
        assert set(seen) == {str}


@pytest.mark.anyio
async def test_a_longdouble_beyond_float64_is_invalid_not_inf() -> None:
    """A numpy longdouble too large for float64 raises InvalidInputError (no inf, no warning)."""
    import numpy as np

    from clipperlite import InvalidInputError

    huge = np.longdouble(np.finfo(np.float64).max) * np.longdouble(10)
    if not np.isfinite(huge):
        pytest.skip("this platform's longdouble is float64")
    async with Clipper() as c:
        c.register_application("a", "doubles", -1.0, 1_000_000)
        for x in ([huge], np.array([huge, 1.0], dtype=np.longdouble)):
            with pytest.raises(InvalidInputError, match="float64"):
                await c.predict("a", x)


def test_numbers_too_large_for_a_float_in_settings_are_clipper_errors() -> None:
    """slo_micros, batch_wait_micros, min_confidence... of 10**400 raise ClipperError."""
    from clipperlite import ClipperError

    big = 10**400
    c = Clipper()
    with pytest.raises(ClipperError, match="slo_micros"):
        c.register_application("a", "any", None, big)
    with pytest.raises(ClipperError, match="min_confidence"):
        c.register_application("b", "any", None, 1000, min_confidence=big)
    with pytest.raises(ClipperError, match="shutdown_grace_s"):
        Clipper(shutdown_grace_s=big)
    with pytest.raises(ClipperError, match="hang_timeout_s"):
        Clipper(hang_timeout_s=big)


@pytest.mark.anyio
async def test_settings_overflow_at_deploy_and_predict_are_clipper_errors() -> None:
    """batch_wait_micros and a per-query slo_micros of 10**400 raise ClipperError."""
    from clipperlite import ClipperError

    async with Clipper() as c:
        with pytest.raises(ClipperError, match="batch_wait_micros"):
            await c.deploy_model("m", 1, "any", lambda xs: xs, batch_wait_micros=10**400)
        c.register_application("a", "any", None, 1000)
        with pytest.raises(ClipperError, match="slo_micros"):
            await c.predict("a", 1, slo_micros=10**400)


class _Unpicklable:
    def __deepcopy__(self, memo: Any) -> Any:
        raise TypeError("no copies")


class _BrokenPolicy:
    """A policy whose init_state raises and whose restore_state raises its own error."""

    def init_state(self, models: list[str], previous: Any = None) -> Any:
        raise KeyError("init broke")

    def select(self, state: Any, x: Any) -> list[str]:
        return ["m"]

    def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> Any:
        return next(iter(outputs.values())), 1.0

    def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
        return state

    def restore_state(self, state: Any, models: list[str]) -> Any:
        raise LookupError("restore broke")


@pytest.mark.anyio
async def test_policy_state_errors_are_clipper_errors_chained() -> None:
    """get/set_policy_state raise ClipperError chained to TypeError, RecursionError, the
    policy's own error."""
    from clipperlite import ClipperError

    async with Clipper() as c:
        c.register_application("a", "any", None, 1_000_000)
        c.register_application("b", "any", None, 1_000_000, policy=_BrokenPolicy())
        await c.deploy_model("m", 1, "any", lambda xs: list(xs))
        c.link_model_to_app("a", "m")
        c.link_model_to_app("b", "m")
        with pytest.raises(ClipperError) as info:
            c.set_policy_state("a", _Unpicklable())
        assert isinstance(info.value.__cause__, TypeError)
        deep: list[Any] = []
        for _ in range(100_000):
            deep = [deep]
        with pytest.raises(ClipperError) as info:
            c.set_policy_state("a", deep)
        assert isinstance(info.value.__cause__, RecursionError | ValueError | TypeError)
        with pytest.raises(ClipperError) as info:
            c.get_policy_state("b")
        assert isinstance(info.value.__cause__, KeyError)
        with pytest.raises(ClipperError) as info:
            c.set_policy_state("b", {"w": 1})
        assert isinstance(info.value.__cause__, LookupError)


@pytest.mark.anyio
async def test_an_async_model_swallowing_cancellation_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop() abandons an async model that ignores its cancellation: WARNING and a count."""
    import logging

    release = asyncio.Event()

    async def stubborn(xs: list[Any]) -> list[Any]:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # swallowed
                await asyncio.sleep(0.01)
        return list(xs)

    caplog.set_level(logging.WARNING, logger="clipperlite")
    c = Clipper(cache_size=0, shutdown_grace_s=0.1)
    await c.start()
    c.register_application("a", "any", None, 10_000_000)
    await c.deploy_model("m", 1, "any", stubborn)
    c.link_model_to_app("a", "m")
    query = asyncio.ensure_future(c.predict("a", 1))
    await asyncio.sleep(0.05)
    await c.stop()
    assert (await query).default
    assert c.statistics().abandoned_threads == 1
    assert "ignored its cancellation" in caplog.text
    release.set()
    await asyncio.sleep(0.03)


@pytest.mark.anyio
async def test_the_default_output_is_not_shared_between_callers() -> None:
    """Mutating one default answer (or get_app_info's) changes no other caller's."""
    async with Clipper() as c:
        default = {"label": None, "scores": [0.0]}
        c.register_application("a", "any", default, 1_000_000)
        default["label"] = "changed by the registrant"
        p1 = await c.predict("a", 1)
        assert p1.output == {"label": None, "scores": [0.0]}
        p1.output["scores"].append(99)
        c.get_app_info("a")["default_output"]["label"] = "changed by a reader"
        p2 = await c.predict("a", 2)
        assert p2.output == {"label": None, "scores": [0.0]}
        assert c.get_app_info("a")["default_output"] == {"label": None, "scores": [0.0]}
        c.register_application("b", "any", 7, 1_000_000)
        assert (await c.predict("b", 1)).output == 7


def _forking_model() -> Any:
    def model(xs: list[Any]) -> list[Any]:
        import os

        os.fork()  # and no _exit: both processes return from here
        return [x * 10 for x in xs]

    return model


@pytest.mark.anyio
async def test_a_model_that_forks_without_exit_cannot_hand_out_wrong_answers() -> None:
    """A fork of the worker that returns from the model never answers a query."""
    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", None, 5_000_000)
        await c.deploy_model("m", 1, "any", _forking_model(), backend="process", batch_size=1)
        c.link_model_to_app("a", "m")
        for i in range(1, 6):
            p = await c.predict("a", i)
            assert p.output == i * 10, p


# -- 13: mistakes that pass silently -------------------------------------------------------------


@pytest.mark.anyio
async def test_an_slo_given_in_milliseconds_is_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """slo_micros=50 (meant as 50 ms) logs one WARNING saying it is in microseconds."""
    import logging

    caplog.set_level(logging.WARNING, logger="clipperlite")

    def slowish(xs: list[Any]) -> list[Any]:
        time.sleep(0.002)
        return list(xs)

    async with Clipper(cache_size=0) as c:
        c.register_application("a", "any", None, 50)
        await c.deploy_model("m", 1, "any", slowish)
        c.link_model_to_app("a", "m")
        for i in range(5):
            assert (await c.predict("a", i)).default
    lines = [r.getMessage() for r in caplog.records if "slo_micros=50" in r.getMessage()]
    assert len(lines) == 1
    assert "microseconds" in lines[0] or "measured batch latency" in lines[0]
