"""Adaptive batching side by side with its baselines, all measured in one run.

Model (unless said otherwise): `time.sleep(2 ms + 0.05 ms x n)` on a worker thread,
SLO 20 ms, one replica, open-loop Poisson arrivals (`loadgen.py`), latency from each
query's scheduled arrival, "sustained" = p99 <= SLO and <= 1% defaults. Every figure
is a ratio against a baseline measured in this run:

- capacity: the highest sustained rate of clipperlite with **default** settings,
  against the ideal (the model called directly at the batch whose latency is SLO/2,
  n = 160) and against `Greedy`, a 30-line reference pull batcher (take everything
  queued up to 512, one batch in flight); bisection per system, `--runs` times;
- load step: 2,000/s then 11,000/s; failed % (default or later than the SLO) and p99
  in windows 0-0.1, 0.1-0.25, 0.25-0.5, 0.5-1 s after the step;
- numpy model (per item x(200) @ W(200x200), one matmul per batch, one BLAS
  thread): capacity against greedy;
- per-query CPU of the event-loop thread (generator included) at 6,000/s, against
  greedy;
- a trivial model at saturation, the process pinned to one core, 256 callers in a
  closed loop: per-query time against the asyncio future hand-off
  (`create_future` + `call_soon(set_result)` + `await`);
- one unloaded query through a thread replica against a raw `SimpleQueue` worker
  round trip (interleaved rounds, median ratio).

    python benchmarks/capacity.py             # full run, ~6-8 minutes
    python benchmarks/capacity.py --quick     # smoke run, ~1.5 minutes
    python benchmarks/capacity.py --only capacity,step   # a subset
    python benchmarks/capacity.py --gc-freeze --only capacity   # gc.freeze() after set-up
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: BLAS erratic on 2 cores
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import json
import platform
import queue
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipperlite import Clipper
from loadgen import FrozenGC, LoadResult, NoiseGuard, arrival_offsets, run_load

SLO_MICROS = 20_000
SLO_S = SLO_MICROS / 1e6
FIXED_S = 0.002
PER_ITEM_S = 0.00005
_BASE = np.arange(8, dtype=np.float64)
_W = np.random.default_rng(0).standard_normal((200, 200))
_X200 = np.random.default_rng(1).standard_normal(200)


def sleep_model(xs: list[Any]) -> list[float]:
    """2 ms + 0.05 ms per item, asleep (the GIL is free meanwhile)."""
    time.sleep(FIXED_S + PER_ITEM_S * len(xs))
    return [1.0] * len(xs)


def numpy_model(xs: list[Any]) -> Any:
    """Per item x(200) @ W(200x200): one matmul for the whole batch."""
    return np.stack(xs) @ _W


def trivial(xs: list[Any]) -> list[float]:
    """A model that costs nothing."""
    return [1.0] * len(xs)


def small_input(i: int) -> np.ndarray:
    return _BASE + i


def wide_input(i: int) -> np.ndarray:
    return _X200 + i


# -- the reference batcher ----------------------------------------------------------------
class _Answer:
    __slots__ = ("output",)
    default = False
    default_cause = None
    default_explanation = None
    latency_micros = 0.0

    def __init__(self, output: Any) -> None:
        self.output = output


class Greedy:
    """Take everything queued (up to 512), one batch in flight on a worker thread."""

    def __init__(self, func: Callable[[list[Any]], Any], limit: int = 512) -> None:
        self.func, self.limit = func, limit
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[asyncio.Future[Any], Any]] = deque()
        self.busy = False
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.inbox.get()) is not None:
            futs, xs = item
            self.loop.call_soon_threadsafe(self._done, futs, self.func(xs))

    def _launch(self) -> None:
        q = self.queue
        items = [q.popleft() for _ in range(min(len(q), self.limit))]
        self.busy = True
        self.inbox.put(([f for f, _ in items], [x for _, x in items]))

    def _done(self, futs: list[asyncio.Future[Any]], outs: Any) -> None:
        for f, o in zip(futs, outs, strict=True):
            f.set_result(o)
        self.busy = False
        if self.queue:
            self._launch()

    async def predict(self, app: str, x: Any) -> _Answer:
        fut = self.loop.create_future()
        self.queue.append((fut, x))
        if not self.busy:
            self._launch()
        return _Answer(await fut)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(2.0)


# -- one system under load ----------------------------------------------------------------
Run = Callable[..., Awaitable[LoadResult]]

#: `--gc-freeze`: each trial, once its system is set up, runs `gc.freeze()` (the
#: deployment advice of docs/concepts/batching.md), for every system alike; without
#: it, the collector is left as the previous trials left it.
FREEZE = False


def frozen() -> contextlib.AbstractContextManager[object]:
    """`gc.freeze()` for the trial with `--gc-freeze`; nothing otherwise."""
    return FrozenGC(True) if FREEZE else contextlib.nullcontext()


async def run_clipper(
    func: Callable[[list[Any]], Any],
    make_input: Callable[[int], Any],
    rate: float,
    *,
    warmup: float,
    duration: float,
    seed: int,
    schedule: np.ndarray | None = None,
) -> LoadResult:
    """clipperlite with default settings (cache on, AIMD, batch_wait 0)."""
    async with Clipper() as clipper:
        clipper.register_application("bench", "doubles", -1.0, SLO_MICROS)
        await clipper.deploy_model("m", 1, "doubles", func)
        clipper.link_model_to_app("bench", "m")
        with frozen():
            return await run_load(
                clipper,
                "bench",
                make_input,
                rate=rate,
                duration=duration,
                warmup=warmup,
                seed=seed,
                schedule=schedule,
            )


async def run_greedy(
    func: Callable[[list[Any]], Any],
    make_input: Callable[[int], Any],
    rate: float,
    *,
    warmup: float,
    duration: float,
    seed: int,
    schedule: np.ndarray | None = None,
) -> LoadResult:
    """The reference batcher."""
    g = Greedy(func)
    try:
        with frozen():
            return await run_load(
                None,
                "bench",
                make_input,
                rate=rate,
                duration=duration,
                warmup=warmup,
                seed=seed,
                slo_micros=SLO_MICROS,
                predict=g.predict,
                schedule=schedule,
            )
    finally:
        g.close()


SYSTEMS: dict[str, Run] = {"clipperlite": run_clipper, "greedy": run_greedy}

#: Waits for other processes to quieten before a trial and repeats a trial whose
#: threads waited long for a CPU (see loadgen.NoiseGuard), within a time budget.
GUARD = NoiseGuard(120.0)


def direct_capacity(n: int, seconds: float) -> float:
    """Items per second of the sleep model called directly with batches of n."""
    batch = [small_input(i) for i in range(n)]
    sleep_model(batch)
    calls = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or calls < 3:
        sleep_model(batch)
        calls += 1
    return calls * n / elapsed


async def capacity(
    systems: dict[str, Run],
    func: Callable[[list[Any]], Any],
    make_input: Callable[[int], Any],
    lo: float,
    hi: float,
    *,
    steps: int,
    warmup: float,
    duration: float,
    label: str,
    seed0: int = 0,
) -> dict[str, float]:
    """Highest sustained rate of each system, by interleaved bisection in [lo, hi]."""
    bounds = {name: [lo, hi, 0.0] for name in systems}
    for step in range(steps):
        for name, run in systems.items():
            b = bounds[name]
            mid = round((b[0] + b[1]) / 2)

            def show(res: LoadResult, retrying: bool, name: str = name) -> None:
                verdict = "pass" if res.sustained(0.01) else "FAIL"
                again = "  disturbed: again" if retrying else ""
                print(f"  {label:6s} {name:12s} {res.row()}  {verdict}{again}", flush=True)

            res = await GUARD.run(
                lambda run=run, mid=mid, step=step: run(
                    func, make_input, mid, warmup=warmup, duration=duration, seed=seed0 + step
                ),
                lambda r: r,
                show,
            )
            ok = res.sustained(0.01)
            if ok:
                b[0], b[2] = mid, mid
            else:
                b[1] = mid
    return {name: b[2] for name, b in bounds.items()}


# -- the load step --------------------------------------------------------------------------
WINDOWS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0))


def step_schedule(lo: float, hi: float, before: float, after: float, seed: int) -> np.ndarray:
    a = arrival_offsets(lo, int(lo * before * 1.5) + 100, seed)
    a = a[a < before]
    b = before + arrival_offsets(hi, int(hi * after * 1.5) + 100, seed + 1)
    return np.concatenate([a, b[b < before + after]])


def windows(res: LoadResult, step_at: float) -> list[tuple[float, float]]:
    """(failed fraction, p99 s) per window after the step."""
    out = []
    t = res.arrivals - step_at
    failed = res.default_mask | (res.latencies_s > SLO_S)
    for a, b in WINDOWS:
        m = (t >= a) & (t < b)
        if not m.any():
            out.append((float("nan"), float("nan")))
            continue
        out.append((float(failed[m].mean()), float(np.percentile(res.latencies_s[m], 99))))
    return out


# -- per-query costs --------------------------------------------------------------------------
async def saturated_trivial(seconds: float, callers: int = 256) -> tuple[float, float]:
    """(µs per query through clipperlite, µs per future hand-off), pinned to one core."""
    loop = asyncio.get_running_loop()
    pinned = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pinned else set()
    if pinned:
        os.sched_setaffinity(0, {min(before)})
    try:
        async with Clipper() as clipper:  # the replica thread inherits the affinity
            clipper.register_application("t", "doubles", -1.0, 1_000_000)
            await clipper.deploy_model("t", 1, "doubles", trivial)
            clipper.link_model_to_app("t", "t")
            counter = iter(range(10**12))
            done = [0]
            stop = [False]

            async def caller() -> None:
                while not stop[0]:
                    await clipper.predict("t", _BASE + next(counter))
                    done[0] += 1

            tasks = [loop.create_task(caller()) for _ in range(callers)]
            await asyncio.sleep(0.3)  # warm up: AIMD grows
            d0, t0 = done[0], time.perf_counter()
            await asyncio.sleep(seconds)
            per_query = (time.perf_counter() - t0) / (done[0] - d0) * 1e6
            stop[0] = True
            await asyncio.gather(*tasks)

        async def handoff() -> None:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut

        n = 20_000
        t0 = time.perf_counter()
        for _ in range(n):
            await handoff()
        floor = (time.perf_counter() - t0) / n * 1e6
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    return per_query, floor


class RawWorker:
    """The floor for crossing to a thread: SimpleQueue in, call_soon_threadsafe out."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.inbox.get()) is not None:
            fut, xs = item
            self.loop.call_soon_threadsafe(fut.set_result, trivial(xs))

    async def call(self, xs: list[Any]) -> Any:
        fut = self.loop.create_future()
        self.inbox.put((fut, xs))
        return await fut

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(1.0)


async def unloaded_thread(rounds: int, n: int) -> tuple[float, float, float]:
    """(µs per query, µs per raw round trip, median per-round ratio)."""
    loop = asyncio.get_running_loop()
    raw = RawWorker(loop)
    counter = iter(range(10**12))
    one = [_BASE]
    samples = []
    async with Clipper() as clipper:
        clipper.register_application("u", "doubles", -1.0, 1_000_000)
        await clipper.deploy_model("u", 1, "doubles", trivial)
        clipper.link_model_to_app("u", "u")
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            for _ in range(n):
                await raw.call(one)
            f = (time.perf_counter() - t0) / n * 1e6
            t0 = time.perf_counter()
            for _ in range(n):
                await clipper.predict("u", _BASE + next(counter))
            t = (time.perf_counter() - t0) / n * 1e6
            if r:  # the first round warms up
                samples.append((t, f))
    raw.close()
    return (
        statistics.median(t for t, _ in samples),
        statistics.median(f for _, f in samples),
        statistics.median(t / f for t, f in samples),
    )


# -- main ---------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:,.0f}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    only = set(args.only.split(",")) if args.only else None
    summary: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
    }
    print(f"{summary['machine']}; {summary['date']}; {summary['command']}")
    GUARD.extra_s = args.budget if args.budget is not None else (10.0 if quick else 120.0)
    steps = 3 if quick else 6
    warm, dur = (0.6, 1.0) if quick else (1.0, 2.0)

    def wanted(part: str) -> bool:
        return only is None or part in only

    if wanted("capacity"):
        n_half = round((SLO_S / 2 - FIXED_S) / PER_ITEM_S)
        ideal = direct_capacity(n_half, 0.3 if quick else 1.0)
        print(f"\n[capacity] ideal (model called directly at n={n_half}): {_fmt(ideal)} items/s")
        print(f"  {'':6s} {'system':12s} {LoadResult.HEADER.splitlines()[0]}")
        runs = []
        for r in range(1 if quick else args.runs):
            caps = await capacity(
                SYSTEMS,
                sleep_model,
                small_input,
                0.4 * ideal,
                1.05 * ideal,
                steps=steps,
                warmup=warm,
                duration=dur,
                label=f"run{r + 1}",
                seed0=10 * r,
            )
            runs.append(caps)
            c, g = caps["clipperlite"], caps["greedy"]
            print(
                f"  run {r + 1}: clipperlite {_fmt(c)}/s = {c / ideal:.2f}x ideal,"
                f" {c / g if g else float('nan'):.2f}x greedy; greedy {_fmt(g)}/s ="
                f" {g / ideal:.2f}x ideal"
            )
        summary["capacity"] = {"ideal": ideal, "runs": runs}

    if wanted("step"):
        print("\n[load step] 2,000/s -> 11,000/s (failed = default or later than the SLO)")
        before, after = (1.0, 1.0)
        out = {}
        for name, run in SYSTEMS.items():
            sched = step_schedule(2000, 11_000, before, after, seed=7)
            res = await run(
                sleep_model, small_input, 11_000, warmup=0.5, duration=2.0, seed=7, schedule=sched
            )
            w = windows(res, before)
            out[name] = w
            cells = "  ".join(
                f"{a:.2f}-{b:.2f}s: {100 * f:5.1f}% p99 {p * 1e3:5.1f}ms"
                for (a, b), (f, p) in zip(WINDOWS, w, strict=True)
            )
            gc2 = (
                f"  (full collections in the run: {res.gc_counts[2]},"
                f" longest {res.gc_full_max_ms:.1f} ms)"
            )
            print(f"  {name:12s} {cells}{gc2}")
        summary["step"] = out

    if wanted("numpy"):
        print("\n[numpy] per item x(200) @ W(200x200), one matmul per batch, 1 BLAS thread")
        caps = await capacity(
            SYSTEMS,
            numpy_model,
            wide_input,
            2_000,
            40_000,
            steps=steps + 1,
            warmup=warm,
            duration=dur,
            label="numpy",
            seed0=100,
        )
        c, g = caps["clipperlite"], caps["greedy"]
        print(f"  clipperlite {_fmt(c)}/s, greedy {_fmt(g)}/s: {c / g if g else float('nan'):.2f}x")
        summary["numpy"] = caps

    if wanted("cpu"):
        print("\n[per-query CPU] loop thread CPU per query at 6,000/s (generator included)")
        cpu = {}
        for name, run in SYSTEMS.items():
            res = await run(
                sleep_model, small_input, 6000, warmup=0.5, duration=1.0 if quick else 2.0, seed=3
            )
            cpu[name] = res.loop_cpu_us_per_query
            print(f"  {name:12s} {res.loop_cpu_us_per_query:6.1f} µs/query   {res.row()}")
        print(f"  ratio: {cpu['clipperlite'] / cpu['greedy']:.2f}x greedy")
        summary["cpu"] = cpu

    if wanted("trivial"):
        per_q, floor = await saturated_trivial(1.0 if quick else 3.0)
        print(
            f"\n[trivial model at saturation, one core, 256 callers] {per_q:.1f} µs/query;"
            f" future hand-off {floor:.1f} µs: {per_q / floor:.2f}x"
        )
        summary["trivial"] = {"per_query_us": per_q, "handoff_us": floor}

    if wanted("unloaded"):
        t, f, ratio = await unloaded_thread(5 if quick else 15, 200 if quick else 400)
        print(
            f"\n[one unloaded query, thread replica] {t:.1f} µs; raw SimpleQueue round trip"
            f" {f:.1f} µs: {ratio:.2f}x (median of per-round ratios)"
        )
        summary["unloaded"] = {"query_us": t, "raw_us": f, "ratio": ratio}

    print(GUARD.report())
    summary["noise"] = GUARD.report()
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--runs", type=int, default=3, help="capacity runs (full mode)")
    parser.add_argument(
        "--only", default="", help="comma list: capacity,step,numpy,cpu,trivial,unloaded"
    )
    parser.add_argument("--json", default="", help="write the figures to this file")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for waiting out other processes and repeating disturbed trials"
        " (default 120, quick 10)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() in every trial once its system is set up (every system alike)",
    )
    args = parser.parse_args()
    FREEZE = args.gc_freeze
    figures = asyncio.run(main(args))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))
