"""Memory over a long run: RSS and internal table sizes across >= 200k queries.

A Clipper with the cache on serves closed-loop callers sending random keys (a key
space larger than the cache, so it both hits and evicts). Every checkpoint prints
the process's resident set size (VmRSS from /proc/self/status, after a full garbage
collection) and the length of each internal table: the cache and its in-flight
table, the deadline timer's heap, each model's EDF queue (heap and FIFO) and the
app's statistics. After the run it waits one SLO, so entries that only live until
their deadline are gone, and prints them again.

A table that grows with the number of queries (not with the queries in flight)
is a leak; so is RSS that keeps climbing after the cache has filled.

Run::

    python benchmarks/memory.py                      # 200k queries, batch wait 0
    python benchmarks/memory.py --batch-wait-us 200  # the same with delayed batching
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import time
from collections.abc import Sized
from typing import Any

import numpy as np

from clipperlite import Clipper


def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS in /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _len(obj: Any, attr: str) -> int:
    value = getattr(obj, attr, None)
    return len(value) if isinstance(value, Sized) else -1


def tables(clipper: Clipper) -> dict[str, int]:
    """Lengths of the internal tables that could grow per query (private attributes)."""
    out = {
        "cache": len(clipper._cache),
        "cache_inflight": clipper._cache.inflight,
        "timer_heap": len(clipper._timer) if clipper._timer is not None else 0,
    }
    for name, model in clipper._registry.models.items():
        for key, mv in model.versions.items():
            q = mv.batcher.queue
            out[f"{name}:{key}:queue_live"] = len(q)
            out[f"{name}:{key}:queue_heap"] = _len(q, "_heap")
            out[f"{name}:{key}:queue_fifo"] = _len(q, "_fifo")
            out[f"{name}:{key}:running"] = _len(mv.batcher, "_running")
            out[f"{name}:{key}:idle"] = _len(mv.batcher, "_idle")
    for name, app in clipper._registry.apps.items():
        out[f"{name}:latency_buckets"] = _len(app.stats.latency, "_counts")
        out[f"{name}:default_causes"] = len(app.stats.defaults)
    return out


def model(xs: list[Any]) -> list[float]:
    return [float(x.sum()) for x in xs]


async def run(
    *,
    queries: int,
    cache_size: int,
    keys: int,
    width: int,
    concurrency: int,
    slo_ms: float,
    batch_wait_us: float,
    checkpoints: int,
) -> dict[str, Any]:
    rng = random.Random(1)
    base = np.arange(width, dtype=np.float64)
    rows: list[dict[str, Any]] = []
    async with Clipper(cache_size=cache_size) as clipper:
        await clipper.create_endpoint(
            "m",
            "doubles",
            model,
            default_output=-1.0,
            slo_micros=slo_ms * 1000,
            batch_wait_micros=batch_wait_us,
        )
        await clipper.predict("m", base)
        gc.collect()
        start_rss = rss_kib()
        sent = 0
        step = max(concurrency, queries // checkpoints // concurrency * concurrency)
        t0 = time.perf_counter()

        async def caller(n: int) -> None:
            for _ in range(n):
                await clipper.predict("m", base + rng.randrange(keys))

        while sent < queries:
            await asyncio.gather(*(caller(step // concurrency) for _ in range(concurrency)))
            sent += step
            gc.collect()
            rows.append(
                {"queries": sent, "rss_kib": rss_kib(), "s": round(time.perf_counter() - t0, 1)}
                | tables(clipper)
            )
        end_rss = rss_kib()
        await asyncio.sleep(slo_ms / 1000 + 0.2)
        gc.collect()
        after_slo = {"rss_kib": rss_kib()} | tables(clipper)
        m = clipper.metrics()
    return {
        "queries": sent,
        "answered": m["apps"]["m"]["answered"],
        "defaults": m["apps"]["m"]["defaults"],
        "cache_hits": m["models"]["m"]["1"]["cache_hits"],
        "rss_start_kib": start_rss,
        "rss_end_kib": end_rss,
        "rss_growth_kib": end_rss - start_rss,
        "checkpoints": rows,
        "one_slo_later": after_slo,
        "config": {
            "cache_size": cache_size,
            "keys": keys,
            "input_width": width,
            "concurrency": concurrency,
            "slo_ms": slo_ms,
            "batch_wait_us": batch_wait_us,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--cache-size", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--width", type=int, default=64, help="doubles per input")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slo-ms", type=float, default=3000.0)
    parser.add_argument("--batch-wait-us", type=float, default=0.0)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            queries=args.queries,
            cache_size=args.cache_size,
            keys=args.keys,
            width=args.width,
            concurrency=args.concurrency,
            slo_ms=args.slo_ms,
            batch_wait_us=args.batch_wait_us,
            checkpoints=args.checkpoints,
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    cols = [
        "queries",
        "s",
        "rss_kib",
        "cache",
        "cache_inflight",
        "timer_heap",
        "m:1:queue_heap",
        "m:1:queue_fifo",
    ]
    print(f"config: {result['config']}")
    print("  ".join(f"{c:>14s}" for c in cols))
    for row in result["checkpoints"]:
        print("  ".join(f"{row.get(c, '-')!s:>14s}" for c in cols))
    later = result["one_slo_later"]
    print("one SLO later:", "  ".join(f"{c}={later.get(c, '-')}" for c in cols[2:]))
    print(
        f"queries {result['queries']}, answered {result['answered']},"
        f" cache hits {result['cache_hits']}, defaults {result['defaults']}"
    )
    print(
        f"VmRSS start {result['rss_start_kib']} KiB, end {result['rss_end_kib']} KiB"
        f" (growth {result['rss_growth_kib']} KiB)"
    )


if __name__ == "__main__":
    main()
