"""What clipperlite's query path costs, against floors measured in the same run.

- cache hit: `await clipper.predict(app, x)` answered from the cache, against the
  in-loop hand-off floor `fut = loop.create_future(); loop.call_soon(fut.set_result,
  None); await fut` (target: <= 4x);
- cache miss, one query at a time, on a trivial model:
  - thread backend, against a raw worker thread fed by a `queue.SimpleQueue` that
    answers through `loop.call_soon_threadsafe` (the floor for crossing to a thread);
  - async backend, against the in-loop hand-off floor;
- cache miss, 64 queries in flight (thread backend), per query, against the raw
  worker thread with 64 items in flight, per item.

Every measurement is repeated in interleaved rounds (floor, then the thing, then the
next pair...) so that drift on this noisy machine hits both alike; each ratio is
the median of the per-round ratios. Inputs are 8 float64s ("doubles").

    python benchmarks/overhead.py            # full run, ~15 s
    python benchmarks/overhead.py --quick    # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from clipperlite import Clipper

_X = np.arange(8, dtype=np.float64)


def trivial(xs: list[Any]) -> list[float]:
    """A model that costs nothing."""
    return [1.0] * len(xs)


async def trivial_async(xs: list[Any]) -> list[float]:
    """The same, as an `async def` (runs on the loop)."""
    return [1.0] * len(xs)


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


async def per_op(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    """Mean µs per awaited call of fn, n calls one after another."""
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


async def per_item_concurrent(fn: Callable[[int], Awaitable[Any]], width: int, n: int) -> float:
    """Mean µs per call with `width` calls in flight (rounds of gather), n calls in all."""
    rounds = max(1, n // width)
    t0 = time.perf_counter()
    for r in range(rounds):
        await asyncio.gather(*(fn(r * width + i) for i in range(width)))
    return (time.perf_counter() - t0) / (rounds * width) * 1e6


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    rounds = 5 if quick else 21
    n_fast, n_slow = (1000, 200) if quick else (3000, 600)
    loop = asyncio.get_running_loop()

    async def handoff() -> None:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut

    raw = RawWorker(loop)
    one = [_X]

    async def raw_call() -> Any:
        return await raw.call(one)

    async def raw_item(i: int) -> Any:
        return await raw.call([_X + i])

    counter = iter(range(10**12))
    async with Clipper(cache_size=10_000) as hit_clipper, Clipper(cache_size=0) as miss_clipper:
        hit_clipper.register_application("hit", "doubles", -1.0, 1_000_000)
        await hit_clipper.deploy_model("m", 1, "doubles", trivial)
        hit_clipper.link_model_to_app("hit", "m")
        await hit_clipper.predict("hit", _X)  # fill the cache
        for name, func in (("thread", trivial), ("async", trivial_async)):
            miss_clipper.register_application(name, "doubles", -1.0, 1_000_000)
            await miss_clipper.deploy_model(name, 1, "doubles", func)
            miss_clipper.link_model_to_app(name, name)

        async def hit() -> Any:
            return await hit_clipper.predict("hit", _X)

        async def miss_thread() -> Any:
            return await miss_clipper.predict("thread", _X + next(counter))

        async def miss_async() -> Any:
            return await miss_clipper.predict("async", _X + next(counter))

        async def miss_thread_i(i: int) -> Any:
            return await miss_clipper.predict("thread", _X + i)

        pairs: list[tuple[str, str, Callable[[], Awaitable[float]], Callable[[], Awaitable[float]]]]
        pairs = [
            (
                "cache hit predict",
                "future hand-off",
                lambda: per_op(hit, n_fast),
                lambda: per_op(handoff, n_fast),
            ),
            (
                "miss, thread backend",
                "raw SimpleQueue thread",
                lambda: per_op(miss_thread, n_slow),
                lambda: per_op(raw_call, n_slow),
            ),
            (
                "miss, async backend",
                "future hand-off",
                lambda: per_op(miss_async, n_fast),
                lambda: per_op(handoff, n_fast),
            ),
            (
                "miss, thread, 64 in flight",
                "raw thread, 64 in flight",
                lambda: per_item_concurrent(miss_thread_i, 64, n_fast * 2),
                lambda: per_item_concurrent(raw_item, 64, n_fast * 2),
            ),
        ]
        for _, _, thing, floor in pairs:  # warm up every path once
            await thing()
            await floor()
        samples: dict[str, list[tuple[float, float]]] = {p[0]: [] for p in pairs}
        for _ in range(rounds):
            for name, _, thing, floor in pairs:
                f = await floor()
                t = await thing()
                samples[name].append((t, f))
        batches = hit_clipper.metrics()["models"], miss_clipper.metrics()["models"]
    raw.close()

    print(f"{rounds} interleaved rounds; µs per query (median over rounds)")
    print(f"{'what':28s} {'µs':>8s}   {'floor':26s} {'µs':>8s} {'ratio':>7s} {'ratio IQR':>13s}")
    ratios = {}
    for name, floor_name, _, _ in pairs:
        ts = [t for t, _ in samples[name]]
        fs = [f for _, f in samples[name]]
        rs = sorted(t / f for t, f in samples[name])
        q1, q3 = rs[len(rs) // 4], rs[(3 * len(rs)) // 4]
        ratios[name] = statistics.median(rs)
        t_us, f_us = statistics.median(ts), statistics.median(fs)
        print(
            f"{name:28s} {t_us:8.1f}   {floor_name:26s} {f_us:8.1f}"
            f" {ratios[name]:6.2f}x  [{q1:5.2f}, {q3:5.2f}]"
        )
    conc = batches[1]["thread"]["1"]
    print(
        f"(64 in flight, thread backend: the batcher ran {conc['batches']} batches,"
        f" mean size {conc['mean_batch_size']:.1f})"
    )
    print()
    print(
        f"summary: cache-hit predict = {ratios['cache hit predict']:.2f}x the future hand-off"
        f" (target <= 4x); miss = {ratios['miss, thread backend']:.2f}x a raw thread round trip"
        f" (thread), {ratios['miss, async backend']:.2f}x the hand-off (async),"
        f" {ratios['miss, thread, 64 in flight']:.2f}x raw per item at 64 in flight"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 30 s)")
    sys.exit(asyncio.run(main(parser.parse_args())))
