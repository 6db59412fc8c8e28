"""Concurrent configuration, odd model behaviour and misuse, found by review: each
case once let a query hang, leaked a worker or broke the contract."""

from __future__ import annotations

import asyncio
import pickle
import threading
from typing import Any

import pytest

from clipperlite import (
    AlreadyExistsError,
    Clipper,
    ClipperClosedError,
    ClipperError,
    Exp4,
    InvalidInputError,
    UnknownApplicationError,
    UnknownModelError,
)
from clipperlite import testing as fake
from helpers import app_stats, clipperlite_threads, eventually, first, worker_processes

pytestmark = pytest.mark.anyio


class Boom(BaseException):
    """Not an Exception: what a careless model might raise."""


async def test_an_async_model_raising_a_base_exception_keeps_its_replica(clipper: Clipper) -> None:
    """An async model raising a BaseException (here SystemExit) costs that query a default
    naming it; the next query is answered by the same replica."""
    calls = 0

    async def model(xs: list[Any]) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SystemExit(3)
        return [first(x) for x in xs]

    await clipper.create_endpoint("a", "doubles", model, default_output=-1.0)
    bad = await clipper.predict("a", [1.0])
    assert bad.default and "SystemExit" in (bad.default_explanation or "")
    good = await clipper.predict("a", [2.0])
    assert not good.default and good.output == 2.0
    assert clipper.get_num_replicas("a") == 1


async def test_concurrent_first_deploys_cannot_mix_input_types(clipper: Clipper) -> None:
    """Two deploys of one model name racing with different input types: one is refused."""
    results = await asyncio.gather(
        clipper.deploy_model("m", 1, "doubles", fake.echo),
        clipper.deploy_model("m", 2, "strings", fake.echo),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], ClipperError) and "strings" in str(results[1])
    assert clipper.get_model_info("m")["input_type"] == "doubles"


async def test_stopping_the_current_version_falls_back_at_once(clipper: Clipper) -> None:
    """While a current version is being stopped (its batch still running), queries go to
    the previous version straight away instead of getting defaults."""
    await clipper.deploy_model("m", 1, "doubles", fake.constant(1.0))
    await clipper.deploy_model("m", 2, "doubles", fake.slow(0.5, fake.constant(2.0)))
    clipper.register_application("a", "doubles", -1.0, 2_000_000)
    clipper.link_model_to_app("a", "m")
    in_flight = asyncio.create_task(clipper.predict("a", [9.0]))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(clipper.stop_model("m", 2))
    await asyncio.sleep(0)
    during = await clipper.predict("a", [1.0])
    assert not during.default and during.output == 1.0
    assert clipper.get_current_model_version("m") == 1
    await stopping
    assert (await in_flight).output == 2.0


async def test_a_late_batch_of_a_stopped_deployment_is_not_served_by_its_successor(
    clipper: Clipper,
) -> None:
    """Redeploying a stopped version: a batch of the old deployment finishing late does not
    put its output in the cache for the new one."""
    await clipper.deploy_model("m", 1, "doubles", fake.slow(0.3, fake.constant("old")))
    clipper.register_application("a", "doubles", None, 2_000_000)
    clipper.link_model_to_app("a", "m")
    in_flight = asyncio.create_task(clipper.predict("a", [1.0]))
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(clipper.stop_model("m"))
    await asyncio.sleep(0)
    await clipper.deploy_model("m", 1, "doubles", fake.constant("new"))
    assert (await in_flight).output == "old"
    await stopping
    assert (await clipper.predict("a", [1.0])).output == "new"


async def test_process_backend_refuses_an_async_model(clipper: Clipper) -> None:
    """An async def cannot run in a worker process: the deploy says so."""
    with pytest.raises(ClipperError, match="async def"):
        await clipper.deploy_model("m", 1, "doubles", fake.async_slow(0.0), backend="process")


async def test_a_failed_create_endpoint_stops_only_what_it_made(clipper: Clipper) -> None:
    """create_endpoint failing after another version of the same name was deployed leaves
    that version alone."""
    await clipper.deploy_model("x", 2, "doubles", fake.echo)
    with pytest.raises(AlreadyExistsError):
        await clipper.create_endpoint("x", "doubles", fake.echo)
    assert clipper.get_all_models() == ["x"]
    with pytest.raises(UnknownApplicationError):
        clipper.get_app_info("x")


async def test_a_link_whose_init_state_raises_is_not_made(clipper: Clipper) -> None:
    """A policy whose init_state raises on a new link: ClipperError chained to the cause,
    and the app keeps its old links."""

    class OneModelOnly(Exp4):
        def init_state(self, models: list[str], previous: Any = None) -> dict[str, Any]:
            if len(models) > 1:
                raise RuntimeError("only one model please")
            return super().init_state(models, previous)

    await clipper.deploy_model("m1", 1, "doubles", fake.echo)
    await clipper.deploy_model("m2", 1, "doubles", fake.echo)
    clipper.register_application("a", "doubles", None, 100_000, policy=OneModelOnly())
    clipper.link_model_to_app("a", "m1")
    await clipper.predict("a", [1.0])  # the app now has state
    with pytest.raises(ClipperError, match="only one model") as info:
        clipper.link_model_to_app("a", "m2")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert clipper.get_linked_models("a") == ["m1"]
    assert not (await clipper.predict("a", [2.0])).default


async def test_racing_scaling_calls_end_with_the_last_one(clipper: Clipper) -> None:
    """set_num_replicas(4) racing with a later set_num_replicas(0): the later one wins."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    up = asyncio.create_task(clipper.set_num_replicas("m", 4))
    await asyncio.sleep(0)
    await clipper.set_num_replicas("m", 0)
    assert clipper.get_num_replicas("m") == 0
    await up
    assert clipper.get_num_replicas("m") == 0


async def test_scaling_while_stopping_leaves_no_thread() -> None:
    """A scale-up still starting replicas when stop() comes leaves no thread behind."""
    clipper = await Clipper().start()
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    up = asyncio.create_task(clipper.set_num_replicas("m", 4))
    await asyncio.sleep(0)
    await clipper.stop()
    await up
    assert clipperlite_threads() == []


async def test_scaling_down_mid_batch_is_explained_as_such() -> None:
    """A batch cut short by set_num_replicas(0) is explained as a scale-down, not as the
    Clipper shutting down."""
    async with Clipper(shutdown_grace_s=0.1) as clipper:
        await clipper.create_endpoint(
            "a", "doubles", fake.async_slow(1.0), default_output=-1.0, slo_micros=5_000_000
        )
        query = asyncio.create_task(clipper.predict("a", [1.0]))
        await asyncio.sleep(0.05)
        await clipper.set_num_replicas("a", 0)
        p = await query
        assert p.default and "scaled down" in (p.default_explanation or "")
        assert app_stats(clipper, "a")["defaults"] == {"no_replica": 1}


async def test_a_policy_class_is_refused_with_a_hint(clipper: Clipper) -> None:
    """Passing the class Exp4 instead of an instance is a ClipperError saying what to do."""
    with pytest.raises(ClipperError, match=r"Exp4\(\)"):
        clipper.register_application("a", "doubles", None, 100_000, policy=Exp4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [("i", "integers"), ("f", "floats"), ("d", "doubles"), ("b", "bytes"), ("s", "strings")],
)
def test_clippers_one_letter_aliases_are_accepted(alias: str, expected: str) -> None:
    """Clipper's one-letter input type names are accepted."""
    c = Clipper()
    c.register_application("a", alias, None, 100_000)
    assert c.get_app_info("a")["input_type"] == expected


@pytest.mark.parametrize(
    "error",
    [
        UnknownApplicationError("no app", app="a"),
        UnknownModelError("no model", model="m", version="1"),
        AlreadyExistsError("taken", name="n"),
        InvalidInputError("bad", app="a", input_type="doubles"),
    ],
)
def test_errors_survive_pickling_with_their_attributes(error: Exception) -> None:
    """Errors cross process boundaries (pools, queue logging) intact."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


class _SlowToLoad:
    """A model whose loading in a worker process takes 30 s (a hung model load)."""

    def __call__(self, xs: list[Any]) -> list[Any]:
        return xs

    def __reduce__(self) -> tuple[Any, ...]:
        import time

        return (time.sleep, (30,))


async def test_stop_is_bounded_while_a_replica_is_still_loading() -> None:
    """stop() during a deployment whose worker never finishes loading returns within the
    grace period; the deployment fails with ClipperClosedError and no worker is left."""
    clipper = await Clipper(shutdown_grace_s=0.3).start()
    deploy = asyncio.create_task(
        clipper.deploy_model("m", 1, "doubles", _SlowToLoad(), backend="process")
    )
    await asyncio.sleep(0.3)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(clipper.stop(), 5)
    assert asyncio.get_running_loop().time() - started < 0.3 + 1.5
    with pytest.raises(ClipperClosedError):
        await deploy
    assert await eventually(lambda: not worker_processes() and not clipperlite_threads())


async def test_stop_waits_for_a_concurrent_stop_model() -> None:
    """stop() while stop_model() is letting a batch finish: stop() returns only when that
    version's replicas are gone, and the running query gets its answer."""
    clipper = await Clipper(shutdown_grace_s=3.0).start()
    await clipper.create_endpoint(
        "a", "doubles", fake.slow(0.5, fake.constant(7.0)), slo_micros=5_000_000
    )
    query = asyncio.create_task(clipper.predict("a", [1.0]))
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(clipper.stop_model("a"))
    await asyncio.sleep(0)
    await clipper.stop()
    assert clipperlite_threads() == []
    await stopping
    assert (await query).output == 7.0


async def test_scaling_down_past_a_hung_replica_abandons_only_that_one() -> None:
    """set_num_replicas(0) with one replica hung: only the hung thread is counted as
    abandoned; the idle ones stop cleanly."""
    release = threading.Event()
    try:
        async with Clipper(shutdown_grace_s=0.3) as clipper:
            await clipper.create_endpoint(
                "a", "doubles", fake.hang(release), num_replicas=4, batch_size=1
            )
            query = asyncio.create_task(clipper.predict("a", [1.0]))
            await asyncio.sleep(0.05)
            await clipper.set_num_replicas("a", 0)
            assert clipper.metrics()["models"]["a"]["1"]["abandoned_threads"] == 1
            assert (await query).default
    finally:
        release.set()


async def test_the_watchdog_does_not_overshoot_a_concurrent_scale_up() -> None:
    """A hung replica replaced while set_num_replicas(4) runs: 4 replicas, not 5."""
    release = threading.Event()
    try:
        async with Clipper(hang_timeout_s=0.2, shutdown_grace_s=0.3) as clipper:
            await clipper.create_endpoint(
                "a", "doubles", fake.hang(release), default_output=-1.0, slo_micros=50_000
            )
            assert (await clipper.predict("a", [1.0])).default
            await clipper.set_num_replicas("a", 4)
            await asyncio.sleep(0.6)  # the watchdog has replaced the hung one by now
            assert clipper.metrics()["models"]["a"]["1"]["replaced_replicas"] >= 1
            assert clipper.get_num_replicas("a") == 4
    finally:
        release.set()
