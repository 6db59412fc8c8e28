"""The deadline timer on a real event loop (short deadlines, generous margins)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clipperlite._timers import DeadlineTimer

pytestmark = pytest.mark.anyio

SOON = 0.01  # seconds ahead: short enough to keep the suite fast
MARGIN = 2.0  # seconds: how long we wait at most for a timer that should have fired


def pending_future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def test_future_gets_its_value_at_its_deadline_not_before() -> None:
    """A registered future is pending until its deadline and then holds the value."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    fut = pending_future()
    resolved_at: list[float] = []
    fut.add_done_callback(lambda _: resolved_at.append(loop.time()))
    deadline = loop.time() + SOON
    timer.add(deadline, fut, "default")
    await asyncio.sleep(0)
    assert not fut.done()
    assert await asyncio.wait_for(fut, MARGIN) == "default"
    await asyncio.sleep(0)  # let the done callback run
    assert resolved_at[0] >= deadline
    assert len(timer) == 0


async def test_each_future_gets_its_own_value_in_deadline_order() -> None:
    """Several futures fire in deadline order, each with the value it was registered with."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    order: list[str] = []
    futs = {name: pending_future() for name in ("late", "early", "middle")}
    for fut in futs.values():
        fut.add_done_callback(lambda f: order.append(f.result()))
    now = loop.time()
    timer.add(now + 0.015, futs["late"], "late")
    timer.add(now + 0.005, futs["early"], "early")
    timer.add(now + 0.010, futs["middle"], "middle")
    await asyncio.wait_for(asyncio.gather(*futs.values()), MARGIN)
    await asyncio.sleep(0)  # let the done callbacks run
    assert order == ["early", "middle", "late"]


async def test_a_done_future_is_left_untouched() -> None:
    """A future answered before its deadline keeps its answer; no error is raised."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    answered, cancelled, waiting = (pending_future() for _ in range(3))
    answered.set_result("model output")
    cancelled.cancel()
    deadline = loop.time() + SOON
    for fut in (answered, cancelled, waiting):
        timer.add(deadline, fut, "default")
    await asyncio.wait_for(waiting, MARGIN)
    assert answered.result() == "model output"
    assert cancelled.cancelled()


async def test_answer_arriving_before_the_deadline_wins() -> None:
    """A future answered after registration but before its deadline keeps that answer."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    fut, witness = pending_future(), pending_future()
    timer.add(loop.time() + SOON, fut, "default")
    timer.add(loop.time() + 2 * SOON, witness, "default")
    fut.set_result("model output")
    await asyncio.wait_for(witness, MARGIN)
    assert fut.result() == "model output"


async def test_an_earlier_deadline_re_arms_the_timer() -> None:
    """Adding a deadline earlier than every pending one makes it fire on time."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    far, near = pending_future(), pending_future()
    timer.add(loop.time() + 60.0, far, "far")
    timer.add(loop.time() + SOON, near, "near")
    assert await asyncio.wait_for(near, MARGIN) == "near"
    assert not far.done()
    assert len(timer) == 1
    timer.close()


async def test_the_timer_re_arms_for_the_next_deadline_after_firing() -> None:
    """After one deadline fires, a later one still fires without another add."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    first, second = pending_future(), pending_future()
    timer.add(loop.time() + SOON, first, 1)
    timer.add(loop.time() + 2 * SOON, second, 2)
    assert await asyncio.wait_for(first, MARGIN) == 1
    assert not second.done()
    assert await asyncio.wait_for(second, MARGIN) == 2


async def test_a_later_deadline_does_not_delay_an_earlier_one() -> None:
    """Adding a later deadline keeps the earlier one armed."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    near, far = pending_future(), pending_future()
    timer.add(loop.time() + SOON, near, "near")
    timer.add(loop.time() + 60.0, far, "far")
    assert await asyncio.wait_for(near, MARGIN) == "near"
    timer.close()


async def test_a_deadline_in_the_past_fires_promptly() -> None:
    """A deadline already passed is given its value on the next loop iterations."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    fut = pending_future()
    timer.add(loop.time() - 1.0, fut, "late")
    assert await asyncio.wait_for(fut, MARGIN) == "late"


async def test_expire_all_gives_every_pending_future_its_value_now() -> None:
    """expire_all resolves every pending future at once, each with its own value by default."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    a, b, done = (pending_future() for _ in range(3))
    done.set_result("kept")
    timer.add(loop.time() + 60.0, a, "a")
    timer.add(loop.time() + 60.0, b, "b")
    timer.add(loop.time() + 60.0, done, "ignored")
    timer.expire_all()
    assert (a.result(), b.result(), done.result()) == ("a", "b", "kept")
    assert len(timer) == 0


async def test_expire_all_with_a_value_overrides_the_registered_ones() -> None:
    """expire_all(value) gives that value to every pending future."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    a, b = pending_future(), pending_future()
    timer.add(loop.time() + 60.0, a, "a")
    timer.add(loop.time() + 60.0, b, "b")
    timer.expire_all("shutdown")
    assert (a.result(), b.result()) == ("shutdown", "shutdown")


async def test_timer_keeps_working_after_expire_all() -> None:
    """A deadline added after expire_all still fires."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    old = pending_future()
    timer.add(loop.time() + 60.0, old, "old")
    timer.expire_all()
    fut = pending_future()
    timer.add(loop.time() + SOON, fut, "new")
    assert await asyncio.wait_for(fut, MARGIN) == "new"


async def test_close_drops_every_entry_without_resolving() -> None:
    """After close, registered futures stay pending past their deadlines."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop)
    fut = pending_future()
    timer.add(loop.time() + 0.005, fut, "default")
    timer.close()
    assert len(timer) == 0
    witness = loop.create_future()
    loop.call_later(0.03, witness.set_result, None)
    await witness  # well past the dropped deadline
    assert not fut.done()
    fut.cancel()
