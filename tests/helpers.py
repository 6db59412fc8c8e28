"""Helpers shared by the test modules: pollers, metrics lookups, leak probes, test models.

pytest's default ("prepend") import mode puts `tests/` on `sys.path`, so a test module
imports these with `from helpers import ...`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from clipperlite import Clipper, Prediction

# -- waiting --------------------------------------------------------------------------------


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll `check` on the loop until it is true; say whether it was within `timeout` seconds."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll `predicate` on the loop until it is true (fail after `timeout` seconds)."""
    if not await eventually(predicate, timeout):
        raise AssertionError("condition not reached in time")


# -- metrics ----------------------------------------------------------------------------------


def app_stats(c: Clipper, app: str) -> dict[str, Any]:
    """The app's entry in metrics()."""
    stats: dict[str, Any] = c.metrics()["apps"][app]
    return stats


def version_stats(c: Clipper, model: str, version: int | str = 1) -> dict[str, Any]:
    """A model version's entry in metrics()."""
    stats: dict[str, Any] = c.metrics()["models"][model][str(version)]
    return stats


def first(x: Any) -> float:
    """The first element of a validated numeric input, as a float."""
    return float(np.asarray(x)[0])


# -- what clipperlite may leave behind --------------------------------------------------------


def clipperlite_threads() -> list[str]:
    """Names of the live threads started by clipperlite."""
    return [t.name for t in threading.enumerate() if t.name.startswith("clipperlite")]


def clipperlite_tasks() -> list[str]:
    """Names of the pending asyncio tasks started by clipperlite (on the running loop)."""
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if not t.done() and t.get_name().startswith("clipperlite")
    ]


def worker_processes() -> list[int]:
    """Live (not zombie) clipperlite worker processes that are children of this process."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z" and b"clipperlite._backends" in cmdline:
            found.append(int(entry))
    return found


# -- models -----------------------------------------------------------------------------------


def sync_model(seconds: float) -> Callable[[list[Any]], list[float]]:
    """A model sleeping `seconds` per batch, answering each input's first element."""

    # Nested, so cloudpickle ships it by value: a worker process cannot import this module.
    def model(xs: list[Any]) -> list[float]:
        import time

        time.sleep(seconds)
        return [float(x[0]) for x in xs]

    return model


def async_model(seconds: float) -> Callable[[list[Any]], Awaitable[list[float]]]:
    """The same as an `async def` model, awaiting `seconds` per batch on the loop."""

    async def model(xs: list[Any]) -> list[float]:
        await asyncio.sleep(seconds)
        return [float(x[0]) for x in xs]

    return model


class Gate:
    """A model that blocks each batch until the test opens it; records the inputs it saw."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        self.seen: list[float] = []

    def __call__(self, xs: list[Any]) -> list[float]:
        self.seen.extend(float(x[0]) for x in xs)
        self.started.set()
        self.open.wait(10)
        return [float(x[0]) for x in xs]


async def gated_query(
    clipper: Clipper, app: str, gate: Gate, x: float, **options: Any
) -> asyncio.Task[Prediction]:
    """Serve `app` from `gate` (default -1.0, a 5 s SLO, `options`); start a query for [x]."""
    await clipper.create_endpoint(
        app, "doubles", gate, default_output=-1.0, slo_micros=5_000_000, **options
    )
    return asyncio.create_task(clipper.predict(app, [x]))
