"""clipperlite against other Python batchers, on the model and criteria of `capacity.py`.

Model `time.sleep(2 ms + 0.05 ms x n)`, SLO 20 ms, one replica (one batch in flight),
open-loop Poisson, p99 from scheduled arrival <= SLO and <= 1% defaults; the highest
sustained rate of each system is found by bisection, all in this run:

- clipperlite with default settings, and the greedy reference batcher of
  `capacity.py`;
- Ray Serve's `@serve.batch` (`ray[serve]`), best cell of a grid of
  `max_batch_size` x `batch_wait_timeout_s`, the batch handler running the model
  on one worker thread. Outside a Serve deployment `serve.batch` asks for the
  replica's context (`serve.get_replica_context()`, to compare the batch size with
  `max_ongoing_requests`): it is **stubbed** here with an unbounded
  `max_ongoing_requests`; nothing else of Ray runs (no cluster, no proxy), so this
  measures its batching queue alone, its best case;
- `batched` (`batched.aio.AsyncBatchProcessor`), best cell of a grid of
  `batch_size` x `timeout_ms` (it runs a plain function with `asyncio.to_thread`).

A peer that is not installed is skipped (`pip install 'clipperlite[bench]'` installs
`batched`; Ray Serve is large and optional: `--ray-site PATH` adds another
interpreter's site-packages, read-only, at the end of `sys.path`).

    python benchmarks/peers.py            # full run, ~10 minutes
    python benchmarks/peers.py --quick    # smoke run, ~2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from capacity import (
    GUARD,
    SLO_MICROS,
    SYSTEMS,
    Run,
    _Answer,
    capacity,
    direct_capacity,
    sleep_model,
    small_input,
)
from loadgen import LoadResult, run_load

Predict = Callable[[str, Any], Awaitable[Any]]


def _runner(make: Callable[[], tuple[Predict, Callable[[], None]]]) -> Run:
    """A `capacity` system from a factory of (predict, close)."""

    async def run(
        func: Callable[[list[Any]], Any],
        make_input: Callable[[int], Any],
        rate: float,
        *,
        warmup: float,
        duration: float,
        seed: int,
    ) -> LoadResult:
        predict, close = make()
        try:
            return await run_load(
                None,
                "bench",
                make_input,
                rate=rate,
                duration=duration,
                warmup=warmup,
                seed=seed,
                slo_micros=SLO_MICROS,
                predict=predict,
            )
        finally:
            close()

    return run


def ray_serve(max_batch: int, wait_s: float) -> Run | None:
    """`@serve.batch` around the model on one worker thread (context check stubbed)."""
    try:
        from ray import serve
    except ImportError:
        return None
    # Outside a deployment there is no replica context: stub the one field it reads.
    stub = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=10**9))
    serve.get_replica_context = lambda: stub

    def make() -> tuple[Predict, Callable[[], None]]:
        pool = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_s)  # type: ignore[misc]
        async def handle(xs: list[Any]) -> list[Any]:
            return await loop.run_in_executor(pool, sleep_model, xs)  # type: ignore[no-any-return]

        async def predict(app: str, x: Any) -> _Answer:
            return _Answer(await handle(x))

        return predict, lambda: pool.shutdown(wait=False)

    return _runner(make)


def batched_peer(batch_size: int, timeout_ms: float) -> Run | None:
    """`batched.aio.AsyncBatchProcessor` over the model."""
    try:
        from batched.aio import AsyncBatchProcessor
    except ImportError:
        return None

    def make() -> tuple[Predict, Callable[[], None]]:
        proc = AsyncBatchProcessor(sleep_model, batch_size=batch_size, timeout_ms=timeout_ms)

        async def predict(app: str, x: Any) -> _Answer:
            return _Answer(await proc(x))

        def close() -> None:
            task = proc._task  # it has no public close; its loop task is cancelled
            if task is not None:
                task.cancel()

        return predict, close

    return _runner(make)


async def best_cell(
    name: str,
    cells: dict[str, Run],
    ideal: float,
    *,
    steps: int,
    warmup: float,
    duration: float,
) -> tuple[str, float]:
    """The cell with the highest sustained rate (each found by bisection)."""
    caps = await capacity(
        cells,
        sleep_model,
        small_input,
        0.1 * ideal,
        1.05 * ideal,
        steps=steps,
        warmup=warmup,
        duration=duration,
        label=name[:6],
        seed0=50,
    )
    best = max(caps, key=caps.__getitem__)
    for cell, rate in caps.items():
        print(f"    {name} {cell}: {rate:,.0f}/s")
    return best, caps[best]


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    print(
        f"{platform.node()} {platform.python_version()};"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; python {' '.join(sys.argv)}"
    )
    GUARD.extra_s = 20.0 if quick else 180.0
    steps = 3 if quick else 5
    warm, dur = (0.5, 1.0) if quick else (1.0, 2.0)
    n_half = round((SLO_MICROS / 2e6 - 0.002) / 0.00005)
    ideal = direct_capacity(n_half, 0.3 if quick else 1.0)
    print(f"ideal (model called directly at n={n_half}): {ideal:,.0f} items/s")
    ours = await capacity(
        SYSTEMS,
        sleep_model,
        small_input,
        0.4 * ideal,
        1.05 * ideal,
        steps=steps,
        warmup=warm,
        duration=dur,
        label="base",
    )
    results = {"clipperlite": ("defaults", ours["clipperlite"]), "greedy": ("", ours["greedy"])}
    batches = (32, 256) if quick else (32, 128, 256)
    waits_s = (0.001, 0.005) if quick else (0.0005, 0.002, 0.005)
    ray_cells = {
        f"max_batch={b} wait={w * 1e3:g}ms": ray_serve(b, w) for b in batches for w in waits_s
    }
    if all(r is not None for r in ray_cells.values()):
        results["ray serve @serve.batch"] = await best_cell(
            "ray",
            ray_cells,
            ideal,
            steps=steps,
            warmup=warm,
            duration=dur,  # type: ignore[arg-type]
        )
    else:
        print("ray serve: not installed, skipped")
    waits_ms = (1.0, 5.0) if quick else (0.5, 2.0, 5.0)
    b_cells = {
        f"batch_size={b} timeout={t:g}ms": batched_peer(b, t) for b in batches for t in waits_ms
    }
    if all(r is not None for r in b_cells.values()):
        results["batched"] = await best_cell(
            "batched",
            b_cells,
            ideal,
            steps=steps,
            warmup=warm,
            duration=dur,  # type: ignore[arg-type]
        )
    else:
        print("batched: not installed, skipped")
    c = results["clipperlite"][1]
    print()
    print(f"{'system':24s} {'best cell':28s} {'q/s':>8s} {'x ideal':>8s} {'clipperlite x':>14s}")
    for name, (cell, rate) in results.items():
        print(
            f"{name:24s} {cell:28s} {rate:8,.0f} {rate / ideal:8.2f}"
            f" {(c / rate if rate else float('inf')):14.2f}"
        )
    print(GUARD.report())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument(
        "--ray-site", default="", help="another interpreter's site-packages holding ray"
    )
    args = parser.parse_args()
    if args.ray_site:
        sys.path.append(args.ray_site)
    sys.exit(asyncio.run(main(args)))
