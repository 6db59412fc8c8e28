"""The `Clipper` as an async resource, its public records and errors, and its getters.

Everything goes through the public API (`clipperlite`, `clipperlite.testing`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from typing import Any

import pytest

import clipperlite
from clipperlite import (
    Clipper,
    ClipperClosedError,
    ClipperError,
    Prediction,
    UnknownApplicationError,
)
from clipperlite import testing as fake
from helpers import wait_until

pytestmark = pytest.mark.anyio


# -- lifecycle ---------------------------------------------------------------------------


async def test_start_returns_the_clipper_itself() -> None:
    """`await Clipper().start()` returns that Clipper, running."""
    c = Clipper()
    try:
        assert await c.start() is c
        assert c.running
    finally:
        await c.stop()
    assert not c.running


async def test_async_with_starts_and_stops() -> None:
    """`async with Clipper()` serves inside the block and refuses queries after it."""
    async with Clipper() as c:
        await c.create_endpoint("app", "doubles", fake.constant(1.5))
        assert (await c.predict("app", [1.0])).output == 1.5
    with pytest.raises(ClipperClosedError):
        await c.predict("app", [1.0])


async def test_stop_is_idempotent() -> None:
    """stop() may be called again, also concurrently, and returns quietly each time."""
    c = await Clipper().start()
    await c.create_endpoint("app", "doubles", fake.echo)
    await c.stop()
    await c.stop()
    await asyncio.gather(c.stop(), c.aclose())
    assert not c.running


async def test_stop_lets_a_running_batch_finish_within_the_grace() -> None:
    """stop() lets a running batch finish within the grace: its query gets the real answer."""
    model = fake.counting(fake.slow(0.2))
    c = await Clipper(shutdown_grace_s=2.0).start()
    await c.create_endpoint("app", "doubles", model, slo_micros=5_000_000)
    query = asyncio.ensure_future(c.predict("app", [1.0]))
    await wait_until(lambda: model.calls == 1)
    await asyncio.gather(c.stop(), c.stop())
    assert query.done()
    p = query.result()
    assert not p.default, p.default_explanation
    assert p.output.tolist() == [1.0]


async def test_stopped_clipper_does_not_start_again() -> None:
    """A stopped Clipper raises ClipperError on start(), and on `async with`."""
    c = await Clipper().start()
    await c.stop()
    with pytest.raises(ClipperError, match="stop"):
        await c.start()
    with pytest.raises(ClipperError):
        async with c:
            pass


async def test_never_started_then_stopped_does_not_start() -> None:
    """stop() on a Clipper that never started closes it for good."""
    c = Clipper()
    await c.stop()
    with pytest.raises(ClipperError):
        await c.start()


async def test_starting_a_running_clipper_raises() -> None:
    """start() on a running Clipper raises ClipperError and leaves it running."""
    async with Clipper() as c:
        with pytest.raises(ClipperError):
            await c.start()
        assert c.running


async def test_queries_before_start_raise_closed_error() -> None:
    """predict, predict_batch and feedback on a Clipper not started raise ClipperClosedError."""
    c = Clipper()
    c.register_application("app", "doubles", -1.0, 100_000)
    with pytest.raises(ClipperClosedError):
        await c.predict("app", [1.0])
    with pytest.raises(ClipperClosedError):
        await c.predict_batch("app", [[1.0]])
    with pytest.raises(ClipperClosedError):
        await c.feedback("app", [1.0], 1.0)


async def test_queries_after_stop_raise_closed_error() -> None:
    """predict and predict_batch after stop() raise ClipperClosedError."""
    async with Clipper() as c:
        await c.create_endpoint("app", "doubles", fake.echo)
    with pytest.raises(ClipperClosedError):
        await c.predict("app", [1.0])
    with pytest.raises(ClipperClosedError):
        await c.predict_batch("app", [[1.0], [2.0]])


async def test_configuration_is_allowed_before_start() -> None:
    """Apps can be registered, read and deleted before start(); they serve once started."""
    c = Clipper()
    c.register_application("app", "doubles", -1.0, 100_000)
    c.register_application("gone", "strings", "", 100_000)
    c.delete_application("gone")
    assert c.get_all_apps() == ["app"]
    assert c.get_app_info("app")["slo_micros"] == 100_000
    async with c:
        await c.deploy_model("m", 1, "doubles", fake.constant(2.0))
        c.link_model_to_app("app", "m")
        assert (await c.predict("app", [1.0])).output == 2.0


async def test_model_lifecycle_before_start_raises_closed_error() -> None:
    """deploy_model and create_endpoint on a Clipper not started raise ClipperClosedError."""
    c = Clipper()
    with pytest.raises(ClipperClosedError):
        await c.deploy_model("m", 1, "doubles", fake.echo)
    with pytest.raises(ClipperClosedError):
        await c.create_endpoint("e", "doubles", fake.echo)
    assert c.get_all_models() == []
    assert c.get_all_apps() == []


async def test_deploy_after_stop_raises_closed_error() -> None:
    """deploy_model after stop() raises ClipperClosedError."""
    async with Clipper() as c:
        pass
    with pytest.raises(ClipperClosedError):
        await c.deploy_model("m", 1, "doubles", fake.echo)


async def test_stop_model_after_stop_does_nothing() -> None:
    """stop_model after stop() returns quietly, for known and unknown names alike."""
    async with Clipper() as c:
        await c.deploy_model("m", 1, "doubles", fake.echo)
    await c.stop_model("m")
    await c.stop_model("m", 1)
    await c.stop_model("never-deployed")


@pytest.mark.parametrize(
    "options",
    [
        {"cache_size": -1},
        {"cache_size": "big"},
        {"cache_size": True},
        {"shutdown_grace_s": -1.0},
        {"shutdown_grace_s": float("nan")},
    ],
)
def test_nonsense_configuration_raises_clipper_error(options: dict[str, Any]) -> None:
    """Clipper(...) with a nonsense option raises ClipperError naming the option."""
    with pytest.raises(ClipperError, match=next(iter(options))):
        Clipper(**options)


def test_configuration_is_keyword_only() -> None:
    """Clipper's options are keyword-only."""
    with pytest.raises(TypeError):
        Clipper(100)  # type: ignore[misc]


# -- records and errors -----------------------------------------------------------------


async def test_prediction_is_a_frozen_dataclass(clipper: Clipper) -> None:
    """Prediction is a frozen dataclass with query_id, output, default, default_explanation."""
    await clipper.create_endpoint("app", "doubles", fake.constant(3.0))
    p = await clipper.predict("app", [1.0])
    assert isinstance(p, Prediction)
    assert dataclasses.is_dataclass(p)
    names = {f.name for f in dataclasses.fields(p)}
    assert {"query_id", "output", "default", "default_explanation"} <= names
    assert isinstance(p.query_id, int)
    assert (p.output, p.default, p.default_explanation) == (3.0, False, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.output = 4.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("InvalidInputError", ValueError),
        ("UnknownApplicationError", KeyError),
        ("UnknownModelError", KeyError),
        ("AlreadyExistsError", None),
        ("ClipperClosedError", None),
    ],
)
def test_errors_are_importable_clipper_errors(name: str, builtin: type | None) -> None:
    """Every error is exported by clipperlite, subclasses ClipperError and its builtin."""
    cls = getattr(clipperlite, name)
    assert name in clipperlite.__all__
    assert issubclass(cls, ClipperError)
    assert issubclass(ClipperError, Exception)
    if builtin is not None:
        assert issubclass(cls, builtin)


# -- getters ----------------------------------------------------------------------------


async def test_getters_return_json_serialisable_plain_values(clipper: Clipper) -> None:
    """Every get_* getter and metrics() return values that json.dumps accepts."""
    clipper.register_application("app", "doubles", -1.0, 100_000, policy="exp4")
    await clipper.deploy_model("a", 1, "doubles", fake.constant(1.0), num_replicas=2)
    await clipper.deploy_model("b", "v1", "doubles", fake.flaky(fail_every=2))
    clipper.link_model_to_app("app", "a")
    clipper.link_model_to_app("app", "b")
    for i in range(6):
        await clipper.predict("app", [float(i)])
    clipper.register_application("empty", "doubles", 0.0, 100_000)
    await clipper.predict("empty", [1.0])
    values = [
        clipper.get_all_apps(),
        clipper.get_all_apps(verbose=True),
        clipper.get_app_info("app"),
        clipper.get_all_models(),
        clipper.get_all_models(verbose=True),
        clipper.get_model_info("a"),
        clipper.get_model_info("b", "v1"),
        clipper.get_linked_models("app"),
        clipper.get_current_model_version("b"),
        clipper.get_num_replicas("a"),
        clipper.metrics(),
    ]
    json.dumps(values)
    assert clipper.get_all_apps() == ["app", "empty"]
    assert clipper.get_all_models() == ["a", "b"]
    assert clipper.get_linked_models("app") == ["a", "b"]
    assert clipper.get_current_model_version("b") == "v1"
    assert clipper.get_num_replicas("a") == 2


async def test_getters_return_copies(clipper: Clipper) -> None:
    """Mutating what a getter returned does not change the Clipper's tables."""
    await clipper.create_endpoint("app", "doubles", fake.echo)
    clipper.get_linked_models("app").append("intruder")
    clipper.get_all_apps().append("intruder")
    clipper.get_app_info("app")["linked_models"].append("intruder")
    assert clipper.get_linked_models("app") == ["app"]
    assert clipper.get_all_apps() == ["app"]


async def test_two_clippers_never_share_state() -> None:
    """Two Clippers in one process keep their own apps, models and cache."""
    m1 = fake.counting(fake.constant("one"))
    m2 = fake.counting(fake.constant("two"))
    async with Clipper() as c1, Clipper() as c2:
        await c1.create_endpoint("app", "doubles", m1)
        await c2.create_endpoint("app", "doubles", m2)
        c1.register_application("only-in-1", "doubles", 0.0, 100_000)
        for _ in range(2):
            assert (await c1.predict("app", [1.0])).output == "one"
            assert (await c2.predict("app", [1.0])).output == "two"
        assert m1.calls == 1
        assert m2.calls == 1
        assert "only-in-1" not in c2.get_all_apps()
        with pytest.raises(UnknownApplicationError):
            await c2.predict("only-in-1", [1.0])
        await c1.stop()
        assert (await c2.predict("app", [2.0])).output == "two"
        assert c2.metrics()["apps"]["app"]["queries"] == 3


# -- shutdown ---------------------------------------------------------------------------


async def test_stop_with_hung_model_is_bounded_and_answers_waiting_queries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop() with a hung thread model returns within the grace and answers every waiter."""
    release = threading.Event()
    model = fake.counting(fake.hang(release))
    c = await Clipper(shutdown_grace_s=0.2).start()
    try:
        await c.create_endpoint("app", "doubles", model, slo_micros=30_000_000, batch_size=1)
        running = asyncio.ensure_future(c.predict("app", [1.0]))
        await wait_until(lambda: model.calls == 1)
        queued = [asyncio.ensure_future(c.predict("app", [float(i)])) for i in (2, 3)]
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING):
            await c.stop()
        assert time.monotonic() - t0 < 0.2 + 1.0
        results = await asyncio.wait_for(
            asyncio.gather(running, *queued, return_exceptions=True), 1.0
        )
        for r in results:
            if isinstance(r, Prediction):
                assert r.default
                assert "app" in (r.default_explanation or "")
                assert "shut" in (r.default_explanation or "").lower()
            else:
                assert isinstance(r, ClipperClosedError)
        assert model.calls == 1
        assert c.metrics()["abandoned_threads"] >= 1
        assert any(rec.levelno == logging.WARNING for rec in caplog.records)
    finally:
        release.set()
        await c.stop()


async def test_shutdown_default_names_app_and_model() -> None:
    """A query in flight when stop() runs gets the default, saying the Clipper shuts down."""
    release = threading.Event()
    model = fake.counting(fake.hang(release))
    c = await Clipper(shutdown_grace_s=0.1).start()
    try:
        c.register_application("app", "doubles", -1.0, 30_000_000)
        await c.deploy_model("model-x", 1, "doubles", model)
        c.link_model_to_app("app", "model-x")
        query = asyncio.ensure_future(c.predict("app", [1.0]))
        await wait_until(lambda: model.calls == 1)
        await c.stop()
        p = await asyncio.wait_for(query, 1.0)
        assert p.default
        assert p.output == -1.0
        text = p.default_explanation or ""
        assert "'app'" in text
        assert "model-x" in text
        assert "shut" in text.lower()
        stats = c.metrics()["apps"]["app"]
        assert stats["queries"] == 1
        assert sum(stats["defaults"].values()) == 1
    finally:
        release.set()


async def test_no_thread_left_after_stop() -> None:
    """After stop(), well-behaved models leave no thread behind (daemon or not)."""
    before = set(threading.enumerate())
    async with Clipper() as c:
        await c.create_endpoint("a", "doubles", fake.echo, num_replicas=3)
        await c.create_endpoint("b", "strings", fake.slow(0.01), num_replicas=2)
        await c.predict_batch("a", [[float(i)] for i in range(20)])
        await c.predict_batch("b", [str(i) for i in range(5)])
        await c.set_num_replicas("a", 1)
        await c.stop_model("b")
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []
    assert not [t for t in threading.enumerate() if not t.daemon and t not in before]


async def test_no_task_left_after_stop() -> None:
    """After stop(), no task the Clipper started is still pending on the loop."""
    before = asyncio.all_tasks()
    async with Clipper() as c:
        await c.create_endpoint("a", "doubles", fake.echo, num_replicas=2)
        await c.create_endpoint("b", "doubles", fake.async_slow(0.01))
        await c.predict_batch("a", [[float(i)] for i in range(10)])
        await c.predict("b", [1.0])
    for _ in range(3):
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == []


async def test_stop_with_a_hung_async_model_is_bounded() -> None:
    """stop() with a forever-awaiting async model returns within the grace; the query ends."""
    never = asyncio.Event()
    started = asyncio.Event()

    async def model(xs: list[Any]) -> list[Any]:
        started.set()
        await never.wait()
        return list(xs)

    c = await Clipper(shutdown_grace_s=0.2).start()
    await c.create_endpoint("app", "doubles", model, slo_micros=30_000_000)
    query = asyncio.ensure_future(c.predict("app", [1.0]))
    await asyncio.wait_for(started.wait(), 5.0)
    t0 = time.monotonic()
    await c.stop()
    assert time.monotonic() - t0 < 0.2 + 1.0
    done, _ = await asyncio.wait([query], timeout=1.0)
    assert done
    if query.exception() is None:
        assert query.result().default
    else:
        assert isinstance(query.exception(), ClipperClosedError)
