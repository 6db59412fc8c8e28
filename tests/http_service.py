"""A service for `clipperlite serve http_service:make` (used by tests/test_http_serve.py).

Clipper's quickstart app "hello-world" (a sum of doubles), the "simple-example" app of
Clipper's example_client.py, and "slow", whose model waits for a release file named by
$CLIPPERLITE_TEST_RELEASE (and appends each batch's size to $CLIPPERLITE_TEST_ENTERED),
so a test can hold queries in flight while it sends SIGTERM.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipperlite import Clipper


def feature_sum(xs: list[np.ndarray]) -> list[float]:
    """Clipper's quickstart model."""
    return [float(x.sum()) for x in xs]


def held(xs: list[Any]) -> list[float]:
    """Note the batch, then wait (at most 20 s) for the release file."""
    entered = os.environ.get("CLIPPERLITE_TEST_ENTERED")
    release = os.environ.get("CLIPPERLITE_TEST_RELEASE")
    if entered:
        with open(entered, "a") as f:
            f.write(f"{len(xs)}\n")
    end = time.monotonic() + 20
    while release and not Path(release).exists() and time.monotonic() < end:
        time.sleep(0.01)
    return [float(x[0]) for x in xs]


async def make() -> Clipper:
    """A started Clipper with the three apps deployed."""
    clipper = await Clipper().start()
    clipper.register_application("hello-world", "doubles", -1.0, 100_000)
    await clipper.deploy_model("sum-model", 1, "doubles", feature_sum)
    clipper.link_model_to_app("hello-world", "sum-model")
    await clipper.create_endpoint("simple-example", "doubles", feature_sum, slo_micros=1_000_000)
    await clipper.create_endpoint("slow", "doubles", held, slo_micros=30_000_000)
    return clipper
