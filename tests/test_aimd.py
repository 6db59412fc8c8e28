"""Batch sizing: the NSDI'17 AIMD controller and the fixed batch size, stepped by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipperlite._aimd import AIMD, FixedBatchSize, LatencyModel

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


def overrun(aimd: AIMD, n: int, latency: float = B, times: int = 3) -> int:
    """Observe `times` batches of n at `latency`; the limit after the last."""
    for _ in range(times):
        limit = aimd.observe(n, latency)
    return limit


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (2, 1), (5, 4), (9, 8), (10, 9), (11, 9), (20, 18), (101, 90)]
)
def test_three_overruns_in_four_back_off_to_floor_of_0_9_n(n: int, expected: int) -> None:
    """Three batches with L >= B in the last four set the limit to max(1, floor(0.9 n)),
    n being the last batch's size (each size seen once: no fit to confirm it)."""
    aimd = AIMD(B, initial=n)
    assert aimd.observe(1000, B) == n  # one overrun: no change
    assert aimd.observe(2000, HOLD) == n
    assert aimd.observe(3000, SLOW) == n  # two in four: no change
    assert aimd.observe(n, B) == expected  # three in four: back off
    assert aimd.max_batch == expected


def test_two_overruns_at_one_size_back_off() -> None:
    """Two batches of the same size at or over B confirm each other: that is the batch
    size, not a stall, and the limit backs off at the second."""
    aimd = AIMD(B, initial=10)
    assert aimd.observe(10, SLOW) == 10
    # floor(0.9 * 10) = 9, lowered to what the fit allows for 0.9 B (0.15 per item: 6),
    # but never below half the batch.
    assert aimd.observe(10, SLOW) == 6


def test_one_stall_never_shrinks() -> None:
    """A single batch far over budget (a GC, a late GIL) leaves the limit where it was."""
    aimd = grown_to(21)
    assert aimd.observe(21, 100 * B) == 21
    assert aimd.observe(21, FAST) == 23


def test_back_off_uses_the_batch_size_not_the_limit() -> None:
    """Slow small batches cut the limit to 0.9 of that batch, even when the limit was larger."""
    aimd = grown_to(21)
    assert aimd.observe(5, SLOW) == 21  # a stall
    assert aimd.observe(5, SLOW) == 21  # the fit (fast larger batches) disagrees
    assert aimd.observe(5, SLOW) == 4  # three overruns in four


def test_the_fit_backs_off_before_three_overruns() -> None:
    """Batches of about n that reach B (two of them: confirmed), with the fit agreeing,
    back off at the second: latency the batch size explains is not a stall."""
    aimd = AIMD(1.0, initial=40)
    for n in (10, 10, 20, 20):  # a model costing 0.025 n: the fit sees the slope
        aimd.observe(n, 0.025 * n)
    assert aimd.max_batch == 40
    assert aimd.observe(40, 1.1) == 40  # one overrun: not yet
    # Confirmed: floor(0.9 * 40) = 36, or what the fit allows for 0.9 B, if lower.
    assert 20 <= aimd.observe(40, 1.1) <= 36


def test_a_fast_batch_contradicts_an_old_fit() -> None:
    """A batch under 0.9 B never backs off on the fit (its older samples are outdated)."""
    aimd = AIMD(1.0, initial=40)
    aimd.observe(40, 1.2)
    aimd.observe(40, 1.2)
    limit = aimd.max_batch
    assert aimd.observe(40, FAST) >= limit


def test_slow_start_doubles_within_what_the_fit_allows() -> None:
    """From the first batch the limit grows fast, but never past the size the fit of
    latency against batch size expects to take 0.9 B, and then by AIMD's +2."""
    budget = 0.010
    aimd = AIMD(budget)
    seen = []
    for _ in range(12):
        n = aimd.max_batch
        aimd.observe(n, 0.002 + 0.00005 * n)  # 2 ms + 0.05 ms per item
        seen.append(aimd.max_batch)
    # 0.9 B = 9 ms: the fit allows 140 items.
    assert seen[:6] == [3, 6, 12, 24, 48, 96]
    # The fit stops the doubling at 140; a batch of 140 takes 9 ms, in the hold band.
    assert seen[6:] == [140] * 6


def test_a_backlog_restarts_the_slow_start() -> None:
    """A queue of three full batches or more for three batches in a row grows fast again."""
    aimd = AIMD(1.0, initial=10)
    aimd.slow_start = False
    for _ in range(3):  # a model of 0.01 n seconds
        aimd.observe(aimd.max_batch, 0.01 * aimd.max_batch, queued=0)
    assert aimd.max_batch == 16 and not aimd.slow_start
    for _ in range(2):
        aimd.observe(aimd.max_batch, 0.01 * aimd.max_batch, queued=1000)
    assert not aimd.slow_start
    aimd.observe(aimd.max_batch, 0.01 * aimd.max_batch, queued=1000)
    assert aimd.slow_start
    before = aimd.max_batch
    assert aimd.observe(before, 0.01 * before, queued=1000) == 2 * before


def test_never_below_one() -> None:
    """However slow the batches, the limit never drops below 1."""
    aimd = AIMD(B)
    for _ in range(8):
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
    assert overrun(aimd, 5, 0.5) == 4


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


# -- the latency model -------------------------------------------------------------------------


def test_latency_model_recovers_a_line() -> None:
    """On clean batches the fit is the model's own a + b n."""
    model = LatencyModel()
    for n in (1, 2, 4, 8, 16, 32, 64, 128, 64, 32):
        model.observe(n, 0.002 + 0.00005 * n)
    assert model.estimate(100) == pytest.approx(0.007, rel=1e-6)
    assert model.limit(0.009) == 140
    assert model.confirmed(100) == pytest.approx(0.007, rel=1e-6)


def test_latency_model_ignores_a_stall() -> None:
    """A stall among two or more batches of its size does not move the estimate."""
    model = LatencyModel()
    for n in (10, 10, 50, 50, 50):
        model.observe(n, 0.001 * n)
    before = model.estimate(30)
    model.observe(50, 10.0)
    assert model.estimate(30) == pytest.approx(before)


def test_latency_model_with_one_size_is_proportional() -> None:
    """With one batch size seen, growth assumes latency in proportion to n (an upper
    bound for a model with a fixed cost); the estimate is not extrapolated past it."""
    model = LatencyModel()
    assert model.estimate(5) == 0.0 and model.limit(1.0) is None
    model.observe(4, 0.004)
    assert model.estimate(2) == pytest.approx(0.002)
    assert model.estimate(8) == pytest.approx(0.004)
    assert model.limit(0.009) == 9
    assert model.confirmed(8) is None  # one sample confirms nothing


def test_fixed_batch_size_estimates_latency() -> None:
    """A fixed batch size still learns the latency admission control estimates from."""
    fixed = FixedBatchSize(8)
    assert fixed.estimate(8) == 0.0
    fixed.observe(8, 0.08)
    fixed.observe(8, 0.08)
    assert fixed.estimate(8) == pytest.approx(0.08)


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
def test_the_limit_stays_within_its_bounds(run: tuple[int, list[tuple[int, float]]]) -> None:
    """Under any observations the limit stays in [1, ceiling]."""
    ceiling, steps = run
    aimd = AIMD(B, ceiling=ceiling)
    for n, latency in steps:
        after = aimd.observe(n, latency, queued=n * 4)
        assert after == aimd.max_batch
        assert 1 <= after <= ceiling


@given(runs())
def test_every_step_follows_its_rule(run: tuple[int, list[tuple[int, float]]]) -> None:
    """Growth only on a full batch under 0.9 B, at least by the step, at most doubling;
    shrinking only on a back-off, to between n / 2 and floor(0.9 n)."""
    ceiling, steps = run
    aimd = AIMD(B, ceiling=ceiling)
    for n, latency in steps:
        before = aimd.max_batch
        after = aimd.observe(n, latency)
        if n < 1:
            assert after == before
        elif after > before:
            assert n >= before and latency < 0.9 * B
            assert min(ceiling, n + 2) <= after <= min(ceiling, max(2 * n, n + 2))
        elif after < before:
            assert max(1, n // 2) <= after <= max(1, (9 * n) // 10)


@given(
    st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=400),
    st.floats(min_value=1.0, max_value=1e6),
)
def test_a_stall_never_shrinks_the_limit(sizes: list[int], stall_n: int, factor: float) -> None:
    """After any history of batches under budget (a model of 2 + 0.04 n ms against
    B = 10 ms, sizes within what it allows), one stall of any size and length leaves the
    limit as it was or larger."""
    budget = 0.010
    aimd = AIMD(budget, ceiling=10_000)
    for n in sizes:
        aimd.observe(n, (0.002 + 0.00004 * n) * 0.999)
    before = aimd.max_batch
    assert aimd.observe(stall_n, budget * factor) >= before
