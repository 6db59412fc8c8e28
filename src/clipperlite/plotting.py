"""Plots of a running Clipper: latency against the SLOs, batch sizes, policy weights.

Built on the public API only (`statistics()`, `history()`, `get_policy_state()`), with
matplotlib (extra `plot`: ``pip install 'clipperlite[plot]'``). Figures are made with
`matplotlib.figure.Figure`, not pyplot, so nothing global changes and a notebook shows
each returned figure once::

    from clipperlite.plotting import plot
    plot(clipper)                      # every model version that has run a batch
    plot(clipper, "sum-model")         # the versions of one model

What a plot shows:

- query latency: each app's p50 and p99 (from `statistics()`, since it was registered)
  against its SLO, on a log scale (with `model`, the apps linked to it);
- batch size over time, each batch a point, and AIMD's `max_batch` after it as a step
  line (from `history()`, the last `history_size` batches of a version);
- batch latency over time against the model's budget ``B = max(0.5 ms, (SLO -
  batch_wait) / 2)``, with SLO the tightest SLO of the apps linked to the model (the
  rule in docs/concepts/batching.md; 100 ms while no app links the model).

`plot_policy` draws what a selection policy believes: each model's share of the
weight, over feedback when a `PolicyRecorder` kept the states, now otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import clipperlite

try:
    from matplotlib.figure import Figure
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "clipperlite.plotting needs matplotlib: pip install 'clipperlite[plot]'"
    ) from None

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["PolicyRecorder", "plot", "plot_policy"]

_MS = 1_000.0


class PolicyRecorder:
    """Keeps the recent policy states of one app, so `plot_policy` can draw their course.

    The Clipper keeps only an app's current state; a recorder takes a snapshot
    (`Clipper.get_policy_state`, a copy of plain values) each time `record` is called,
    or after each feedback sent through `feedback`. It holds at most `maxlen` states,
    the oldest dropped first.

    Args:
        clipper: The Clipper the app is registered with.
        app: The application's name.
        maxlen: The most states kept.

    Raises:
        ValueError: `maxlen` is not a positive int.
    """

    def __init__(self, clipper: clipperlite.Clipper, app: str, *, maxlen: int = 1000) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive int, got {maxlen!r}")
        self.clipper = clipper
        self.app = app
        self._states: deque[Any] = deque(maxlen=maxlen)

    def __repr__(self) -> str:
        return f"<PolicyRecorder app={self.app!r}: {len(self._states)} states>"

    def __len__(self) -> int:
        return len(self._states)

    @property
    def states(self) -> list[Any]:
        """The recorded states, oldest first."""
        return list(self._states)

    def record(self) -> None:
        """Take a snapshot of the app's policy state now (none while no model is linked).

        Raises:
            clipperlite.UnknownApplicationError: The app is not registered.
        """
        state = self.clipper.get_policy_state(self.app)
        if state is not None:
            self._states.append(state)

    async def feedback(self, x: Any, y: Any) -> None:
        """Send feedback `y` for `x` to the app (`Clipper.feedback`), then `record`.

        Args:
            x: The input the feedback is about.
            y: The true label for `x`.

        Raises:
            clipperlite.ClipperError: As `Clipper.feedback` does.
        """
        await self.clipper.feedback(self.app, x, y)
        self.record()


def _figure(rows: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(8.0, 2.8 * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]


def _root(ax: Any) -> Figure:
    """The Figure an Axes is drawn in (through a SubFigure too)."""
    fig = ax.figure
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


def _budget_micros(clipper: clipperlite.Clipper, name: str, version: int | str) -> float | None:
    """The model version's batch-latency budget B (None for a fixed batch size)."""
    for m in clipper.statistics().models:
        if m.name == name and m.version == version:
            return m.batch_budget_micros
    return None


def _versions(clipper: clipperlite.Clipper, model: str | None) -> list[tuple[str, int | str]]:
    stats = clipper.statistics()
    if model is not None:
        found = [(m.name, m.version) for m in stats.models if m.name == model]
        if not found:
            raise clipperlite.UnknownModelError(f"no model named {model!r} is deployed")
        return found
    return [(m.name, m.version) for m in stats.models if not m.stopped]


def _plot_latency(clipper: clipperlite.Clipper, ax: Axes, model: str | None) -> None:
    """Each app's p50 and p99 query latency (bars, ms, log scale) against its SLO (a dash).

    With `model`, only the apps linked to it.
    """
    apps = [a for a in clipper.statistics().apps if model is None or model in a.linked_models]
    xs = list(range(len(apps)))

    def ms(micros: float | None) -> float:
        return math.nan if micros is None else micros / _MS

    ax.bar([x - 0.2 for x in xs], [ms(a.latency_p50_micros) for a in apps], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [ms(a.latency_p99_micros) for a in apps], width=0.4, label="p99")
    for x, a in zip(xs, apps, strict=True):
        ax.hlines(a.slo_micros / _MS, x - 0.45, x + 0.45, colors="red", linestyles="dashed")
    if apps:
        ax.plot([], [], color="red", linestyle="dashed", label="SLO")
        ax.set_yscale("log")
        shown = [ms(a.latency_p50_micros) for a in apps] + [a.slo_micros / _MS for a in apps]
        positive = [v for v in shown if v > 0]  # NaN (no query yet) is not
        if positive:
            ax.set_ylim(bottom=min(positive) / 4)  # bars rise from well below
    ax.set_xticks(xs, [a.name for a in apps])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Query latency against each app's SLO")
    ax.legend(loc="upper left", fontsize="small")


def _time_axis(ax: Axes) -> None:
    ax.set_xlabel("time (s)")


def _plot_batch_sizes(
    clipper: clipperlite.Clipper, ax: Axes, versions: Sequence[tuple[str, int | str]], t0: float
) -> None:
    """Each batch's size (points) and AIMD's max_batch after it (a step line)."""
    for name, version in versions:
        batches = clipper.history(name, version)
        if not batches:
            continue
        ts = [b.time - t0 for b in batches]
        line = ax.step(
            ts, [b.max_batch for b in batches], where="post", label=f"{name} v{version} max_batch"
        )[0]
        ax.plot(
            ts,
            [b.size for b in batches],
            ".",
            color=line.get_color(),
            alpha=0.5,
            label=f"{name} v{version} batch size",
        )
    ax.set_ylabel("queries per batch")
    ax.set_title("Batch size and max_batch (AIMD) over time")
    _time_axis(ax)
    ax.legend(loc="upper left", fontsize="small")


def _plot_batch_latency(
    clipper: clipperlite.Clipper, ax: Axes, versions: Sequence[tuple[str, int | str]], t0: float
) -> None:
    """Each batch's latency (points, ms) against the model's budget B (a dashed line)."""
    for name, version in versions:
        batches = clipper.history(name, version)
        if not batches:
            continue
        ts = [b.time - t0 for b in batches]
        points = ax.plot(
            ts,
            [b.latency * _MS for b in batches],
            ".",
            alpha=0.5,
            label=f"{name} v{version} batch latency",
        )[0]
        budget = _budget_micros(clipper, name, version)
        if budget is not None:
            ax.axhline(
                budget / _MS,
                color=points.get_color(),
                linestyle="dashed",
                label=f"{name} v{version} budget B",
            )
    ax.set_ylabel("batch latency (ms)")
    ax.set_title("Batch latency against the budget")
    _time_axis(ax)
    ax.legend(loc="upper left", fontsize="small")


def plot(clipper: clipperlite.Clipper, model: str | None = None, *, ax: Any = None) -> Figure:
    """Draw a Clipper's query latencies, batch sizes and batch latencies.

    Args:
        clipper: The Clipper to read (`statistics()` and `history()`; any state).
        model: One model's name, to draw its versions only; None draws every version
            still deployed.
        ax: None for a new figure of three panels (latency against the SLOs, batch
            size, batch latency against the budget); a sequence of three Axes to draw
            those panels there; or one Axes, to draw only the batch sizes on it.

    Returns:
        The Figure drawn on.

    Raises:
        clipperlite.UnknownModelError: `model` names no deployed model.
        TypeError: `ax` is neither None, an Axes nor three of them.
    """
    versions = _versions(clipper, model)
    times = [b.time for name, v in versions for b in clipper.history(name, v)[:1]]
    t0 = min(times) if times else 0.0
    if ax is None:
        fig, axes = _figure(3)
    elif hasattr(ax, "plot"):
        _plot_batch_sizes(clipper, ax, versions, t0)
        return _root(ax)
    else:
        axes = list(ax)
        if len(axes) != 3:
            raise TypeError(f"ax must be None, one Axes or three Axes, got {len(axes)} items")
        fig = _root(axes[0])
    _plot_latency(clipper, axes[0], model)
    _plot_batch_sizes(clipper, axes[1], versions, t0)
    _plot_batch_latency(clipper, axes[2], versions, t0)
    return fig


def _shares(state: Any, policy: Any) -> tuple[list[str], list[float]]:
    """The models of a state and each one's selection probability or weight share."""
    if not isinstance(state, dict) or "models" not in state or "log_weights" not in state:
        raise ValueError(
            "plot_policy draws the built-in policies' states ({'models', 'log_weights'}); "
            f"got {type(state).__name__}"
        )
    models = [str(m) for m in state["models"]]
    probabilities = getattr(policy, "probabilities", None)
    if probabilities is not None:
        return models, [float(p) for p in probabilities(state)]
    top = max(state["log_weights"])
    ws = [math.exp(w - top) for w in state["log_weights"]]
    total = sum(ws)
    return models, [w / total for w in ws]


def plot_policy(
    clipper: clipperlite.Clipper,
    app: str,
    *,
    recorder: PolicyRecorder | None = None,
    policy: Any = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw each linked model's share of an app's policy weight.

    Args:
        clipper: The Clipper the app is registered with.
        app: The application's name.
        recorder: A `PolicyRecorder` of the app: its states are drawn as one line per
            model over feedback. Without one, the current state is drawn as bars.
        policy: The app's policy object, when it has `probabilities(state)` (as
            `clipperlite.Exp3` does): selection probabilities are drawn instead of
            weight shares.
        ax: The Axes to draw on; None for a new figure.

    Returns:
        The Figure drawn on.

    Raises:
        clipperlite.UnknownApplicationError: The app is not registered.
        ValueError: The app has no linked model, or its state is not a built-in
            policy's ({"models", "log_weights"}).
    """
    what = "selection probability" if hasattr(policy, "probabilities") else "weight share"
    if ax is None:
        fig, (ax,) = _figure(1)
    else:
        fig = _root(ax)
    states = recorder.states if recorder is not None and len(recorder) else []
    if states:
        series: dict[str, list[float]] = {}
        for i, state in enumerate(states):
            for name, share in zip(*_shares(state, policy), strict=True):
                series.setdefault(name, [math.nan] * len(states))[i] = share
        for name, values in series.items():
            ax.plot(range(1, len(states) + 1), values, label=name)
        ax.set_xlabel("feedback (recorded states)")
        ax.legend(loc="best", fontsize="small")
    else:
        state = clipper.get_policy_state(app)
        if state is None:
            raise ValueError(f"app {app!r} has no linked model: nothing to draw")
        models, shares = _shares(state, policy)
        ax.bar(models, shares)
        ax.set_xlabel("model")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(what)
    ax.set_title(f"App {app!r}: each model's {what}")
    return fig
