"""The prediction cache seen from the public API: hits, single flight, LRU, late results."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from clipperlite import Clipper
from clipperlite import testing as fake
from helpers import first, version_stats, wait_until

pytestmark = pytest.mark.anyio


async def test_a_repeated_input_hits_the_cache(clipper: Clipper) -> None:
    """The second identical query is answered from the cache: the model runs once."""
    model = fake.counting(lambda xs: [first(x) * 2 for x in xs])
    await clipper.create_endpoint("ep", "doubles", model)
    a = await clipper.predict("ep", [1.5, 0.0])
    b = await clipper.predict("ep", (1.5, 0.0))
    c = await clipper.predict("ep", np.array([1.5, 0.0]))
    assert a.output == b.output == c.output == 3.0
    assert not (a.default or b.default or c.default)
    assert len({a.query_id, b.query_id, c.query_id}) == 3
    assert model.calls == 1
    assert version_stats(clipper, "ep")["cache_hits"] == 2


async def test_identical_concurrent_queries_run_the_model_once(clipper: Clipper) -> None:
    """Identical queries in flight together share one model call; all get its answer."""
    model = fake.counting(fake.slow(0.1, lambda xs: [first(x) + 1 for x in xs]))
    await clipper.create_endpoint("ep", "doubles", model)
    ps = await asyncio.gather(*(clipper.predict("ep", [1.0]) for _ in range(8)))
    assert [p.output for p in ps] == [2.0] * 8
    assert not any(p.default for p in ps)
    assert len({p.query_id for p in ps}) == 8
    assert len(model.inputs) == 1


async def test_apps_sharing_a_model_share_its_cache(clipper: Clipper) -> None:
    """Two apps linked to one model are answered from one cached prediction."""
    model = fake.counting(fake.constant("label"))
    await clipper.deploy_model("m", 1, "strings", model)
    for app in ("a", "b"):
        clipper.register_application(app, "strings", "", 1_000_000)
        clipper.link_model_to_app(app, "m")
    assert (await clipper.predict("a", "hello")).output == "label"
    assert (await clipper.predict("b", "hello")).output == "label"
    assert model.calls == 1


async def test_cache_size_zero_turns_caching_off() -> None:
    """With cache_size=0 every query runs the model."""
    model = fake.counting(fake.constant(1.0))
    async with Clipper(cache_size=0) as c:
        await c.create_endpoint("ep", "doubles", model)
        for _ in range(3):
            assert (await c.predict("ep", [1.0])).output == 1.0
    assert model.calls == 3


async def test_the_cache_evicts_the_least_recently_used() -> None:
    """cache_size bounds the cache; the least recently used answer is evicted first."""
    model = fake.counting(lambda xs: [first(x) for x in xs])
    async with Clipper(cache_size=2) as c:
        await c.create_endpoint("ep", "doubles", model)
        for x in (1.0, 2.0, 1.0, 3.0):  # 2.0 is now the least recently used
            await c.predict("ep", [x])
        assert model.calls == 3
        await c.predict("ep", [1.0])
        await c.predict("ep", [3.0])
        assert model.calls == 3
        await c.predict("ep", [2.0])
        assert model.calls == 4


async def test_a_late_result_is_cached(clipper: Clipper) -> None:
    """A result arriving after its deadline is cached: the next identical query hits."""
    release = threading.Event()
    finished = threading.Event()

    def model(xs: list[Any]) -> list[Any]:
        release.wait()
        finished.set()
        return [first(x) * 10 for x in xs]

    counted = fake.counting(model)
    await clipper.create_endpoint("ep", "doubles", counted, default_output=-1.0, slo_micros=50_000)
    try:
        late = await clipper.predict("ep", [4.0])
        assert late.default
        assert counted.calls == 1
        release.set()
        await wait_until(finished.is_set)
        await asyncio.sleep(0.1)  # let the worker hand the result to the loop
        p = await clipper.predict("ep", [4.0], slo_micros=5_000_000)
        assert (p.output, p.default) == (40.0, False)
        assert counted.calls == 1
    finally:
        release.set()


async def test_a_result_later_than_a_second_is_cached(clipper: Clipper) -> None:
    """A 1.3 s result, far past a 100 ms SLO, is cached: the next identical query hits."""
    finished = threading.Event()

    def model(xs: list[Any]) -> list[Any]:
        time.sleep(1.3)
        finished.set()
        return [first(x) * 10 for x in xs]

    counted = fake.counting(model)
    await clipper.create_endpoint("ep", "doubles", counted, default_output=-1.0, slo_micros=100_000)
    assert (await clipper.predict("ep", [4.0])).default
    await wait_until(finished.is_set)
    await asyncio.sleep(0.1)  # let the worker hand the result to the loop
    p = await clipper.predict("ep", [4.0], slo_micros=5_000_000)
    assert (p.output, p.default) == (40.0, False)
    assert counted.calls == 1


async def test_failures_are_not_cached(clipper: Clipper) -> None:
    """A query that got a default is retried by the model next time, not answered from cache."""
    model = fake.counting(fake.flaky(fail_every=2, func=fake.constant(1.0)))
    await clipper.create_endpoint("ep", "doubles", model, default_output=-1.0)
    assert not (await clipper.predict("ep", [1.0])).default  # call 1 succeeds
    assert not (await clipper.predict("ep", [1.0])).default  # cached
    assert (await clipper.predict("ep", [2.0])).default  # call 2 raises
    assert not (await clipper.predict("ep", [2.0])).default  # call 3: run again
    assert model.calls == 3


async def test_any_inputs_are_keyed_by_type(clipper: Clipper) -> None:
    """For "any" inputs, 1, 1.0 and True are different cache keys; unkeyable ones still run."""
    model = fake.counting(lambda xs: [type(x).__name__ for x in xs])
    await clipper.create_endpoint("ep", "any", model)
    assert (await clipper.predict("ep", 1)).output == "int"
    assert (await clipper.predict("ep", 1.0)).output == "float"
    assert (await clipper.predict("ep", True)).output == "bool"
    assert (await clipper.predict("ep", (1, "a"))).output == "tuple"
    assert (await clipper.predict("ep", [1, "a"])).output == "list"
    assert model.calls == 5
    assert (await clipper.predict("ep", (1, "a"))).output == "tuple"
    assert model.calls == 5
    for _ in range(2):
        assert (await clipper.predict("ep", {"k": 1})).output == "dict"
    assert model.calls == 7


async def test_each_version_has_its_own_cache(clipper: Clipper) -> None:
    """A new version is not answered from the previous version's cached predictions."""
    clipper.register_application("app", "doubles", None, 1_000_000)
    await clipper.deploy_model("m", 1, "doubles", fake.constant("old"))
    clipper.link_model_to_app("app", "m")
    assert (await clipper.predict("app", [1.0])).output == "old"
    await clipper.deploy_model("m", 2, "doubles", fake.constant("new"))
    assert (await clipper.predict("app", [1.0])).output == "new"
    await clipper.stop_model("m", 2)
    await clipper.deploy_model("m", 2, "doubles", fake.constant("newer"))
    assert (await clipper.predict("app", [1.0])).output == "newer"


async def test_a_tight_caller_joining_a_queued_query_moves_it_ahead(clipper: Clipper) -> None:
    """A tight-SLO query identical to one queued by a loose-SLO app is served by its own
    deadline: it goes ahead of the loose backlog instead of waiting behind it."""
    await clipper.deploy_model("m", 1, "doubles", fake.slow(0.02), batch_size=1)
    clipper.register_application("batch", "doubles", -1.0, 5_000_000)
    clipper.register_application("live", "doubles", -1.0, 150_000)
    clipper.link_model_to_app("batch", "m")
    clipper.link_model_to_app("live", "m")
    backlog = [asyncio.create_task(clipper.predict("batch", [float(i)])) for i in range(12)]
    await asyncio.sleep(0.005)  # the backlog is queued: 12 x 20 ms ahead of a newcomer
    tight = await clipper.predict("live", [11.0])  # identical to the last backlog query
    assert not tight.default, tight.default_explanation
    assert tight.output.tolist() == [11.0]
    await asyncio.gather(*backlog)


async def test_callers_of_one_running_query_each_get_their_own_deadline(
    clipper: Clipper,
) -> None:
    """Identical queries with different SLOs share one model call, and each caller gets
    the default at its own deadline: the first (tight) one is not held to the joiner's
    later deadline, nor the joiner to the first one's."""
    gate = threading.Event()

    def held(xs: list[Any]) -> list[float]:
        gate.wait(5)
        return [first(x) for x in xs]

    await clipper.deploy_model("m", 1, "doubles", held)
    clipper.register_application("tight", "doubles", -1.0, 100_000)
    clipper.register_application("loose", "doubles", -2.0, 600_000)
    clipper.link_model_to_app("tight", "m")
    clipper.link_model_to_app("loose", "m")
    t0 = time.perf_counter()
    a = asyncio.create_task(clipper.predict("tight", [3.0]))
    await asyncio.sleep(0.02)  # running now, held by the gate
    b = asyncio.create_task(clipper.predict("loose", [3.0]))  # joins, due later
    pa = await a
    took_a = time.perf_counter() - t0
    assert pa.default and pa.output == -1.0
    assert "deadline" in (pa.default_explanation or "")
    assert took_a < 0.4  # at its own 100 ms deadline, not the joiner's 600 ms
    assert not b.done()
    gate.set()
    pb = await b
    assert (pb.default, pb.output) == (False, 3.0)


async def test_a_tight_joiner_of_a_held_query_gets_its_default_on_time(clipper: Clipper) -> None:
    """A caller joining an identical query with a tighter SLO than its first caller's
    gets the default at its own deadline while the first caller waits on."""
    gate = threading.Event()

    def held(xs: list[Any]) -> list[float]:
        gate.wait(5)
        return [first(x) for x in xs]

    await clipper.deploy_model("m", 1, "doubles", held)
    clipper.register_application("tight", "doubles", -1.0, 100_000)
    clipper.register_application("loose", "doubles", -2.0, 2_000_000)
    clipper.link_model_to_app("tight", "m")
    clipper.link_model_to_app("loose", "m")
    first_caller = asyncio.create_task(clipper.predict("loose", [4.0]))
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    joiner = await clipper.predict("tight", [4.0])
    assert joiner.default and joiner.output == -1.0
    assert time.perf_counter() - t0 < 0.4
    assert not first_caller.done()
    gate.set()
    assert (await first_caller).output == 4.0


def _record(xs: list[Any]) -> list[Any]:
    return [{"label": "cat", "scores": [0.9, 0.1]} for _ in xs]


def _rows(xs: list[Any]) -> Any:
    return np.array([[0.9, 0.1] for _ in xs])  # one array: each output a row view of it


@pytest.mark.anyio
@pytest.mark.parametrize("model", [_record, _rows], ids=["dict", "array rows"])
async def test_a_caller_editing_its_output_changes_no_other_answer(model: Any) -> None:
    """Outputs are each caller's own: editing one (a dict, an array in place) changes
    neither the cache nor what the next caller or a joiner of the same query gets."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", model, slo_micros=2_000_000)
        p1, p2 = await asyncio.gather(
            clipper.predict("a", [1.0]), clipper.predict("a", [1.0])
        )  # the second joins the first (single flight)
        for p in (p1, p2):
            if isinstance(p.output, dict):
                p.output["scores"].append(99)
            else:
                p.output[:] = 0.0
        p3 = await clipper.predict("a", [1.0])  # from the cache
        p3_output = p3.output
        if isinstance(p3_output, dict):
            p3_output["label"] = "dog"
        else:
            p3_output[0] = -1.0
        p4 = await clipper.predict("a", [1.0])
        hits = version_stats(clipper, "a")["cache_hits"]
    assert hits >= 2
    if model is _record:
        assert p4.output == {"label": "cat", "scores": [0.9, 0.1]}
        assert p2.output is not p1.output
    else:
        np.testing.assert_array_equal(p4.output, [0.9, 0.1])
