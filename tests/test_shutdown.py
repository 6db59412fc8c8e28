"""Shutdown: stop() answers everything, is idempotent, is bounded and leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from clipperlite import Clipper, ClipperClosedError, ClipperError, Prediction
from helpers import (
    async_model,
    clipperlite_tasks,
    clipperlite_threads,
    eventually,
    sync_model,
    worker_processes,
)

GRACE = 1.0
#: stop() may take the grace period plus this much (thread joins, process teardown).
MARGIN = 1.5


# -- what clipperlite may leave behind ------------------------------------------------------
def release_leaked(prefix: str, before: set[int]) -> None:
    """Clean up after a known leak, touching only what this test started: kill its
    worker processes and tell its orphaned replica threads to exit."""
    import gc

    from clipperlite._backends._thread import ThreadReplica

    for pid in set(worker_processes()) - before:
        os.kill(pid, signal.SIGKILL)
    for obj in gc.get_objects():
        if isinstance(obj, ThreadReplica) and obj.name.startswith(prefix) and obj.alive:
            obj._inbox.put(None)
    for t in threading.enumerate():
        if t.name.startswith(prefix):
            t.join(timeout=3)


def leftovers() -> dict[str, list[Any]]:
    found = {
        "threads": clipperlite_threads(),
        "tasks": clipperlite_tasks(),
        "processes": worker_processes(),
    }
    return {k: v for k, v in found.items() if v}


@pytest.fixture
def release() -> Any:
    """An event hung models wait on; set at teardown so no test leaves a thread stuck."""
    event = threading.Event()
    yield event
    event.set()
    for t in threading.enumerate():
        if t.name.startswith("clipperlite"):
            t.join(timeout=5)


# -- models -----------------------------------------------------------------------------------
def model_for(backend: str, seconds: float) -> Any:
    return async_model(seconds) if backend == "async" else sync_model(seconds)


BACKENDS = ["thread", "async", "process"]


async def loaded(
    backend: str, seconds: float, *, replicas: int = 2, queued: int = 20
) -> tuple[Clipper, list[asyncio.Task[Prediction]]]:
    """A running Clipper whose model is busy with batches and has queries queued."""
    clipper = await Clipper(shutdown_grace_s=GRACE).start()
    await clipper.create_endpoint(
        "s",
        "doubles",
        model_for(backend, seconds),
        default_output=-1.0,
        slo_micros=30_000_000,
        backend=backend,
        num_replicas=replicas,
        batch_size=2,
    )
    tasks = [asyncio.create_task(clipper.predict("s", [float(i)])) for i in range(queued)]
    await asyncio.sleep(0.05)  # batches are running, the rest queued
    return clipper, tasks


# -- stop() answers everything, within the grace period ----------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_stop_resolves_everything_in_flight(backend: str) -> None:
    """stop() resolves every query in flight within the grace period; nothing raises."""
    clipper, tasks = await loaded(backend, 0.3)
    t0 = time.perf_counter()
    await clipper.stop()
    took = time.perf_counter() - t0
    assert took < GRACE + MARGIN
    assert all(t.done() for t in tasks)
    ps = [t.result() for t in tasks]
    answered = [p for p in ps if not p.default]
    shut = [p for p in ps if p.default]
    assert len(answered) >= 2  # the batches running when stop() came finished
    assert [p.output for p in answered] == [float(i) for i in range(len(answered))]
    assert len(shut) >= 10
    for p in shut:
        assert p.default_explanation is not None
        assert p.default_explanation.startswith("app 's': ")
        assert "shutting down" in p.default_explanation
    m = clipper.metrics()
    assert m["state"] == "closed"
    assert m["apps"]["s"]["defaults"] == {"shutdown": len(shut)}
    assert m["apps"]["s"]["queries"] == len(tasks)
    assert m["abandoned_threads"] == 0
    assert leftovers() == {}


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_stop_leaves_no_thread_task_or_process(backend: str) -> None:
    """After stop() no clipperlite thread, pending task or worker process is left."""
    async with Clipper(shutdown_grace_s=GRACE) as clipper:
        await clipper.create_endpoint(
            "s",
            "doubles",
            model_for(backend, 0.001),
            default_output=-1.0,
            backend=backend,
            num_replicas=2,
        )
        await clipper.deploy_model("s", 2, "doubles", model_for(backend, 0.001), backend=backend)
        await clipper.deploy_model("z", 1, "doubles", model_for(backend, 0), num_replicas=0)
        assert (await clipper.predict("s", [1.0])).output == 1.0
        await clipper.set_num_replicas("s", 3)
        await clipper.set_num_replicas("s", 1, version=1)
        assert clipperlite_threads() or backend == "async"
        if backend == "process":
            assert len(worker_processes()) == 1 + 3
    assert leftovers() == {}
    assert clipper.metrics()["abandoned_threads"] == 0


# -- idempotence -------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_stop_is_idempotent_also_concurrently() -> None:
    """Concurrent stop() calls all return once the Clipper is stopped, within the grace."""
    clipper, tasks = await loaded("thread", 0.3)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(clipper.stop() for _ in range(5)), return_exceptions=True)
    assert results == [None] * 5
    assert time.perf_counter() - t0 < GRACE + MARGIN
    assert leftovers() == {}
    assert all(t.done() for t in tasks)
    await clipper.stop()
    await clipper.aclose()
    assert not clipper.running


@pytest.mark.anyio
async def test_a_stopped_clipper_refuses_work_and_never_restarts() -> None:
    """A stopped Clipper refuses queries and deployments, never restarts, still reports."""
    clipper = await Clipper().start()
    await clipper.create_endpoint("s", "doubles", sync_model(0), default_output=-1.0)
    await clipper.stop()
    with pytest.raises(ClipperClosedError):
        await clipper.predict("s", [1.0])
    with pytest.raises(ClipperClosedError):
        await clipper.predict_batch("s", [[1.0]])
    with pytest.raises(ClipperClosedError):
        await clipper.feedback("s", [1.0], 1.0)
    with pytest.raises(ClipperClosedError):
        await clipper.deploy_model("t", 1, "doubles", sync_model(0))
    with pytest.raises(ClipperError):
        await clipper.start()
    await clipper.stop_model("s")
    assert clipper.metrics()["state"] == "closed"


@pytest.mark.anyio
async def test_stop_before_start() -> None:
    """A Clipper never started stops at once, and then cannot start."""
    clipper = Clipper()
    await clipper.stop()
    await clipper.stop()
    with pytest.raises(ClipperError):
        await clipper.start()


@pytest.mark.anyio
async def test_stop_after_a_cancelled_stop_waits_for_the_shutdown() -> None:
    """After a cancelled stop(), a later stop() returns only when the shutdown is complete."""
    clipper, tasks = await loaded("thread", 0.5, replicas=1, queued=3)
    with pytest.raises(asyncio.TimeoutError):  # builtin TimeoutError from 3.11 on
        await asyncio.wait_for(clipper.stop(), 0.05)
    await clipper.stop()
    assert all(t.done() for t in tasks)
    assert leftovers() == {}


@pytest.mark.anyio
async def test_stop_during_deploy_leaves_nothing() -> None:
    """stop() while a process replica starts fails the deployment and leaves no worker."""
    clipper = await Clipper(shutdown_grace_s=GRACE).start()
    deploy = asyncio.create_task(
        clipper.deploy_model("p", 1, "doubles", sync_model(0), backend="process")
    )
    await asyncio.sleep(0.05)
    await clipper.stop()
    with pytest.raises(ClipperError):
        await deploy
    assert await eventually(lambda: not leftovers(), timeout=2.0)


# -- hung models ---------------------------------------------------------------------------------
def hung_thread_model(release: threading.Event) -> Callable[[list[Any]], list[float]]:
    def model(xs: list[Any]) -> list[float]:
        release.wait(30)
        return [float(x[0]) for x in xs]

    return model


def hung_process_model() -> Callable[[list[Any]], list[float]]:
    def model(xs: list[Any]) -> list[float]:
        import time

        time.sleep(60)
        return [float(x[0]) for x in xs]

    return model


async def hung_async_model(xs: list[Any]) -> list[float]:
    await asyncio.sleep(60)
    return [float(x[0]) for x in xs]


@pytest.mark.anyio
async def test_hung_thread_is_abandoned_and_counted(
    release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """A hung thread is abandoned, logged and counted; stop() returns within grace + margin."""
    clipper = await Clipper(shutdown_grace_s=GRACE).start()
    await clipper.create_endpoint(
        "h", "doubles", hung_thread_model(release), default_output=-1.0, slo_micros=30_000_000
    )
    stuck = asyncio.create_task(clipper.predict("h", [1.0]))
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="clipperlite"):
        t0 = time.perf_counter()
        await clipper.stop()
        took = time.perf_counter() - t0
    assert GRACE * 0.9 <= took < GRACE + MARGIN
    p = stuck.result()
    assert p.default
    assert "shutting down" in (p.default_explanation or "")
    assert clipper.metrics()["abandoned_threads"] == 1
    assert any("abandon" in r.getMessage() for r in caplog.records)
    assert clipperlite_tasks() == []  # the thread is abandoned, its task is not left pending
    release.set()
    assert await eventually(lambda: not clipperlite_threads(), timeout=3.0)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["async", "process"])
async def test_hung_async_or_process_model_is_stopped(backend: str) -> None:
    """A hung async model is cancelled, a hung worker process killed, within the grace."""
    func = hung_async_model if backend == "async" else hung_process_model()
    clipper = await Clipper(shutdown_grace_s=GRACE).start()
    await clipper.create_endpoint(
        "h", "doubles", func, default_output=-1.0, slo_micros=30_000_000, backend=backend
    )
    stuck = asyncio.create_task(clipper.predict("h", [1.0]))
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    await clipper.stop()
    assert time.perf_counter() - t0 < GRACE + MARGIN
    assert stuck.result().default
    assert clipper.metrics()["abandoned_threads"] == 0
    assert leftovers() == {}


async def _replaced(clipper: Clipper, name: str) -> AsyncIterator[None]:
    """Yield (once) as soon as the watchdog has begun replacing a replica of `name`."""
    for _ in range(1000):
        if clipper.metrics()["models"][name]["1"]["replaced_replicas"]:
            yield
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the watchdog never replaced the hung replica")


@pytest.mark.anyio
async def test_stop_after_watchdog_replaced_a_hung_thread(release: threading.Event) -> None:
    """After the watchdog replaced a hung thread replica, stop() leaves no task pending."""
    clipper = await Clipper(shutdown_grace_s=GRACE, hang_timeout_s=0.3).start()
    await clipper.create_endpoint(
        "h", "doubles", hung_thread_model(release), default_output=-1.0, slo_micros=100_000
    )
    assert (await clipper.predict("h", [1.0])).default
    async for _ in _replaced(clipper, "h"):
        pass
    await asyncio.sleep(0.1)  # the replacement is running
    await clipper.stop()
    assert clipper.metrics()["abandoned_threads"] == 1
    assert clipperlite_tasks() == []


@pytest.mark.anyio
async def test_stop_during_watchdog_replacement_leaves_nothing() -> None:
    """stop() during a watchdog replacement leaves neither worker process behind."""
    before = set(worker_processes())
    try:
        clipper = await Clipper(shutdown_grace_s=GRACE, hang_timeout_s=0.3).start()
        await clipper.create_endpoint(
            "h",
            "doubles",
            hung_process_model(),
            default_output=-1.0,
            slo_micros=100_000,
            backend="process",
        )
        assert (await clipper.predict("h", [1.0])).default
        async for _ in _replaced(clipper, "h"):
            await clipper.stop()  # the new worker process is still starting
        assert await eventually(lambda: not leftovers(), timeout=3.0), leftovers()
    finally:
        release_leaked("clipperlite:h:1:", before)
