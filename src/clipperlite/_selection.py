"""Model selection: the policy protocol, Exp3 (pick one model) and Exp4 (ensemble).

Policies are pure: clipperlite keeps each app's state and hands it back on every
call, so one policy object can serve many apps. States are plain dicts of lists
(JSON-able), weights kept in log space so long runs never overflow or underflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _defaults

#: loss(output, label) -> float in [0, 1].
Loss = Callable[[Any, Any], float]

#: Default bound on how far a log weight may fall below the best one. Without a bound
#: every good query widens the gap, so recovery after a change would take as long as
#: the app had run before; exp(-10) still leaves a model a 1-in-22,000 weight.
MAX_LOG_GAP = 10.0


@runtime_checkable
class SelectionPolicy(Protocol):
    """Chooses which linked models answer a query and learns from feedback.

    clipperlite holds the per-app `state`; a policy must not keep per-app data itself.
    """

    def init_state(self, models: list[str], previous: Any = None) -> Any:
        """Fresh state for these linked models; `previous` is the old state if links change."""
        ...

    def select(self, state: Any, x: Any) -> list[str]:
        """The models to query for x."""
        ...

    def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        """(answer, confidence in [0, 1]) from the outputs that arrived in time (never empty)."""
        ...

    def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
        """The new state after feedback y for x, given those models' outputs for x."""
        ...


def _is_float(v: Any) -> bool:
    return isinstance(v, float | np.floating)


def _is_numeric_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind in "iuf"


def default_loss(output: Any, label: Any) -> float:
    """0 if the output equals the label, else 1; for numbers |output - label| clipped to [0, 1]."""
    try:
        if _is_float(output) or _is_numeric_array(output):
            err = float(
                np.mean(np.abs(np.asarray(output, dtype=float) - np.asarray(label, dtype=float)))
            )
            return 1.0 if math.isnan(err) else min(1.0, err)
        if isinstance(output, np.ndarray) or isinstance(label, np.ndarray):
            return 0.0 if np.array_equal(output, label) else 1.0
        return 0.0 if output == label else 1.0
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float
        return 1.0


def _check_loss(value: Any) -> float:
    loss = float(value)
    if math.isnan(loss):
        return 1.0
    return min(1.0, max(0.0, loss))


def _carry_over(models: list[str], previous: Any) -> list[float]:
    """Log weights for `models`: those known to `previous` kept, newcomers at the mean weight."""
    old: dict[str, float] = {}
    if isinstance(previous, dict) and "models" in previous and "log_weights" in previous:
        old = dict(zip(previous["models"], previous["log_weights"], strict=False))
    known = [old[m] for m in models if m in old]
    if known:
        top = max(known)
        newcomer = top + math.log(sum(math.exp(w - top) for w in known) / len(known))
    else:
        newcomer = 0.0
    return [float(old.get(m, newcomer)) for m in models]


def restore_weights(state: Any, linked: list[str], gap: float = MAX_LOG_GAP) -> dict[str, Any]:
    """Check a saved {"models", "log_weights"} state against the linked models.

    Raises ValueError naming what is wrong; models linked now but absent from the
    state start at the state's mean weight.
    """
    if not isinstance(state, dict) or set(state) != {"models", "log_weights"}:
        raise ValueError(
            "expected a dict with exactly the keys 'models' and 'log_weights'"
            f" (as get_policy_state returns), got {state!r}"
        )
    models, log_weights = state["models"], state["log_weights"]
    if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
        raise ValueError(f"'models' must be a list of model names, got {models!r}")
    if len(set(models)) != len(models):
        raise ValueError(f"'models' names a model twice: {models!r}")
    if not isinstance(log_weights, list | tuple) or len(log_weights) != len(models):
        raise ValueError("'log_weights' must be a list with one number per model")
    weights = []
    for w in log_weights:
        try:
            value = float(w)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(value):
            raise ValueError(f"'log_weights' must be finite numbers, got {w!r}")
        weights.append(value)
    unknown = [m for m in models if m not in linked]
    if unknown:
        raise ValueError(
            f"the state names models that are not linked: {unknown!r} (linked: {linked!r})"
        )
    if not models:
        return {"models": list(linked), "log_weights": [0.0] * len(linked)}
    previous = {"models": list(models), "log_weights": weights}
    weights = _normalised(_carry_over(linked, previous), gap)
    return {"models": list(linked), "log_weights": weights}


def _normalised(log_weights: Sequence[float], gap: float = MAX_LOG_GAP) -> list[float]:
    top = max(log_weights)
    return [max(-gap, w - top) for w in log_weights]


def _probabilities(log_weights: Sequence[float]) -> list[float]:
    top = max(log_weights)
    ws = [math.exp(w - top) for w in log_weights]
    total = sum(ws)
    return [w / total for w in ws]


class Exp3:
    """Picks one model per query, with probability (1 - gamma) w_i / sum(w) + gamma / K.

    On feedback, the chosen model's weight is multiplied by exp(-eta * loss / p_i)
    (importance weighted); gamma > 0 keeps every model in play so one that recovers
    is found again, and no log weight falls more than `max_log_gap` below the best,
    so recovery after a change does not slow down with uptime. Confidence is 1.
    """

    def __init__(
        self,
        *,
        eta: float = 0.1,
        gamma: float = 0.05,
        loss: Loss | None = None,
        rng: np.random.Generator | int | None = None,
        max_log_gap: float = MAX_LOG_GAP,
    ) -> None:
        if not eta > 0:
            raise ValueError(f"Exp3 eta must be > 0, got {eta!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"Exp3 gamma must be in (0, 1], got {gamma!r}")
        if not max_log_gap > 0:
            raise ValueError(f"max_log_gap must be > 0, got {max_log_gap!r}")
        self.eta = eta
        self.gamma = gamma
        self.max_log_gap = max_log_gap
        self.loss = loss or default_loss
        self._random = np.random.default_rng(rng).random

    def __repr__(self) -> str:
        return f"Exp3(eta={self.eta!r}, gamma={self.gamma!r})"

    def init_state(self, models: list[str], previous: Any = None) -> dict[str, Any]:
        return {"models": list(models), "log_weights": _carry_over(models, previous)}

    def restore_state(self, state: Any, models: list[str]) -> dict[str, Any]:
        """A state saved by `get_policy_state`, checked against the linked models."""
        return restore_weights(state, models, self.max_log_gap)

    def probabilities(self, state: dict[str, Any]) -> list[float]:
        """Each model's chance of being picked, in `state["models"]` order."""
        k = len(state["models"])
        g = self.gamma
        return [(1.0 - g) * p + g / k for p in _probabilities(state["log_weights"])]

    def probability(self, state: dict[str, Any], model: str) -> float:
        """The chance `model` had of being picked in `state`: what clipperlite records
        when it serves a query, so feedback on that query is weighted by it."""
        return float(self.probabilities(state)[state["models"].index(model)])

    def select(self, state: dict[str, Any], x: Any) -> list[str]:
        models = state["models"]
        if len(models) == 1:
            return [models[0]]
        r = self._random()
        acc = 0.0
        for name, p in zip(models, self.probabilities(state), strict=True):
            acc += p
            if r < acc:
                return [name]
        return [models[-1]]

    def combine(self, state: dict[str, Any], x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        return next(iter(outputs.values())), 1.0

    def observe(
        self,
        state: dict[str, Any],
        x: Any,
        y: Any,
        outputs: dict[str, Any],
        *,
        probability: float | None = None,
    ) -> dict[str, Any]:
        """The state after feedback y: each model in `outputs` pays eta * loss / p.

        `probability` is the chance the model had when it served the query (recorded
        by clipperlite at predict time); without it, the chance in `state` is used.
        """
        models = state["models"]
        probs = self.probabilities(state)
        log_weights = list(state["log_weights"])
        for name, output in outputs.items():
            if name not in models:
                continue
            i = models.index(name)
            loss = _check_loss(self.loss(output, y))
            p = probs[i] if probability is None or len(outputs) != 1 else probability
            log_weights[i] -= self.eta * loss / p
        return {"models": list(models), "log_weights": _normalised(log_weights, self.max_log_gap)}


class Exp4:
    """Queries every linked model and combines by weight: a mean for numbers, a vote for labels.

    Combining is deterministic: outputs are taken in link order, whatever order they
    arrived in (a cached answer arrives first and must not win for it). A vote tied
    on weight goes to the label whose heaviest supporter weighs most, then to the
    label of the model linked first. A non-finite output (a NaN or infinite float, an
    array with such an entry) counts as missing, like a straggler, for the mean and
    the vote alike. Confidence is the share of the selected models' weight that
    agrees with the answer (vote) or that answered in time with a finite output
    (mean), so stragglers and NaNs lower it; 0 when no output was usable.

    On feedback every model that answered has its weight multiplied by
    exp(-eta * loss). With `eta` given, eta is that constant. By default it follows a
    schedule (see `rate`): eta = max(min_eta, rate_scale * sqrt(ln K / (1 + L))), K
    the linked models and L the loss the ensemble has paid so far (the state's
    "ensemble_loss": each feedback adds the weighted mean loss of the models that
    answered). The weights are those of Hedge at that rate, exp(-eta * cumulative
    loss): when the rate falls, the log weights shrink with it, so an early leader
    is not trusted for longer than its record deserves.

    A `combiner(outputs, weights)` replaces the vote/mean; it gets the weights of
    the models that answered, renormalised to sum to 1.
    """

    def __init__(
        self,
        *,
        eta: float | None = None,
        loss: Loss | None = None,
        combiner: Callable[[dict[str, Any], dict[str, float]], tuple[Any, float]] | None = None,
        max_log_gap: float = MAX_LOG_GAP,
        rate_scale: float = _defaults.EXP4_RATE_SCALE,
        min_eta: float = _defaults.EXP4_MIN_ETA,
    ) -> None:
        """Args:
            eta: a constant learning rate (> 0); None (the default) for the schedule.
            loss: loss(output, label) -> [0, 1]; `default_loss` when None.
            combiner: replaces the vote/mean, see the class docstring.
            max_log_gap: how far (> 0) a log weight may fall below the best one.
            rate_scale: the schedule's scale (> 0); unused with `eta`.
            min_eta: the schedule's floor (>= 0); unused with `eta`.

        Raises:
            ValueError: for an option out of its range.
        """
        if eta is not None and not eta > 0:
            raise ValueError(f"Exp4 eta must be > 0, got {eta!r}")
        if not max_log_gap > 0:
            raise ValueError(f"max_log_gap must be > 0, got {max_log_gap!r}")
        if not (rate_scale > 0 and math.isfinite(rate_scale)):
            raise ValueError(f"Exp4 rate_scale must be a finite number > 0, got {rate_scale!r}")
        if not (min_eta >= 0 and math.isfinite(min_eta)):
            raise ValueError(f"Exp4 min_eta must be a finite number >= 0, got {min_eta!r}")
        self.max_log_gap = max_log_gap
        self.eta = eta
        self.rate_scale = rate_scale
        self.min_eta = min_eta
        self.loss = loss or default_loss
        self.combiner = combiner

    def __repr__(self) -> str:
        if self.eta is not None:
            return f"Exp4(eta={self.eta!r})"
        return f"Exp4(rate_scale={self.rate_scale!r}, min_eta={self.min_eta!r})"

    def init_state(self, models: list[str], previous: Any = None) -> dict[str, Any]:
        state: dict[str, Any] = {
            "models": list(models),
            "log_weights": _carry_over(models, previous),
        }
        if self.eta is None:
            paid = previous.get(ENSEMBLE_LOSS, 0.0) if isinstance(previous, dict) else 0.0
            try:
                state[ENSEMBLE_LOSS] = _ensemble_loss(paid)
            except ValueError:
                state[ENSEMBLE_LOSS] = 0.0
        return state

    def restore_state(self, state: Any, models: list[str]) -> dict[str, Any]:
        """A state saved by `get_policy_state`, checked against the linked models.

        With the schedule, "ensemble_loss" may be given too (a finite number >= 0);
        a state without it restarts the schedule at 0 with the weights as given.

        Raises:
            ValueError: naming what is wrong with the state.
        """
        if self.eta is None and isinstance(state, dict) and ENSEMBLE_LOSS in state:
            weights = {k: v for k, v in state.items() if k != ENSEMBLE_LOSS}
            restored = restore_weights(weights, models, self.max_log_gap)
            try:
                restored[ENSEMBLE_LOSS] = _ensemble_loss(state[ENSEMBLE_LOSS])
            except ValueError as exc:
                raise ValueError(f"'{ENSEMBLE_LOSS}' {exc}") from None
            return restored
        restored = restore_weights(state, models, self.max_log_gap)
        if self.eta is None:
            restored[ENSEMBLE_LOSS] = 0.0
        return restored

    def rate(self, state: dict[str, Any]) -> float:
        """The learning rate the next feedback on `state` uses.

        `eta` when one was given; otherwise max(min_eta, rate_scale * sqrt(ln K /
        (1 + ensemble_loss))), with K the models in the state (at least 2).
        """
        if self.eta is not None:
            return float(self.eta)
        k = max(2, len(state["models"]))
        paid = float(state.get(ENSEMBLE_LOSS, 0.0))
        return max(self.min_eta, self.rate_scale * math.sqrt(math.log(k) / (1.0 + paid)))

    def select(self, state: dict[str, Any], x: Any) -> list[str]:
        return list(state["models"])

    def weights(self, state: dict[str, Any]) -> dict[str, float]:
        """Each model's normalised weight."""
        return dict(zip(state["models"], _probabilities(state["log_weights"]), strict=True))

    def combine(self, state: dict[str, Any], x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        weights = self.weights(state)
        # Link order, not arrival order; models the state does not know come last.
        ordered = [m for m in state["models"] if m in outputs]
        ordered += [m for m in outputs if m not in weights]
        if self.combiner is not None:
            share = {m: weights.get(m, 0.0) for m in ordered}
            norm = sum(share.values()) or 1.0
            return self.combiner(
                {m: outputs[m] for m in ordered}, {m: w / norm for m, w in share.items()}
            )
        usable = [m for m in ordered if _is_finite(outputs[m])]
        if not usable:  # every output was NaN or infinite: nothing to stand behind
            return outputs[ordered[0]], 0.0
        total = sum(weights.values())
        arrived = {m: weights.get(m, 0.0) for m in usable}
        got = sum(arrived.values())
        if got <= 0:
            arrived = {m: 1.0 for m in usable}
            got = float(len(usable))
        values = [outputs[m] for m in usable]
        if all(_is_float(v) for v in values):
            mean = sum(arrived[m] * float(outputs[m]) for m in usable) / got
            return mean, min(1.0, got / total) if total > 0 else 1.0
        if all(_is_numeric_array(v) for v in values) and len({v.shape for v in values}) == 1:
            stacked = np.stack([np.asarray(v, dtype=float) for v in values])
            w = np.array([arrived[m] for m in usable]) / got
            return np.tensordot(w, stacked, axes=1), min(1.0, got / total) if total > 0 else 1.0
        # label -> [total weight, heaviest supporter's weight, link index of the first]
        tally: dict[Hashable, list[float]] = {}
        first: dict[Hashable, Any] = {}
        for i, m in enumerate(usable):
            key = _vote_key(outputs[m])
            weight = arrived[m]
            entry = tally.get(key)
            if entry is None:
                tally[key] = [weight, weight, -i]
                first[key] = outputs[m]
            else:
                entry[0] += weight
                entry[1] = max(entry[1], weight)
        scale = got or 1.0
        best = max(
            tally,
            key=lambda k: (
                round(tally[k][0] / scale, _TIE_DIGITS),
                round(tally[k][1] / scale, _TIE_DIGITS),
                tally[k][2],
            ),
        )
        return first[best], min(1.0, tally[best][0] / total) if total > 0 else 1.0

    def observe(
        self, state: dict[str, Any], x: Any, y: Any, outputs: dict[str, Any]
    ) -> dict[str, Any]:
        """The state after feedback y: each model in `outputs` pays rate * loss.

        With the schedule, the ensemble's loss grows by the weighted mean loss of the
        models that answered, and the log weights are rescaled by new rate / old rate.
        """
        models = state["models"]
        log_weights = list(state["log_weights"])
        eta = self.rate(state)
        shares = _probabilities(log_weights)
        paid = got = 0.0
        for name, output in outputs.items():
            if name in models:
                i = models.index(name)
                loss = _check_loss(self.loss(output, y))
                log_weights[i] -= eta * loss
                paid += shares[i] * loss
                got += shares[i]
        if self.eta is None:
            ensemble_loss = float(state.get(ENSEMBLE_LOSS, 0.0)) + (paid / got if got > 0 else 0.0)
            scale = self.rate({"models": models, ENSEMBLE_LOSS: ensemble_loss}) / eta
            top = max(log_weights)
            log_weights = [(w - top) * scale for w in log_weights]
            return {
                "models": list(models),
                "log_weights": _normalised(log_weights, self.max_log_gap),
                ENSEMBLE_LOSS: ensemble_loss,
            }
        return {"models": list(models), "log_weights": _normalised(log_weights, self.max_log_gap)}

    def warm_state(
        self, models: Sequence[str], record: Iterable[tuple[Mapping[str, Any], Any]]
    ) -> dict[str, Any]:
        """A state that has already learned from a labelled record, to serve from.

        Before Exp4 has seen a model err it cannot tell a good model from a lucky
        one; a record of the models' answers on labelled data they were not trained
        on (a validation set, or cross-validated predictions) tells it in advance.
        Call it on the policy object the app was registered with, and give the
        result to `set_policy_state`.

        Args:
            models: Every model linked to the app (any order: the state is matched
                by name). A model that no record entry mentions pays no loss and
                keeps the top weight, as it would under feedback.
            record: (outputs, label) pairs, `outputs` mapping each model that
                answered one labelled example to its output.

        Returns:
            The state after feedback on each pair in turn, as `get_policy_state`
            returns it (with the schedule, the record's loss counts in
            "ensemble_loss", so the rate starts where the record left it).

        Raises:
            ValueError: `models` is empty or names a model twice, or a record entry
                names a model not in `models`.
            TypeError: `models` is a string, or a record entry is not an
                (outputs mapping, label) pair.
        """
        if isinstance(models, str):
            raise TypeError(f"models must be a list of model names, got the string {models!r}")
        names = list(models)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"models must name each linked model once, got {names!r}")
        state = self.init_state(names)
        for i, entry in enumerate(record):
            if not (isinstance(entry, tuple | list) and len(entry) == 2):
                raise TypeError(f"record entry {i} must be an (outputs, label) pair, got {entry!r}")
            outputs, label = entry
            if not isinstance(outputs, Mapping):
                raise TypeError(
                    f"record entry {i}'s outputs must map model names to outputs, got {outputs!r}"
                )
            unknown = [m for m in outputs if m not in names]
            if unknown:
                raise ValueError(
                    f"record entry {i} names models that are not in models: {unknown!r}"
                    f" (models: {names!r})"
                )
            state = self.observe(state, None, label, dict(outputs))
        return state


#: The key of the schedule's state entry: the loss the ensemble has paid so far.
ENSEMBLE_LOSS = "ensemble_loss"


def _ensemble_loss(value: Any) -> float:
    """A saved "ensemble_loss", checked: a finite number >= 0.

    Raises:
        ValueError: when it is not one.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return number


#: Vote totals equal to this many decimal places (of the share of weight) are a tie,
#: so float rounding in a sum cannot decide one.
_TIE_DIGITS = 9


def _is_finite(v: Any) -> bool:
    """False for a NaN or infinite float, or a numeric array with such an entry."""
    if _is_float(v):
        return math.isfinite(v)
    if isinstance(v, np.ndarray) and v.dtype.kind in "fc":
        return bool(np.isfinite(v).all())
    return True


def _vote_key(v: Any) -> Hashable:
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.generic):
        return v.item()  # type: ignore[no-any-return]
    try:
        hash(v)
    except TypeError:
        return ("repr", repr(v))
    return v  # type: ignore[no-any-return]


BUILTIN_POLICIES: dict[str, Callable[[np.random.Generator], SelectionPolicy]] = {
    "exp3": lambda rng: Exp3(rng=rng),
    "exp4": lambda rng: Exp4(),
}
