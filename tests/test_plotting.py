"""clipperlite.plotting draws what statistics() and history() hold (checked on the axes)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="clipperlite.plotting needs the plot extra (matplotlib)")

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure

import clipperlite
from clipperlite import Clipper, Exp3
from clipperlite.plotting import PolicyRecorder, plot, plot_policy


def feature_sum(xs: list) -> list:  # type: ignore[type-arg]
    return [float(x.sum()) for x in xs]


def labels(ax) -> list[str]:  # type: ignore[no-untyped-def]
    return [line.get_label() for line in ax.get_lines()]


async def busy_clipper(clipper: Clipper) -> None:
    clipper.register_application("fast", "doubles", -1.0, 20_000)
    clipper.register_application("slow", "doubles", -1.0, 80_000)
    await clipper.deploy_model("sum-model", 1, "doubles", feature_sum)
    clipper.link_model_to_app("fast", "sum-model")
    clipper.link_model_to_app("slow", "sum-model")
    for i in range(30):
        await clipper.predict("fast", [1.0, float(i)])
        await clipper.predict("slow", [2.0, float(i)])


@pytest.mark.anyio
async def test_plot_has_three_panels_with_slos_batches_and_budget() -> None:
    """plot() draws latency against each SLO, batch size with max_batch, latency with B."""
    async with Clipper() as clipper:
        await busy_clipper(clipper)
        fig = plot(clipper)
        batches = len(clipper.history("sum-model"))
    assert isinstance(fig, Figure)
    latency, sizes, batch_latency = fig.axes
    assert latency.get_title() == "Query latency against each app's SLO"
    assert [t.get_text() for t in latency.get_xticklabels()] == ["fast", "slow"]
    assert len(latency.patches) == 4  # p50 and p99 per app
    slo_lines = latency.collections
    assert [seg[0][1] for c in slo_lines for seg in c.get_segments()] == [20.0, 80.0]
    assert labels(sizes) == ["sum-model v1 max_batch", "sum-model v1 batch size"]
    assert len(sizes.get_lines()[1].get_xdata()) == batches
    assert sizes.get_xlabel() == "time (s)" and sizes.get_ylabel() == "queries per batch"
    assert labels(batch_latency) == ["sum-model v1 batch latency", "sum-model v1 budget B"]
    budget = batch_latency.get_lines()[1].get_ydata()[0]
    assert budget == pytest.approx(10.0)  # (tightest SLO 20 ms - no batch wait) / 2


@pytest.mark.anyio
async def test_plot_one_model_and_given_axes() -> None:
    """plot(model=...) draws only that model's versions; given Axes are drawn on."""
    async with Clipper() as clipper:
        await busy_clipper(clipper)
        await clipper.deploy_model("other", 1, "doubles", feature_sum)
        await clipper.deploy_model("sum-model", 2, "doubles", feature_sum)
        clipper.link_model_to_app("fast", "sum-model")
        await clipper.predict("fast", [9.0])
        fig = plot(clipper, "sum-model")
        assert all("other" not in label for ax in fig.axes for label in labels(ax))
        assert "sum-model v2 max_batch" in labels(fig.axes[1])
        own = Figure()
        ax = own.add_subplot()
        assert plot(clipper, "sum-model", ax=ax) is own
        assert "sum-model v1 batch size" in labels(ax)
        with pytest.raises(clipperlite.UnknownModelError):
            plot(clipper, "nope")
        with pytest.raises(TypeError):
            plot(clipper, ax=[ax, ax])


@pytest.mark.anyio
async def test_plot_policy_over_recorded_feedback() -> None:
    """plot_policy draws one line per model over the recorded states, the right one rising."""
    async with Clipper(seed=1) as clipper:
        clipper.register_application("a", "integers", -1, 1_000_000, policy="exp4")
        await clipper.deploy_model("right", 1, "integers", lambda xs: [int(x[0]) for x in xs])
        await clipper.deploy_model("wrong", 1, "integers", lambda xs: [-5 for _ in xs])
        clipper.link_model_to_app("a", "right")
        clipper.link_model_to_app("a", "wrong")
        recorder = PolicyRecorder(clipper, "a", maxlen=8)
        recorder.record()
        for i in range(12):
            await recorder.feedback([i % 3, i], i % 3)
        fig = plot_policy(clipper, "a", recorder=recorder)
    assert len(recorder) == 8  # bounded: the oldest dropped
    (ax,) = fig.axes
    assert labels(ax) == ["right", "wrong"]
    right, wrong = (line.get_ydata() for line in ax.get_lines())
    assert len(right) == 8 and right[-1] > 0.5 > wrong[-1]
    assert list(right) == sorted(right)  # every feedback moved weight to the right model
    assert ax.get_ylabel() == "weight share" and "'a'" in ax.get_title()


@pytest.mark.anyio
async def test_plot_policy_now_and_with_exp3_probabilities() -> None:
    """Without a recorder the current shares are bars; an Exp3 object gives probabilities."""
    policy = Exp3(gamma=0.2)
    async with Clipper() as clipper:
        clipper.register_application("a", "doubles", -1.0, 100_000, policy=policy)
        with pytest.raises(ValueError, match="no linked model"):
            plot_policy(clipper, "a")
        for name in ("m1", "m2"):
            await clipper.deploy_model(name, 1, "doubles", feature_sum)
            clipper.link_model_to_app("a", name)
        ax = plot_policy(clipper, "a", policy=policy).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.5, 0.5])
    assert ax.get_ylabel() == "selection probability"


def test_recorder_checks_maxlen() -> None:
    """A recorder's bound must be a positive int."""
    with pytest.raises(ValueError, match="maxlen"):
        PolicyRecorder(Clipper(), "a", maxlen=0)
