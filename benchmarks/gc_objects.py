"""How many objects the garbage collector tracks per query in flight, against floors.

2,000 queries are started at once against a model that is held on a gate, so every
one of them is in flight; the tracked objects (`gc.get_objects()`, collector
disabled meanwhile) that appeared since the queries started are counted, per query.
Three cases, same run:

- a bare task awaiting a future of its own (the floor: Task, coroutine, Future and
  their bookkeeping, which every caller of an async API pays);
- the greedy reference batcher of `capacity.py`;
- clipperlite with default settings (one linked model).

Young collections fire when a batch cycle leaves ~700 new tracked objects alive, so
what a query keeps alive beyond the floor decides how often they run under load.

    python benchmarks/gc_objects.py
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from capacity import Greedy, small_input
from clipperlite import Clipper

N = 2000
_gate = threading.Event()
_runs = 0


def gated(xs: list[Any]) -> list[float]:
    """A model that waits for the gate (so every query stays in flight)."""
    _gate.wait(10)
    return [1.0] * len(xs)


async def per_query(predict: Callable[[str, Any], Awaitable[Any]], release: Any = None) -> float:
    """Tracked objects per query while N queries are in flight."""
    global _runs
    _runs += 1
    gc.collect()
    gc.disable()
    try:
        xs = [small_input(i + _runs * N) for i in range(N)]  # distinct: no cache hits
        before = {id(o) for o in gc.get_objects()}
        tasks = [asyncio.ensure_future(predict("a", x)) for x in xs]
        await asyncio.sleep(0.05)
        during = sum(1 for o in gc.get_objects() if id(o) not in before)
        _gate.set()
        if release is not None:
            release()
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
        _gate.clear()
    return (during - 1) / N  # the tasks' list itself aside


async def main() -> int:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[Any]] = []

    async def bare(app: str, x: Any) -> None:
        fut = loop.create_future()
        futs.append(fut)
        await fut

    def release() -> None:
        for f in futs:
            f.set_result(None)

    floor = await per_query(bare, release)
    futs.clear()
    greedy = Greedy(gated)
    try:
        await per_query(greedy.predict)  # warm: the first run allocates the batcher's state
        ref = await per_query(greedy.predict)
    finally:
        greedy.close()
    async with Clipper() as clipper:
        clipper.register_application("a", "doubles", -1.0, 10_000_000)
        await clipper.deploy_model("m", 1, "doubles", gated, max_queue=100_000)
        clipper.link_model_to_app("a", "m")
        _gate.set()
        await clipper.predict("a", small_input(-1))  # started and warm
        _gate.clear()
        await per_query(clipper.predict)
        ours = await per_query(clipper.predict)
    print(f"tracked objects per query in flight ({N} at once):")
    print(f"  a task awaiting a future (floor)  {floor:5.1f}")
    print(f"  greedy reference batcher          {ref:5.1f}  (+{ref - floor:.1f} over the floor)")
    print(f"  clipperlite, default settings     {ours:5.1f}  (+{ours - floor:.1f} over the floor)")
    print(f"summary: clipperlite keeps {ours - floor:.1f} objects per query beyond the floor,")
    print(f"         greedy {ref - floor:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
