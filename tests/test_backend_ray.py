"""RayBackend against a real local Ray runtime: the backend contract, then the faults
through a real Clipper (actors killed, hung, stopped, scaled under load)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

import numpy as np  # noqa: E402

import clipperlite  # noqa: E402
from backend_contract import (  # noqa: E402
    BackendContract,
    FailsToLoad,
    WorkerProcessContract,
    describe,
    die_on_die,
    raise_on_boom,
    stop_iteration_on_stop,
    system_exit_on_exit,
)
from clipperlite.ray import RayBackend  # noqa: E402
from helpers import eventually  # noqa: E402


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One light local Ray runtime for the whole session (it takes seconds to start)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def actor_titles() -> dict[int, str]:
    """This machine's Ray workers holding a clipperlite replica actor, by PID, with their
    process titles (Ray titles an actor's process `ray::<class>`, `ray::<class>.<method>`
    while it runs a call)."""
    titles = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if cmdline.startswith(b"ray::ClipperliteReplica") and state != "Z":
            titles[int(entry)] = cmdline.split(b"\0")[0].decode(errors="replace")
    return titles


def live_actor_processes() -> list[int]:
    """PIDs of this machine's Ray workers holding a clipperlite replica actor."""
    return list(actor_titles())


def in_a_batch(pid: int) -> bool:
    """Whether the actor in process `pid` is running a batch now."""
    return actor_titles().get(pid, "").startswith("ray::ClipperliteReplica.run")


class TestRayBackendContract(BackendContract, WorkerProcessContract):
    """The backend contract, on Ray actors."""

    stuck_stop_result = True  # Ray kills a stuck actor

    @pytest.fixture
    def backend(self, ray_runtime: None) -> clipperlite.Backend:
        """A RayBackend on the session's runtime."""
        return RayBackend()

    def leftover_workers(self) -> int:
        """Replica actors alive on this machine."""
        return len(live_actor_processes())


# -- models for the Clipper-level tests (module level: the actors import them) ---------------


def pid_of_worker(xs: list[Any]) -> list[float]:
    """The worker's process id, once per input (after 5 ms of work per batch)."""
    time.sleep(0.005)
    return [float(os.getpid())] * len(xs)


def hang_on_13(xs: list[Any]) -> list[float]:
    """Hang when an input sums to 13, else answer with the worker's process id."""
    if any(float(x.sum()) == 13.0 for x in xs):
        time.sleep(60)
    return [float(os.getpid())] * len(xs)


async def async_sum(xs: list[Any]) -> list[float]:
    """An `async def` model: each input's sum."""
    await asyncio.sleep(0)
    return [float(x.sum()) for x in xs]


def pid_alive(pid: int) -> bool:
    """Whether a process runs (and is not a zombie) on this machine."""
    return pid in live_actor_processes()


async def ray_clipper(**options: Any) -> clipperlite.Clipper:
    """A started Clipper with an app "app" of doubles (SLO 5 s unless told)."""
    clipper = await clipperlite.Clipper(**options).start()
    clipper.register_application("app", "doubles", -1.0, 5_000_000)
    return clipper


async def deploy(clipper: clipperlite.Clipper, func: Any, **options: Any) -> None:
    """Deploy `func` as model "m" on Ray (half a CPU per actor) and link it to "app"."""
    options.setdefault("backend_options", {"num_cpus": 0.5})
    await clipper.deploy_model("m", 1, "doubles", func, backend="ray", **options)
    clipper.link_model_to_app("app", "m")


# -- through a real Clipper ------------------------------------------------------------------


@pytest.mark.anyio
async def test_backend_ray_by_name_serves(ray_runtime: None) -> None:
    """backend="ray" resolves RayBackend through the entry point and serves queries."""
    clipper = await ray_clipper()
    try:
        await deploy(clipper, async_sum)
        answers = await clipper.predict_batch("app", [[1.0, 2.0], [3.0, 4.0], [5.0, 0.5]])
        assert [(p.default, p.output) for p in answers] == [
            (False, 3.0),
            (False, 7.0),
            (False, 5.5),
        ]
        (model,) = clipper.statistics().models
        assert model.backend == "ray"
    finally:
        await clipper.stop()


@pytest.mark.anyio
async def test_killed_actor_gives_worker_died_then_a_replacement(ray_runtime: None) -> None:
    """An actor killed mid-batch (SIGKILL): its query gets worker_died, the next are served."""
    backend = RayBackend(num_cpus=0.5)
    clipper = await ray_clipper()
    try:
        await clipper.deploy_model("m", 1, "doubles", hang_on_13, backend=backend)
        clipper.link_model_to_app("app", "m")
        first = await clipper.predict("app", [1.0])
        assert not first.default
        pid = int(first.output)
        stuck = asyncio.ensure_future(clipper.predict("app", [13.0]))  # hangs in the actor
        assert await eventually(lambda: in_a_batch(pid))
        queued = [asyncio.ensure_future(clipper.predict("app", [100.0 + i])) for i in range(5)]
        await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer does it
        died = await stuck
        assert died.default and died.default_cause == clipperlite.DefaultCause.WORKER_DIED
        later = await asyncio.gather(*queued)
        assert all(not p.default for p in later)
        assert pid not in {int(p.output) for p in later}
        (model,) = clipper.statistics().models
        assert model.errors >= 1
    finally:
        await clipper.stop()


@pytest.mark.anyio
async def test_ray_kill_mid_batch_reports_then_restarts(ray_runtime: None) -> None:
    """ray.kill of a replica's actor mid-batch raises WorkerDiedError; a new actor serves."""
    replica = await RayBackend().start_replica(hang_on_13, name="killed")
    try:
        (pid,) = set((await replica.run_batch([np.ones(1)])).outputs)
        batch = asyncio.ensure_future(replica.run_batch([np.array([13.0])]))
        assert await eventually(lambda: in_a_batch(int(pid)))
        ray.kill(replica.actor)  # type: ignore[attr-defined]
        with pytest.raises(clipperlite.WorkerDiedError, match="died"):
            await batch
        (new_pid,) = set((await replica.run_batch([np.ones(2)])).outputs)
        assert new_pid != pid
        assert await eventually(lambda: not pid_alive(int(pid)))
    finally:
        assert await replica.stop(1.0)


@pytest.mark.anyio
async def test_hung_actor_is_killed_and_replaced(ray_runtime: None) -> None:
    """A batch hung far past its deadlines gets its actor killed and a new one serving;
    stop() then leaves no actor behind."""
    before = set(live_actor_processes())
    clipper = await ray_clipper(hang_timeout_s=0.3)
    try:
        await deploy(clipper, hang_on_13)
        first = await clipper.predict("app", [1.0])
        hung = await clipper.predict("app", [13.0], slo_micros=100_000)
        assert hung.default and hung.default_cause == clipperlite.DefaultCause.DEADLINE
        after = await clipper.predict("app", [2.0])
        assert not after.default and after.output != first.output
        assert await eventually(lambda: not pid_alive(int(first.output)))
        (model,) = clipper.statistics().models
        assert model.replaced_replicas >= 1 and model.abandoned_threads == 0
    finally:
        await clipper.stop()
    assert await eventually(lambda: not set(live_actor_processes()) - before)


@pytest.mark.anyio
async def test_stop_model_leaves_no_actor(ray_runtime: None) -> None:
    """stop_model ends every actor of the model (stop() is checked by the hung test)."""
    before = set(live_actor_processes())
    clipper = await ray_clipper()
    try:
        await deploy(clipper, pid_of_worker, num_replicas=2)
        await clipper.predict_batch("app", [[1.0]] * 8)
        assert len(set(live_actor_processes()) - before) == 2
        await clipper.stop_model("m")
        assert await eventually(lambda: not set(live_actor_processes()) - before)
        assert (await clipper.predict("app", [2.0])).default_cause == "no_replica"
    finally:
        await clipper.stop()


@pytest.mark.anyio
async def test_failing_model_raises_at_deploy(ray_runtime: None) -> None:
    """A model that cannot load in its actor fails deploy_model, with the actor's reason."""
    before = set(live_actor_processes())
    clipper = await ray_clipper()
    try:
        with pytest.raises(clipperlite.ClipperError) as caught:
            await deploy(clipper, FailsToLoad())
        chain, error = [], caught.value
        while error is not None:
            chain.append(str(error))
            error = error.__cause__
        assert any("cannot load the weights" in text for text in chain)
        assert clipper.get_all_models() == []
    finally:
        await clipper.stop()
    assert await eventually(lambda: not set(live_actor_processes()) - before)


@pytest.mark.anyio
async def test_scaling_under_load_loses_no_query(ray_runtime: None) -> None:
    """set_num_replicas up to 3 and back to 1 while queries flow: every one is answered."""
    clipper = await ray_clipper()
    answers: list[clipperlite.Prediction] = []
    try:
        await deploy(clipper, pid_of_worker, cache=False)  # every query reaches an actor
        running = True

        async def load() -> None:
            while running:
                answers.extend(await clipper.predict_batch("app", [[1.0], [2.0], [3.0]]))

        flows = [asyncio.ensure_future(load()) for _ in range(4)]
        await clipper.set_num_replicas("m", 3)
        assert await eventually(lambda: len({p.output for p in answers[-60:]}) >= 3)
        await clipper.set_num_replicas("m", 1)
        count = len(answers)
        assert await eventually(lambda: len(answers) > count + 60)
        running = False
        await asyncio.gather(*flows)
    finally:
        await clipper.stop()
    assert answers and [p for p in answers if p.default] == []
    assert len({p.output for p in answers}) >= 3  # each actor answered
    assert len({p.output for p in answers[-30:]}) == 1  # and after scaling down, one


_OWN_RUNTIME = textwrap.dedent(
    """
    import asyncio, ray, clipperlite

    async def serve_once():
        async with clipperlite.Clipper() as clipper:
            clipper.register_application("app", "doubles", -1.0, 30_000_000)
            await clipper.deploy_model("m", 1, "doubles", lambda xs: [float(x.sum()) for x in xs],
                                       backend="ray", backend_options={"num_cpus": 0.5})
            clipper.link_model_to_app("app", "m")
            p = await clipper.predict("app", [1.0, 2.0])
            assert not p.default, p.default_explanation
            return p.output

    assert not ray.is_initialized()
    first = asyncio.run(serve_once())   # starts a local runtime (off the loop)
    second = asyncio.run(serve_once())  # the loop and its threads are gone; Ray is not
    print("served", first, second, ray.is_initialized())
    ray.shutdown()
    """
)


def test_starts_its_own_local_runtime_that_outlives_the_loop(tmp_path: Path) -> None:
    """With no runtime connected, the first replica starts one, which outlives its loop."""
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _OWN_RUNTIME],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served 3.0 3.0 True" in result.stdout


def test_backend_options_are_checked_at_once() -> None:
    """Options that Ray would refuse, or that clipperlite owns, fail when the backend is made."""
    with pytest.raises(ValueError, match="num_cpu"):
        RayBackend(num_cpu=1)
    with pytest.raises(ValueError, match="num_gpus"):
        RayBackend(num_gpus=-1)
    with pytest.raises(ValueError, match="max_restarts"):
        RayBackend(max_restarts=3)
    with pytest.raises(ValueError, match="share one actor"):
        RayBackend(name="one")
    assert "num_cpus=2" in repr(RayBackend(num_cpus=2, scheduling_strategy="SPREAD"))


@pytest.mark.anyio
async def test_deploy_with_bad_backend_options_fails() -> None:
    """deploy_model(backend="ray") with an option Ray does not know is a ClipperError."""
    async with clipperlite.Clipper() as clipper:
        with pytest.raises(clipperlite.ClipperError, match="num_cpu"):
            await clipper.deploy_model(
                "m", 1, "doubles", len, backend="ray", backend_options={"num_cpu": 1}
            )


# -- the actor's own code, in this process; restarts and starts that fail ----------------------


class CrashesOnLoad:
    """A model whose unpickling ends the worker process (a native library crashing)."""

    def __getstate__(self) -> dict[str, int]:
        return {"code": 9}

    def __setstate__(self, state: dict[str, int]) -> None:
        os._exit(state["code"])

    def __call__(self, xs: list[Any]) -> list[Any]:
        return list(xs)


class LoadsOnce:
    """A model that loads once: a second load (a restart) fails, for its marker exists."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __getstate__(self) -> dict[str, str]:
        return {"marker": self.marker}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.marker = state["marker"]
        if os.path.exists(self.marker):
            raise RuntimeError("the weights were already taken")
        Path(self.marker).touch()

    def __call__(self, xs: list[Any]) -> list[Any]:
        return die_on_die(xs)


def test_actor_code_runs_batches_in_process() -> None:
    """The actor class unstacks stacked batches, runs async models and contains exits."""
    import cloudpickle

    from clipperlite.ray import ClipperliteReplica, _pack

    actor = ClipperliteReplica(cloudpickle.dumps(describe), ["/nonexistent-dir"])
    assert actor.load() == os.getpid() and actor.ping()
    rows = [np.arange(3.0) + i for i in range(4)]
    outputs, seconds = actor.run(_pack(rows))
    assert [o[1] for o in outputs] == [(3,)] * 4 and seconds >= 0.0
    assert actor.run(rows)[0] == outputs
    coroutine = ClipperliteReplica(cloudpickle.dumps(async_sum), [])
    coroutine.load()
    try:
        assert coroutine.run([np.ones(2), np.ones(3)])[0] == [2.0, 3.0]
    finally:
        coroutine._loop.close()  # type: ignore[union-attr]  # an actor's lasts its life
    for model, bad, name in (
        (stop_iteration_on_stop, "stop", "StopIteration"),
        (system_exit_on_exit, "exit", "SystemExit"),
        (raise_on_boom, "boom", "boom"),
    ):
        wrapped = ClipperliteReplica(cloudpickle.dumps(model), [])
        wrapped.load()
        with pytest.raises(Exception, match=name):
            wrapped.run([bad])


@pytest.mark.anyio
async def test_connecting_runs_in_a_thread_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """With Ray not initialised, ray.init runs once, off the loop, in a lasting thread."""
    import clipperlite.ray as backend_module

    calls: list[tuple[str | None, str]] = []
    monkeypatch.setattr(backend_module.ray, "is_initialized", lambda: bool(calls))

    def fake_init(address: str | None = None, **options: Any) -> None:
        calls.append((address, threading.current_thread().name))

    monkeypatch.setattr(backend_module.ray, "init", fake_init)
    await backend_module._ensure_runtime("ray://head:10001")
    await backend_module._ensure_runtime("ray://elsewhere:10001")  # connected already
    assert calls == [("ray://head:10001", "clipperlite:ray-init")]


@pytest.mark.anyio
async def test_worker_crashing_at_load_fails_the_start(ray_runtime: None) -> None:
    """A model whose load kills its worker makes start_replica raise a ClipperError."""
    before = set(live_actor_processes())
    with pytest.raises(clipperlite.ClipperError, match="could not start"):
        await RayBackend().start_replica(CrashesOnLoad(), name="crash-at-load")
    assert await eventually(lambda: not set(live_actor_processes()) - before)


@pytest.mark.anyio
async def test_failed_restart_is_a_worker_death_and_stop_is_clean(
    ray_runtime: None, tmp_path: Path
) -> None:
    """A replacement that cannot load is reported as WorkerDiedError; stop still ends all."""
    before = set(live_actor_processes())
    replica = await RayBackend().start_replica(
        LoadsOnce(str(tmp_path / "loaded")), name="loads-once"
    )
    with pytest.raises(clipperlite.WorkerDiedError, match="died"):
        await replica.run_batch(["die"])
    with pytest.raises(clipperlite.WorkerDiedError, match="could not be restarted"):
        await replica.run_batch(["alive"])
    assert await replica.stop(1.0) is True
    assert await eventually(lambda: not set(live_actor_processes()) - before)


@pytest.mark.anyio
async def test_stop_during_a_restart_leaves_nothing(ray_runtime: None) -> None:
    """Stopping a replica while it replaces a dead actor ends the replacement too."""
    before = set(live_actor_processes())
    replica = await RayBackend().start_replica(die_on_die, name="stop-in-restart")
    with pytest.raises(clipperlite.WorkerDiedError):
        await replica.run_batch(["die"])
    assert await replica.stop(1.0) is True  # the replacement is starting now
    assert await eventually(lambda: not set(live_actor_processes()) - before)
    with pytest.raises(clipperlite.WorkerDiedError, match="stopped"):
        await replica.run_batch(["late"])
