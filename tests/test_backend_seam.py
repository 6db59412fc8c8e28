"""`backend=`: the built-in names, any object implementing the public `Backend` protocol,
names found through the `clipperlite.backends` entry points, and clear errors otherwise."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata
from typing import Any

import pytest

from clipperlite import Backend, BatchResult, Clipper, ClipperError, Replica, WorkerDiedError

pytestmark = pytest.mark.anyio


def _double(xs: list[Any]) -> list[float]:
    return [2.0 * float(x[0]) for x in xs]


class InlineReplica:
    """Runs the model right on the loop (fine for a test's trivial model)."""

    def __init__(self, func: Any, log: list[str]) -> None:
        self.func = func
        self.log = log
        self.die_next = False

    async def run_batch(self, inputs: list[Any]) -> BatchResult:
        if self.die_next:
            self.die_next = False
            raise WorkerDiedError("the test killed it")
        started = time.perf_counter()
        outputs = self.func(inputs)
        return BatchResult(outputs, time.perf_counter() - started)

    async def stop(self, grace_s: float) -> bool:
        self.log.append("stopped")
        return True


class InlineBackend:
    """A user-written backend."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.log: list[str] = []
        self.replicas: list[InlineReplica] = []

    async def start_replica(self, func: Any, *, name: str) -> Replica:
        self.log.append(f"start {name}")
        replica = InlineReplica(func, self.log)
        self.replicas.append(replica)
        return replica


def test_the_protocols_are_runtime_checkable() -> None:
    """A user's backend and replica satisfy the public protocols."""
    backend = InlineBackend()
    assert isinstance(backend, Backend)
    assert isinstance(InlineReplica(_double, []), Replica)
    assert not isinstance(object(), Backend)


async def test_a_backend_object_serves_and_is_stopped() -> None:
    """deploy_model(backend=obj) starts replicas through it, serves, reports its name."""
    backend = InlineBackend()
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", _double, backend=backend, num_replicas=2)
        assert (await clipper.predict("a", [2.0])).output == 4.0
        assert clipper.get_model_info("a")["backend"] == "InlineBackend"
        backend.replicas[0].die_next = backend.replicas[1].die_next = True
        for x in (3.0, 4.0):  # one per replica, whichever takes it
            p = await clipper.predict("a", [x])
            assert p.default and p.default_cause == "worker_died"
            assert "the test killed it" in (p.default_explanation or "")
        assert (await clipper.predict("a", [5.0])).output == 10.0
    assert backend.log.count("stopped") == 2
    assert sum(entry.startswith("start clipperlite:a:1:") for entry in backend.log) == 2


async def test_unknown_and_misused_backends_say_what_to_do() -> None:
    """An unknown name lists the available ones; a class, a non-backend or options with an
    object are refused with the fix; a built-in rejects options it does not take."""
    async with Clipper() as clipper:
        with pytest.raises(ClipperError, match=r"unknown backend 'gpu'.*thread"):
            await clipper.deploy_model("m", 1, "doubles", _double, backend="gpu")
        with pytest.raises(ClipperError, match="not the class InlineBackend"):
            await clipper.deploy_model("m", 1, "doubles", _double, backend=InlineBackend)
        with pytest.raises(ClipperError, match="start_replica"):
            await clipper.deploy_model("m", 1, "doubles", _double, backend=42)
        with pytest.raises(ClipperError, match="backend_options go with a backend name"):
            await clipper.deploy_model(
                "m", 1, "doubles", _double, backend=InlineBackend(), backend_options={"x": 1}
            )
        with pytest.raises(ClipperError, match="takes no backend_options"):
            await clipper.deploy_model(
                "m", 1, "doubles", _double, backend="thread", backend_options={"num_cpus": 1}
            )
        assert clipper.get_all_models() == []


class _FakeEntryPoint:
    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self.target = target

    def load(self) -> Any:
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


def _with_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: _FakeEntryPoint) -> None:
    real = metadata.entry_points

    def entry_points(**kw: Any) -> Any:
        if kw.get("group") == "clipperlite.backends":
            return list(eps)
        return real(**kw)

    monkeypatch.setattr(metadata, "entry_points", entry_points)


async def test_backend_names_resolve_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name in the clipperlite.backends group is loaded and called with backend_options."""
    made: list[InlineBackend] = []

    def factory(**options: Any) -> InlineBackend:
        made.append(InlineBackend(**options))
        return made[-1]

    _with_entry_points(monkeypatch, _FakeEntryPoint("inline", factory))
    async with Clipper() as clipper:
        await clipper.create_endpoint(
            "a", "doubles", _double, backend="inline", backend_options={"num_cpus": 1}
        )
        assert (await clipper.predict("a", [1.5])).output == 3.0
        assert clipper.get_model_info("a")["backend"] == "inline"
    assert made[0].options == {"num_cpus": 1}


async def test_a_missing_extra_names_its_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend="ray" without the extra (no entry point, or one whose import fails) says
    which pip install is missing."""
    async with Clipper() as clipper:
        _with_entry_points(monkeypatch)
        with pytest.raises(ClipperError, match=r"pip install 'clipperlite\[ray\]'"):
            await clipper.deploy_model("m", 1, "doubles", _double, backend="ray")
        _with_entry_points(monkeypatch, _FakeEntryPoint("ray", ImportError("No module 'ray'")))
        with pytest.raises(ClipperError, match=r"pip install 'clipperlite\[ray\]'"):
            await clipper.deploy_model("m", 1, "doubles", _double, backend="ray")


class SlowBackend(InlineBackend):
    """A backend whose replicas take a while to start (a big model loading)."""

    async def start_replica(self, func: Any, *, name: str) -> Replica:
        await asyncio.sleep(0.2)
        return await super().start_replica(func, name=name)


async def test_a_slow_replica_start_logs_its_progress(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica still starting after SLOW_START_LOG_S is logged at INFO with what it
    waits for, and again when it is ready."""
    from clipperlite import _defaults

    monkeypatch.setattr(_defaults, "SLOW_START_LOG_S", 0.05)
    caplog.set_level(logging.INFO, logger="clipperlite")
    async with Clipper() as clipper:
        await clipper.deploy_model("big", 1, "doubles", _double, backend=SlowBackend())
    messages = [r.getMessage() for r in caplog.records if r.name == "clipperlite"]
    assert any(
        "deploying model 'big' version 1: starting replica 1 of 1 (SlowBackend backend)" in m
        for m in messages
    ), messages
    assert any("replica 1 of 1 ready after" in m for m in messages), messages


class _CancelsOnce:
    """A replica whose first batch raises CancelledError (a remote call cancelled on the
    far side), though nothing cancelled the batch."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.calls = 0

    async def run_batch(self, inputs: list[Any]) -> BatchResult:
        self.calls += 1
        if self.calls == 1:
            raise asyncio.CancelledError
        return BatchResult(self.func(inputs), 0.0)

    async def stop(self, grace_s: float) -> bool:
        return True


class _CancelsOnceBackend:
    async def start_replica(self, func: Any, *, name: str) -> Replica:
        return _CancelsOnce(func)


@pytest.mark.skipif(
    not hasattr(asyncio.Task, "cancelling"),
    reason="Python 3.10 cannot tell a replica's CancelledError from its task's (Task.cancelling)",
)
async def test_a_replica_raising_cancelled_error_is_a_model_error_and_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CancelledError a replica raises on its own is its batch's model_error, logged;
    the replica serves on (its serve loop used to end, silently, and every later query
    waited out its deadline)."""
    async with Clipper() as clipper:
        await clipper.create_endpoint(
            "a",
            "doubles",
            _double,
            default_output=-1.0,
            slo_micros=2_000_000,
            backend=_CancelsOnceBackend(),
        )
        with caplog.at_level(logging.WARNING, logger="clipperlite"):
            bad = await clipper.predict("a", [1.0])
        after = [await clipper.predict("a", [float(i)]) for i in range(2, 5)]
        stats = clipper.metrics()["models"]["a"]["1"]
    assert bad.default_cause == "model_error", bad
    assert "CancelledError" in (bad.default_explanation or "")
    assert [(p.default, p.output) for p in after] == [(False, 4.0), (False, 6.0), (False, 8.0)]
    assert stats["replaced_replicas"] == 0
    assert any("CancelledError" in r.getMessage() for r in caplog.records)
