"""Batch sizing: the NSDI'17 AIMD controller and the fixed batch size, stepped by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipperlite._aimd import AIMD, FixedBatchSize

B = 1.0  # a budget whose 0.9 B is exactly the float 0.9
FAST = 0.5  # well under 0.9 B
HOLD = 0.95  # inside the hold band [0.9 B, B)
SLOW = 1.5  # over B


def grown_to(limit: int, *, budget: float = B, **options: Any) -> AIMD:
    """An AIMD whose max_batch was grown, by full fast batches, to `limit`."""
    aimd = AIMD(budget, **options)
    while aimd.max_batch < limit:
        aimd.observe(aimd.max_batch, FAST * budget)
    assert aimd.max_batch == limit
    return aimd


def test_starts_at_one() -> None:
    """A new controller allows batches of one query."""
    assert AIMD(B).max_batch == 1


def test_full_fast_batch_grows_to_n_plus_two() -> None:
    """A full batch under 0.9 B raises the limit to n + 2."""
    aimd = AIMD(B)
    assert aimd.observe(1, FAST) == 3
    assert aimd.max_batch == 3
    assert aimd.observe(3, FAST) == 5
    assert aimd.observe(5, 0.0) == 7


def test_growth_is_from_the_batch_size_not_the_limit() -> None:
    """A batch larger than the limit (taken before a back-off) grows the limit to its n + 2."""
    aimd = grown_to(3)
    assert aimd.observe(10, FAST) == 12


def test_growth_just_under_the_hold_band() -> None:
    """The largest latency below 0.9 B still counts as fast."""
    aimd = AIMD(B)
    assert aimd.observe(1, math.nextafter(0.9 * B, 0.0)) == 3


def test_non_full_fast_batch_does_not_grow() -> None:
    """A batch smaller than the limit says nothing about larger batches: the limit stays."""
    aimd = grown_to(7)
    assert aimd.observe(6, FAST) == 7
    assert aimd.observe(1, 0.0) == 7


@pytest.mark.parametrize("latency", [0.9 * B, HOLD, math.nextafter(B, 0.0)])
def test_hold_band_keeps_the_limit(latency: float) -> None:
    """A batch with 0.9 B <= L < B leaves the limit unchanged, full or not."""
    aimd = grown_to(5)
    assert aimd.observe(5, latency) == 5
    assert aimd.observe(2, latency) == 5


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (2, 1), (5, 4), (9, 8), (10, 9), (11, 9), (20, 18), (101, 90)]
)
def test_batch_at_or_over_budget_backs_off_to_floor_of_0_9_n(n: int, expected: int) -> None:
    """A batch of n with L >= B sets the limit to max(1, floor(0.9 n))."""
    aimd = grown_to(n) if n % 2 == 1 else grown_to(n + 1)
    assert aimd.observe(n, B) == expected
    assert aimd.max_batch == expected


def test_back_off_uses_the_batch_size_not_the_limit() -> None:
    """A slow small batch cuts the limit to 0.9 of that batch, even when the limit was larger."""
    aimd = grown_to(21)
    assert aimd.observe(5, SLOW) == 4


def test_never_below_one() -> None:
    """However slow the batches, the limit never drops below 1."""
    aimd = AIMD(B)
    for _ in range(5):
        assert aimd.observe(1, 100 * B) == 1
    assert aimd.max_batch == 1


def test_empty_batch_changes_nothing() -> None:
    """An observation of zero queries (nothing ran) leaves the limit alone."""
    aimd = grown_to(5)
    assert aimd.observe(0, SLOW) == 5
    assert aimd.observe(0, 0.0) == 5


def test_ceiling_caps_growth() -> None:
    """Growth stops at the ceiling, and a fast full batch at the ceiling stays there."""
    aimd = AIMD(B, ceiling=4)
    assert aimd.observe(1, FAST) == 3
    assert aimd.observe(3, FAST) == 4
    assert aimd.observe(4, FAST) == 4


def test_initial_size_is_capped_by_the_ceiling() -> None:
    """An initial size above the ceiling starts at the ceiling."""
    assert AIMD(B, initial=50, ceiling=8).max_batch == 8
    assert AIMD(B, initial=6).max_batch == 6


def test_budget_setter_changes_the_bands() -> None:
    """After raising the budget, a latency that was slow becomes fast."""
    aimd = grown_to(3)
    aimd.budget = 2.0
    assert aimd.budget == 2.0
    assert aimd.observe(3, SLOW) == 5
    aimd.budget = 0.5
    assert aimd.observe(5, 0.5) == 4


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("nan")])
def test_budget_setter_rejects_non_positive_budgets(bad: float) -> None:
    """Setting a budget that is not a positive number raises ValueError and keeps the old one."""
    aimd = AIMD(B)
    with pytest.raises(ValueError, match="budget"):
        aimd.budget = bad
    assert aimd.budget == B


@pytest.mark.parametrize(
    ("budget", "options"),
    [
        (0.0, {}),
        (-1.0, {}),
        (float("nan"), {}),
        (B, {"initial": 0}),
        (B, {"ceiling": 0}),
        (B, {"step": 0}),
        (B, {"backoff": 0.0}),
        (B, {"backoff": 1.0}),
        (B, {"backoff": 1.5}),
        (B, {"hold": 0.0}),
        (B, {"hold": 1.1}),
    ],
)
def test_bad_constructor_arguments_raise_value_error(
    budget: float, options: dict[str, Any]
) -> None:
    """A non-positive budget, sizes below 1 or constants out of range raise ValueError."""
    with pytest.raises(ValueError):
        AIMD(budget, **options)


def test_repr_shows_budget_and_limit() -> None:
    """The repr shows the budget and the current limit."""
    assert repr(grown_to(3, budget=0.25)) == "AIMD(budget=0.25, max_batch=3)"


# -- fixed batch size --------------------------------------------------------------------


def test_fixed_batch_size_never_changes() -> None:
    """FixedBatchSize reports its size whatever batches are observed."""
    fixed = FixedBatchSize(8)
    assert fixed.max_batch == 8
    assert fixed.observe(8, 0.0) == 8
    assert fixed.observe(1, 1e9) == 8
    assert fixed.max_batch == 8
    assert repr(fixed) == "FixedBatchSize(8)"


@pytest.mark.parametrize("bad", [0, -3, True, 1.5, "4", None])
def test_fixed_batch_size_rejects_non_positive_ints(bad: Any) -> None:
    """A size that is not a positive int (bools included) raises ValueError naming it."""
    with pytest.raises(ValueError, match="batch_size"):
        FixedBatchSize(bad)


# -- property --------------------------------------------------------------------------------

LATENCIES = st.one_of(
    st.sampled_from(
        [0.0, FAST, math.nextafter(0.9, 0.0), 0.9, HOLD, math.nextafter(1.0, 0.0), 1.0, SLOW]
    ),
    st.floats(min_value=0.0, max_value=3.0),
)


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, list[tuple[int, float]]]:
    ceiling = draw(st.integers(min_value=1, max_value=64))
    steps = draw(
        st.lists(st.tuples(st.integers(min_value=0, max_value=ceiling), LATENCIES), max_size=60)
    )
    return ceiling, steps


@given(runs())
def test_every_step_obeys_the_three_rules_and_the_bounds(
    run: tuple[int, list[tuple[int, float]]],
) -> None:
    """Under any observations the limit stays in [1, ceiling] and each step follows AIMD."""
    ceiling, steps = run
    aimd = AIMD(B, ceiling=ceiling)
    for n, latency in steps:
        before = aimd.max_batch
        after = aimd.observe(n, latency)
        assert after == aimd.max_batch
        assert 1 <= after <= ceiling
        if n < 1:
            expected = before
        elif latency >= B:
            expected = max(1, (9 * n) // 10)
        elif latency < 0.9 * B and n >= before:
            expected = min(ceiling, n + 2)
        else:
            expected = before
        assert after == expected, (before, n, latency)
