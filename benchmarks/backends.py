"""Backends against their own floors, measured in one run (needs the `ray` extra).

1. Scale-out: a CPU-bound pure-Python model (it holds the GIL), served through a real
   Clipper with 1 and then 2 replicas, on the process backend and on Ray (one CPU per
   actor); throughput ratio 2 : 1 (target >= 1.7x on 2 cores).
2. Ray per-batch overhead: `await replica.run_batch(xs)` of a RayBackend replica against
   a raw `await actor.run.remote(xs)` on a plain Ray actor, trivial model, batches of 1,
   8 and 64 arrays of 200 float64s (target <= 1.3x); and the same replica with the
   stacking of numeric batches turned off, to show what stacking saves.
3. Process round trip: `await replica.run_batch(xs)` of the process backend against a
   raw `multiprocessing.Pipe` round trip to a worker of our own, 200 floats (target
   <= 1.5x); a raw pipe driven from the event loop through a thread is shown for scale.

Pairs are measured in interleaved rounds; each ratio is the median of per-round ratios.

    python benchmarks/backends.py            # full run, ~2 min
    python benchmarks/backends.py --quick    # smoke run, ~1 min (Ray takes ~10 s to start)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import ray

import clipperlite
import clipperlite.ray as clipperlite_ray
from clipperlite import Clipper
from clipperlite.ray import RayBackend

ITEM_LOOPS = 60_000  # ~5 ms of pure Python per item on this machine


def busy(xs: list[Any]) -> list[float]:
    """CPU-bound pure Python: holds the GIL for a few ms per input."""
    out = []
    for x in xs:
        acc = 0
        for i in range(ITEM_LOOPS):
            acc += i * i % 7
        out.append(float(acc) + float(x[0]))
    return out


def trivial(xs: list[Any]) -> list[float]:
    """Costs nothing: the round trip is all there is."""
    return [1.0] * len(xs)


class RawActor:
    """The floor: a plain Ray actor calling the same model on what it is sent."""

    def run(self, xs: list[Any]) -> list[float]:
        return trivial(xs)


def busy_for(seconds: float) -> int:
    """Run the model on batches of 4 for `seconds`; how many inputs it got through."""
    end = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < end:
        busy([[0.0]] * 4)
        done += 4
    return done


def raw_scaling(workers: int, seconds: float) -> float:
    """Inputs per second the model gets through in `workers` plain processes at once (what
    the machine gives right now: the baseline of the scale-out ratios)."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(busy_for, [0.05] * workers)  # started and warm
        return sum(pool.map(busy_for, [seconds] * workers)) / seconds


def _pipe_worker(conn: Any) -> None:
    while True:
        try:
            xs = conn.recv()
        except EOFError:
            return
        conn.send(trivial(xs))


# -- 1. scale-out ----------------------------------------------------------------------------


class Load:
    """A Clipper serving the busy model, kept full by 32 closed-loop callers; `rate()`
    counts the queries answered in a window, `scale()` changes the replicas in between."""

    def __init__(self, backend: str, options: dict[str, Any] | None) -> None:
        self.backend, self.options = backend, options
        self.clipper = Clipper(cache_size=0)
        self.done = 0
        self.in_flight = 0
        self.running = True
        self.active = asyncio.Event()  # callers wait while it is clear
        self.idle = asyncio.Event()  # set when paused and nothing is in flight
        self.callers: list[asyncio.Future[None]] = []

    async def start(self) -> Load:
        clipper = await self.clipper.start()
        clipper.register_application("app", "doubles", -1.0, 30_000_000)
        await clipper.deploy_model(
            "busy",
            1,
            "doubles",
            busy,
            num_replicas=2,
            batch_size=4,
            backend=self.backend,
            backend_options=self.options,
        )
        clipper.link_model_to_app("app", "busy")
        self.callers = [asyncio.ensure_future(self._caller(k)) for k in range(32)]
        return self

    async def _caller(self, k: int) -> None:
        i = 0
        while True:
            await self.active.wait()
            if not self.running:
                return
            self.in_flight += 1
            p = await self.clipper.predict("app", [float(k * 1_000_000 + i)])
            self.in_flight -= 1
            if not self.in_flight and not self.active.is_set():
                self.idle.set()
            assert not p.default, p.default_explanation
            i += 1
            self.done += 1

    async def rate(self, replicas: int, seconds: float) -> float:
        """Queries per second with `replicas` replicas, over `seconds`."""
        await self.clipper.set_num_replicas("busy", replicas)
        self.active.set()
        await asyncio.sleep(0.3)  # every replica busy
        before, started = self.done, time.perf_counter()
        await asyncio.sleep(seconds)
        rate = (self.done - before) / (time.perf_counter() - started)
        self.idle.clear()
        self.active.clear()  # the callers pause, so the machine is left to the next
        if self.in_flight:
            await self.idle.wait()
        return rate

    async def stop(self) -> None:
        self.running = False
        self.active.set()
        await asyncio.gather(*self.callers)
        await self.clipper.stop()


async def scale_out(seconds: float, rounds: int) -> dict[str, float]:
    """Throughput 2 : 1 replicas, per backend, in interleaved rounds."""
    loads = {
        "process": await Load("process", None).start(),
        "ray": await Load("ray", {"num_cpus": 1}).start(),
    }
    ratios: dict[str, list[float]] = {"raw": [], **{k: [] for k in loads}}
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in ratios}
    try:
        for _ in range(rounds):
            one = raw_scaling(1, seconds)
            two = raw_scaling(2, seconds)
            ratios["raw"].append(two / one)
            rates["raw"].append((one, two))
            for label, load in loads.items():
                one = await load.rate(1, seconds)
                two = await load.rate(2, seconds)
                ratios[label].append(two / one)
                rates[label].append((one, two))
    finally:
        for load in loads.values():
            await load.stop()
    figures = {}
    for label, values in ratios.items():
        one = statistics.median(r[0] for r in rates[label])
        two = statistics.median(r[1] for r in rates[label])
        figures[label] = statistics.median(values)
        print(
            f"   {label:8s} 1 worker {one:7.1f} q/s   2 workers {two:7.1f} q/s"
            f"   2:1 {figures[label]:.2f}x (per round: "
            + ", ".join(f"{v:.2f}" for v in values)
            + ")"
        )
    return figures


# -- 2. and 3. round trips -------------------------------------------------------------------


async def per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    """Mean seconds per awaited call, over n calls one at a time."""
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n


class stacking:
    """Force the Ray backend's stacking of numeric batches on or off (a context manager)."""

    def __init__(self, on: bool) -> None:
        self.limits = (2, 1 << 62) if on else (1 << 62, 0)

    def __enter__(self) -> None:
        self.saved = (clipperlite_ray.STACK_MIN, clipperlite_ray.STACK_MAX_ROW_BYTES)
        clipperlite_ray.STACK_MIN, clipperlite_ray.STACK_MAX_ROW_BYTES = self.limits

    def __exit__(self, *exc: object) -> None:
        clipperlite_ray.STACK_MIN, clipperlite_ray.STACK_MAX_ROW_BYTES = self.saved


async def _awaited(ref: Any) -> Any:
    return await ref


def sync_per_call(call: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n


async def interleave(
    pairs: dict[str, Callable[[], Any]], rounds: int, n: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, round after round (drift hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in pairs}
    for _ in range(rounds):
        for label, call in pairs.items():
            probe = call()
            if asyncio.iscoroutine(probe):
                await probe
                times[label].append(await per_call(call, n))
            else:
                times[label].append(sync_per_call(call, n))
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def micros(times: dict[str, list[float]], label: str) -> str:
    return f"{statistics.median(times[label]) * 1e6:8.0f} µs"


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    seconds = 1.0 if quick else 2.0
    rounds, n = (3, 100) if quick else (7, 300)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures: dict[str, float] = {}
    try:
        print("1. scale-out, CPU-bound pure-Python model (~5 ms per input, batches of 4)")
        scaled = await scale_out(seconds, 2 if quick else 4)
        for label, value in scaled.items():
            figures[f"{label} 2:1"] = value
        print(
            "   target >= 1.7x; against what the machine gave the raw processes in the same"
            f" rounds: process {scaled['process'] / scaled['raw']:.2f},"
            f" ray {scaled['ray'] / scaled['raw']:.2f}"
        )

        print("2. Ray per-batch round trip, trivial model, 200-float64 arrays")
        raw = ray.remote(RawActor).options(num_cpus=0).remote()
        await raw.run.remote([])
        replica = await RayBackend(num_cpus=0).start_replica(trivial, name="bench")
        for size in (1, 8, 64):
            xs = [np.random.default_rng(i).random(200) for i in range(size)]

            async def unstacked(xs: list[Any] = xs) -> Any:
                with stacking(False):
                    return await replica.run_batch(xs)

            times = await interleave(
                {
                    "raw actor": lambda xs=xs: _awaited(raw.run.remote(xs)),
                    "replica": lambda xs=xs: replica.run_batch(xs),
                    "replica, no stacking": unstacked,
                },
                rounds,
                n,
            )
            figures[f"ray overhead {size}"] = ratio(times, "replica", "raw actor")
            print(
                f"   batch {size:3d}: raw actor {micros(times, 'raw actor')}"
                f"   replica {micros(times, 'replica')}"
                f" ({ratio(times, 'replica', 'raw actor'):.2f}x, target <= 1.3x)"
                f"   unstacked {micros(times, 'replica, no stacking')}"
                f" ({ratio(times, 'replica, no stacking', 'raw actor'):.2f}x)"
            )
        print(
            "   stacking numeric batches, per batch: stacked : sent as a list (same replica;"
            f" stacked by default up to {clipperlite_ray.STACK_MAX_ROW_BYTES} bytes per input)"
        )
        for size, shape, dtype in (
            (256, (200,), np.float64),
            (64, (784,), np.float32),
            (16, (224, 224, 3), np.uint8),
            (32, (100_000,), np.float64),
        ):
            xs = [np.random.default_rng(i).random(shape).astype(dtype) for i in range(size)]

            async def stacked(xs: list[Any] = xs) -> Any:
                with stacking(True):
                    return await replica.run_batch(xs)

            async def as_list(xs: list[Any] = xs) -> Any:
                with stacking(False):
                    return await replica.run_batch(xs)

            times = await interleave(
                {"stacked": stacked, "list": as_list},
                rounds,
                max(10, n // 10),
            )
            figures[f"stacked {size}x{xs[0].nbytes // 1000}KB"] = ratio(times, "stacked", "list")
            print(
                f"   {size:3d} x {shape!s:15s} {np.dtype(dtype).name:8s}"
                f" ({size * xs[0].nbytes / 1e6:5.2f} MB): stacked {micros(times, 'stacked')}"
                f"   list {micros(times, 'list')}   {ratio(times, 'stacked', 'list'):.2f}x"
            )
        await replica.stop(1.0)
        ray.kill(raw)

        print("3. process backend round trip, trivial model, one input of 200 float64s")
        # The built-in process backend has no public constructor: it is what
        # deploy_model(backend="process") resolves.
        from clipperlite._backends import BUILTIN_BACKENDS

        process = await BUILTIN_BACKENDS["process"]().start_replica(trivial, name="bench")
        ctx = multiprocessing.get_context("spawn")
        pipes = [ctx.Pipe() for _ in range(2)]
        workers = [ctx.Process(target=_pipe_worker, args=(c,), daemon=True) for _, c in pipes]
        for w in workers:
            w.start()
        (parent, _), (reader_parent, _) = pipes
        xs = [np.random.default_rng(0).random(200)]

        def raw_pipe() -> Any:
            parent.send(xs)
            return parent.recv()

        loop = asyncio.get_running_loop()
        replies: list[asyncio.Future[Any]] = []

        def readable() -> None:
            replies.pop(0).set_result(reader_parent.recv())

        loop.add_reader(reader_parent.fileno(), readable)

        async def loop_pipe() -> Any:
            fut = loop.create_future()
            replies.append(fut)
            reader_parent.send(xs)
            return await fut

        times = await interleave(
            {
                "raw pipe": raw_pipe,
                "raw pipe, loop reader": loop_pipe,
                "raw pipe via a thread": lambda: asyncio.to_thread(raw_pipe),
                "process replica": lambda: process.run_batch(xs),
            },
            rounds,
            n,
        )
        loop.remove_reader(reader_parent.fileno())
        figures["process overhead"] = ratio(times, "process replica", "raw pipe")
        print(
            f"   raw pipe {micros(times, 'raw pipe')}"
            f"   process replica {micros(times, 'process replica')}"
            f" ({figures['process overhead']:.2f}x the raw pipe, target <= 1.5x)\n"
            f"   for scale, from the event loop: raw pipe with loop.add_reader"
            f" {micros(times, 'raw pipe, loop reader')}, raw pipe via asyncio.to_thread"
            f" {micros(times, 'raw pipe via a thread')}"
        )
        await process.stop(1.0)
        for conn, _ in pipes:
            conn.close()
        for w in workers:
            w.join(5)
    finally:
        ray.shutdown()
    print(
        "summary: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in figures.items())
        + f" (clipperlite {clipperlite.__version__}, ray {ray.__version__})"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    sys.exit(asyncio.run(main(parser.parse_args())))
