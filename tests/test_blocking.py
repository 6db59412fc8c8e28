"""No blocking call on the event loop: the worst p99 bug there is (blockbuster watches)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from clipperlite import Clipper
from clipperlite import testing as fake

pytestmark = pytest.mark.anyio


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    """Make any blocking call made on the event loop's thread raise, but the one wait
    the loop makes on purpose: a thread replica's hand-off waits at most 1 ms for its
    worker to take the batch, so the worker does not wait for the GIL instead."""
    with blockbuster_ctx() as bb:
        bb.functions["threading.Lock.acquire"].can_block_in(
            "clipperlite/_backends/_thread.py", "run_batch"
        )
        yield bb


@pytest.mark.parametrize("backend", ["thread", "process", "async"])
async def test_the_query_path_never_blocks_the_loop(blockbuster: BlockBuster, backend: str) -> None:
    """Deploy, predict (miss and hit), predict_batch, feedback, scaling, metrics,
    stop_model and stop, on every backend, without one blocking call on the loop."""
    func = fake.async_slow(0.001) if backend == "async" else fake.echo
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", func, backend=backend)
        for i in range(10):
            assert not (await clipper.predict("a", [float(i)])).default
        assert not (await clipper.predict("a", [0.0])).default  # a cache hit
        assert len(await clipper.predict_batch("a", [[1.0], [2.0], [3.0]])) == 3
        await clipper.feedback("a", [1.0], [1.0])
        await clipper.set_num_replicas("a", 2)
        await clipper.set_num_replicas("a", 1)
        clipper.metrics()
        await clipper.stop_model("a")
