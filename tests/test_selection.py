"""Selection policies: one contract suite that every policy passes, then Exp3 and Exp4 specifics."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clipperlite
from clipperlite import Exp3, Exp4, SelectionPolicy
from clipperlite._selection import default_loss

Loss = Callable[[Any, Any], float]

MODELS = ["a", "b", "c"]


class FollowTheLeader:
    """A small user-written policy: ask the model with the least total loss so far."""

    def __init__(self, *, loss: Loss | None = None) -> None:
        self.loss = loss or (lambda output, label: 0.0 if output == label else 1.0)

    def init_state(self, models: list[str], previous: Any = None) -> dict[str, Any]:
        old = (
            dict(zip(previous["models"], previous["log_weights"], strict=True)) if previous else {}
        )
        known = [w for m, w in old.items() if m in models]
        newcomer = math.log(sum(math.exp(w) for w in known) / len(known)) if known else 0.0
        return {"models": list(models), "log_weights": [old.get(m, newcomer) for m in models]}

    def select(self, state: dict[str, Any], x: Any) -> list[str]:
        best = max(range(len(state["models"])), key=state["log_weights"].__getitem__)
        return [state["models"][best]]

    def combine(self, state: dict[str, Any], x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        return next(iter(outputs.values())), 1.0

    def observe(
        self, state: dict[str, Any], x: Any, y: Any, outputs: dict[str, Any]
    ) -> dict[str, Any]:
        log_weights = list(state["log_weights"])
        for name, output in outputs.items():
            if name in state["models"]:
                loss = float(self.loss(output, y))
                loss = 1.0 if math.isnan(loss) else min(1.0, max(0.0, loss))
                log_weights[state["models"].index(name)] -= loss
        top = max(log_weights)
        return {
            "models": list(state["models"]),
            "log_weights": [max(-700.0, w - top) for w in log_weights],
        }


def loss_is_output(output: Any, label: Any) -> float:
    """A loss that reports each model's output as its loss, so tests choose the losses."""
    return float(output)


def weights_of(state: dict[str, Any]) -> dict[str, float]:
    """Normalised linear weights by model name, from a {"models", "log_weights"} state."""
    top = max(state["log_weights"])
    ws = [math.exp(w - top) for w in state["log_weights"]]
    return {m: w / sum(ws) for m, w in zip(state["models"], ws, strict=True)}


LOSSES = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -float("inf"), -5.0, 1e308]),
)
FEEDBACK = st.lists(
    st.tuples(st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True), LOSSES),
    max_size=150,
)


# -- the shared contract -----------------------------------------------------------------------

MakePolicy = Callable[..., Any]

#: Every policy passes the contract: the built-ins and one a user could write.
POLICIES: dict[str, MakePolicy] = {
    "exp3": lambda loss=None: Exp3(loss=loss, rng=0),
    "exp4": lambda loss=None: Exp4(loss=loss),
    "user": lambda loss=None: FollowTheLeader(loss=loss),
}
contract = pytest.mark.parametrize("make", list(POLICIES.values()), ids=list(POLICIES))


@contract
def test_is_a_selection_policy(make: MakePolicy) -> None:
    """The policy satisfies the runtime-checkable SelectionPolicy protocol."""
    assert isinstance(make(), SelectionPolicy)


@contract
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_select_returns_only_linked_models(make: MakePolicy, k: int) -> None:
    """select names at least one model, and only models the state was made for."""
    policy = make()
    models = [f"m{i}" for i in range(k)]
    state = policy.init_state(models)
    for i in range(100):
        chosen = policy.select(state, [float(i)])
        assert chosen
        assert set(chosen) <= set(models)
        assert len(chosen) == len(set(chosen))
        state = policy.observe(state, [float(i)], 0, {m: i % 3 for m in chosen})


@contract
def test_select_after_relinking_returns_only_the_new_links(make: MakePolicy) -> None:
    """After init_state with new links and the old state, an unlinked model is never chosen."""
    policy = make()
    state = policy.init_state(["a", "b"])
    state = policy.observe(state, None, 1, {"a": 1, "b": 0})
    state = policy.init_state(["b", "c"], state)
    for _ in range(50):
        assert set(policy.select(state, None)) <= {"b", "c"}


@contract
def test_combine_returns_a_confidence_in_zero_one(make: MakePolicy) -> None:
    """combine gives an answer with a confidence between 0 and 1, for one or all outputs."""
    policy = make()
    state = policy.init_state(MODELS)
    for outputs in ({"a": 1}, {"a": 1, "b": 2, "c": 1}, {"b": 0.5}, {"a": 0.5, "c": 0.25}):
        _, confidence = policy.combine(state, None, outputs)
        assert 0.0 <= confidence <= 1.0


@contract
def test_single_output_is_the_answer(make: MakePolicy) -> None:
    """With one model answering, its output is the answer."""
    policy = make()
    state = policy.init_state(["only"])
    assert policy.select(state, None) == ["only"]
    answer, _ = policy.combine(state, None, {"only": "label"})
    assert answer == "label"


@contract
@settings(deadline=None)
@given(FEEDBACK)
def test_weights_stay_finite_under_any_losses(
    make: MakePolicy, feedback: list[tuple[list[str], float]]
) -> None:
    """Whatever losses feedback brings (NaN, infinite, out of range), every weight stays finite."""
    policy = make(loss=loss_is_output)
    state = policy.init_state(MODELS)
    for answered, loss in feedback:
        state = policy.observe(state, None, None, dict.fromkeys(answered, loss))
        assert all(math.isfinite(w) for w in state["log_weights"])
        weights = weights_of(state)
        assert all(w > 0 for w in weights.values())
        assert sum(weights.values()) == pytest.approx(1.0)
        assert set(policy.select(state, None)) <= set(MODELS)


@contract
def test_init_state_with_previous_keeps_known_weights_and_averages_newcomers(
    make: MakePolicy,
) -> None:
    """Relinking keeps each known model's weight and gives a newcomer the average weight."""
    policy = make(loss=loss_is_output)
    previous = policy.init_state(["a", "b"])
    previous = policy.observe(previous, None, None, {"a": 0.0, "b": 1.0})
    previous = policy.observe(previous, None, None, {"a": 0.0, "b": 1.0})
    old = dict(zip(previous["models"], previous["log_weights"], strict=True))
    assert old["a"] != old["b"]

    state = policy.init_state(["b", "new", "a"], previous)
    new = dict(zip(state["models"], state["log_weights"], strict=True))
    assert state["models"] == ["b", "new", "a"]
    assert new["a"] == pytest.approx(old["a"])
    assert new["b"] == pytest.approx(old["b"])
    mean_weight = (math.exp(old["a"]) + math.exp(old["b"])) / 2
    assert math.exp(new["new"]) == pytest.approx(mean_weight)


@contract
def test_init_state_with_a_removed_model_keeps_the_rest(make: MakePolicy) -> None:
    """Unlinking a model keeps the survivors' relative weights."""
    policy = make(loss=loss_is_output)
    previous = policy.init_state(MODELS)
    previous = policy.observe(previous, None, None, {"a": 0.0, "b": 0.5, "c": 1.0})
    state = policy.init_state(["c", "b"], previous)
    old, new = weights_of(previous), weights_of(state)
    assert new["b"] / new["c"] == pytest.approx(old["b"] / old["c"])


@contract
def test_fresh_state_weighs_every_model_equally(make: MakePolicy) -> None:
    """A state made without a previous one starts every model at the same weight."""
    state = make().init_state(MODELS)
    assert len(set(weights_of(state).values())) == 1


@contract
def test_state_is_json_serialisable_and_reloadable(make: MakePolicy) -> None:
    """States are plain JSON values; a reloaded state works like the original."""
    policy = make(loss=loss_is_output)
    state = policy.init_state(MODELS)
    for i in range(10):
        state = policy.observe(state, None, None, {MODELS[i % 3]: (i % 4) / 4})
        json.dumps(state)
    reloaded = json.loads(json.dumps(state))
    assert reloaded == state
    json.dumps(policy.init_state(["a", "z"], reloaded))
    after = policy.observe(reloaded, None, None, {"a": 1.0})
    assert after == policy.observe(state, None, None, {"a": 1.0})


@contract
def test_observe_does_not_change_the_state_it_is_given(make: MakePolicy) -> None:
    """observe returns a new state: one policy object can serve many apps' states."""
    policy = make(loss=loss_is_output)
    state = policy.init_state(MODELS)
    snapshot = json.loads(json.dumps(state))
    other_app = policy.init_state(MODELS)
    policy.observe(state, None, None, {"a": 1.0, "b": 0.0})
    assert state == snapshot
    assert other_app == snapshot


@contract
def test_observe_ignores_unlinked_models(make: MakePolicy) -> None:
    """Feedback about a model that is not in the state changes no weight and does not raise."""
    policy = make(loss=loss_is_output)
    state = policy.init_state(["a", "b"])
    after = policy.observe(state, None, None, {"stranger": 1.0})
    assert weights_of(after) == pytest.approx(weights_of(state))
    assert after["models"] == ["a", "b"]


@contract
def test_the_right_model_gains_weight(make: MakePolicy) -> None:
    """A model with loss 0 ends up with more weight than one with loss 1."""
    policy = make(loss=loss_is_output)
    state = policy.init_state(["right", "wrong"])
    for _ in range(5):
        state = policy.observe(state, None, None, {"right": 0.0, "wrong": 1.0})
    weights = weights_of(state)
    assert weights["right"] > weights["wrong"]


@contract
def test_combine_does_not_depend_on_the_order_outputs_arrived_in(make: MakePolicy) -> None:
    """The same outputs give the same answer whichever model answered first."""
    policy = make()
    state = policy.init_state(MODELS)
    chosen = policy.select(state, None)
    outputs = {m: f"label-{i}" for i, m in enumerate(chosen)}
    forward = policy.combine(state, None, outputs)
    backward = policy.combine(state, None, dict(reversed(list(outputs.items()))))
    assert forward == backward


def test_an_object_missing_policy_methods_is_not_a_selection_policy() -> None:
    """The protocol check fails for an object without the four methods."""

    class SelectOnly:
        def select(self, state: Any, x: Any) -> list[str]:
            return []

    assert not isinstance(SelectOnly(), clipperlite.SelectionPolicy)
    assert isinstance(Exp3(), clipperlite.SelectionPolicy)
    assert isinstance(Exp4(), clipperlite.SelectionPolicy)


# -- Exp3 ------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.floats(min_value=0.01, max_value=1.0),
    st.lists(st.tuples(st.integers(0, 5), LOSSES), max_size=100),
)
def test_exp3_probabilities_sum_to_one_with_a_gamma_over_k_floor(
    k: int, gamma: float, feedback: list[tuple[int, float]]
) -> None:
    """Exp3's probabilities always sum to 1 and none falls below gamma / K."""
    policy = Exp3(gamma=gamma, eta=0.5, loss=loss_is_output, rng=1)
    models = [f"m{i}" for i in range(k)]
    state = policy.init_state(models)
    for index, loss in feedback:
        state = policy.observe(state, None, None, {models[index % k]: loss})
        probs = policy.probabilities(state)
        assert sum(probs) == pytest.approx(1.0)
        assert all(p >= gamma / k for p in probs)


def test_exp3_learns_which_model_is_right() -> None:
    """With seeded draws, feedback that A is right and B wrong raises A's probability above B's."""
    policy = Exp3(rng=7)
    state = policy.init_state(["A", "B"])
    answers = {"A": lambda y: y, "B": lambda y: y + 1}
    floor = policy.gamma / 2
    for y in range(300):
        (chosen,) = policy.select(state, y)
        state = policy.observe(state, y, y, {chosen: answers[chosen](y)})
        p_a, p_b = policy.probabilities(state)
        assert min(p_a, p_b) >= floor
    p_a, p_b = policy.probabilities(state)
    assert p_a > p_b
    assert p_a > 0.9
    assert p_b == pytest.approx(floor, abs=0.01)


def test_exp3_keeps_exploring_a_model_that_is_always_wrong() -> None:
    """Even after long failure, a model is still picked about gamma / K of the time."""
    policy = Exp3(gamma=0.2, rng=3)
    state = policy.init_state(["good", "bad"])
    for _ in range(200):
        state = policy.observe(state, None, 1, {"good": 1, "bad": 0})
    picks = [policy.select(state, None)[0] for _ in range(4000)]
    share = picks.count("bad") / len(picks)
    assert share == pytest.approx(0.1, abs=0.02)


def test_exp3_update_is_importance_weighted() -> None:
    """A loss of 1 on a model chosen with probability p lowers its log weight by eta / p."""
    policy = Exp3(eta=0.1, gamma=0.05)
    state = policy.init_state(["a", "b"])
    assert policy.probabilities(state) == pytest.approx([0.5, 0.5])
    state = policy.observe(state, None, "y", {"b": "not y"})
    assert state["log_weights"] == pytest.approx([0.0, -0.1 / 0.5])


def test_exp3_draws_follow_its_probabilities() -> None:
    """Over many seeded draws, each model is chosen about as often as its probability says."""
    policy = Exp3(gamma=0.1, rng=11)
    state = {"models": ["a", "b", "c"], "log_weights": [math.log(6), math.log(3), 0.0]}
    probs = policy.probabilities(state)
    picks = [policy.select(state, None)[0] for _ in range(6000)]
    for name, p in zip(state["models"], probs, strict=True):
        assert picks.count(name) / len(picks) == pytest.approx(p, abs=0.03)


def test_exp3_with_the_same_seed_makes_the_same_choices() -> None:
    """Two Exp3 objects seeded alike select the same models in the same order."""
    first, second = Exp3(rng=5), Exp3(rng=5)
    state = first.init_state(MODELS)
    assert [first.select(state, None) for _ in range(50)] == [
        second.select(state, None) for _ in range(50)
    ]


def test_exp3_probability_is_the_chance_of_the_model_in_that_state() -> None:
    """probability(state, model) is that model's entry of probabilities(state)."""
    policy = Exp3(gamma=0.1, rng=0)
    state = {"models": MODELS, "log_weights": [0.0, -1.0, -2.0]}
    probs = policy.probabilities(state)
    assert [policy.probability(state, m) for m in MODELS] == pytest.approx(probs)


def test_exp3_observe_weights_by_the_probability_recorded_when_it_served() -> None:
    """observe(..., probability=p) divides the loss by p, not by the chance in the state."""
    policy = Exp3(eta=0.1, gamma=0.1, rng=0)
    state = policy.init_state(MODELS)
    recorded = policy.observe(state, None, "y", {"b": "wrong"}, probability=0.5)
    current = policy.observe(state, None, "y", {"b": "wrong"})
    gap = recorded["log_weights"][0] - recorded["log_weights"][1]
    assert gap == pytest.approx(0.1 / 0.5)
    assert current["log_weights"][0] - current["log_weights"][1] == pytest.approx(0.1 / (1 / 3))


def test_exp3_selects_exactly_one_model_with_confidence_one() -> None:
    """Exp3 asks one model per query and answers with its output at confidence 1."""
    policy = Exp3(rng=0)
    state = policy.init_state(MODELS)
    assert len(policy.select(state, None)) == 1
    assert policy.combine(state, None, {"b": 42}) == (42, 1.0)


@pytest.mark.parametrize(
    "options", [{"eta": 0.0}, {"eta": -1.0}, {"gamma": 0.0}, {"gamma": 1.5}, {"gamma": -0.1}]
)
def test_exp3_rejects_bad_options(options: dict[str, float]) -> None:
    """A non-positive eta or a gamma outside (0, 1] raises ValueError."""
    with pytest.raises(ValueError):
        Exp3(**options)


# -- Exp4 ------------------------------------------------------------------------------------------


def exp4_state(**weights: float) -> dict[str, Any]:
    """An Exp4 state with the given (relative) linear weights."""
    return {"models": list(weights), "log_weights": [math.log(w) for w in weights.values()]}


def test_exp4_selects_every_linked_model() -> None:
    """Exp4 asks all linked models."""
    policy = Exp4()
    assert policy.select(policy.init_state(MODELS), None) == MODELS


def test_exp4_majority_vote_for_int_labels() -> None:
    """With equal weights, the label most models give wins, with that share as confidence."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": 1, "b": 2, "c": 2})
    assert answer == 2
    assert confidence == pytest.approx(2 / 3)


def test_exp4_vote_is_weighted() -> None:
    """A heavy model outvotes two light ones that agree; confidence is its weight share."""
    policy = Exp4()
    state = exp4_state(a=0.6, b=0.25, c=0.15)
    answer, confidence = policy.combine(state, None, {"a": "cat", "b": "dog", "c": "dog"})
    assert answer == "cat"
    assert confidence == pytest.approx(0.6)


def test_exp4_vote_counts_numpy_and_python_ints_as_one_label() -> None:
    """np.int64(3) and 3 are the same label in a vote."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": np.int64(3), "b": 3, "c": 4})
    assert answer == 3
    assert confidence == pytest.approx(2 / 3)


def test_exp4_vote_stragglers_lower_confidence() -> None:
    """When a model misses the deadline, agreement is a share of all selected models' weight."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": "cat", "b": "cat"})
    assert answer == "cat"
    assert confidence == pytest.approx(2 / 3)


def test_exp4_weighted_mean_for_floats() -> None:
    """Float outputs are combined by weighted mean; all answering gives confidence 1."""
    policy = Exp4()
    state = exp4_state(a=3.0, b=1.0)
    answer, confidence = policy.combine(state, None, {"a": 1.0, "b": 5.0})
    assert answer == pytest.approx(0.75 * 1.0 + 0.25 * 5.0)
    assert confidence == pytest.approx(1.0)


def test_exp4_mean_accepts_numpy_floats() -> None:
    """numpy floating outputs are numbers too, combined by mean."""
    policy = Exp4()
    state = policy.init_state(["a", "b"])
    answer, _ = policy.combine(state, None, {"a": np.float32(1.0), "b": np.float64(2.0)})
    assert answer == pytest.approx(1.5)


def test_exp4_mean_stragglers_lower_confidence_and_are_left_out() -> None:
    """The mean is over the models that answered; confidence is their share of the weight."""
    policy = Exp4()
    state = exp4_state(a=1.0, b=1.0, c=2.0)
    answer, confidence = policy.combine(state, None, {"a": 1.0, "b": 3.0})
    assert answer == pytest.approx(2.0)
    assert confidence == pytest.approx(0.5)


def test_exp4_element_wise_mean_for_arrays_of_one_shape() -> None:
    """Numeric arrays of one shape are averaged element by element, by weight."""
    policy = Exp4()
    state = exp4_state(a=1.0, b=3.0)
    answer, confidence = policy.combine(
        state, None, {"a": np.array([0.0, 4.0]), "b": np.array([4, 8])}
    )
    np.testing.assert_allclose(answer, [3.0, 7.0])
    assert confidence == pytest.approx(1.0)


def test_exp4_arrays_of_different_shapes_are_voted_on() -> None:
    """Arrays that cannot be averaged are treated as labels: the heavier one wins."""
    policy = Exp4()
    state = exp4_state(a=1.0, b=3.0)
    answer, confidence = policy.combine(
        state, None, {"a": np.array([1.0]), "b": np.array([1.0, 2.0])}
    )
    np.testing.assert_array_equal(answer, [1.0, 2.0])
    assert confidence == pytest.approx(0.75)


def test_exp4_unhashable_labels_can_still_be_voted_on() -> None:
    """Lists or dicts as outputs are voted on by value instead of raising."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(
        state, None, {"a": {"k": [1]}, "b": {"k": [1]}, "c": {"k": [2]}}
    )
    assert answer == {"k": [1]}
    assert confidence == pytest.approx(2 / 3)


def test_exp4_custom_combiner_is_used() -> None:
    """A combiner given to Exp4 receives the outputs and weights and its answer is returned."""
    calls: list[tuple[dict[str, Any], dict[str, float]]] = []

    def median(outputs: dict[str, Any], weights: dict[str, float]) -> tuple[Any, float]:
        calls.append((outputs, weights))
        return sorted(outputs.values())[len(outputs) // 2], 0.5

    policy = Exp4(combiner=median)
    state = policy.init_state(MODELS)
    outputs = {"a": 1.0, "b": 100.0, "c": 3.0}
    assert policy.combine(state, None, outputs) == (3.0, 0.5)
    assert calls == [(outputs, pytest.approx(dict.fromkeys(MODELS, 1 / 3)))]


def test_exp4_observe_updates_every_model_with_its_own_loss() -> None:
    """Each answering model's log weight drops by eta times its own loss."""
    policy = Exp4(eta=0.2)
    state = policy.init_state(MODELS)
    state = policy.observe(state, None, "cat", {"a": "cat", "b": "dog", "c": "cat"})
    assert state["log_weights"] == pytest.approx([0.0, -0.2, 0.0])


def test_exp4_rejects_a_non_positive_eta() -> None:
    """eta must be positive."""
    with pytest.raises(ValueError):
        Exp4(eta=0.0)


# -- default loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "label", "loss"),
    [
        ("cat", "cat", 0.0),
        ("cat", "dog", 1.0),
        (3, 3, 0.0),
        (3, 4, 1.0),
        (True, True, 0.0),
        (None, 0, 1.0),
        (0.25, 0.5, 0.25),
        (0.5, 0.5, 0.0),
        (2.0, 2, 0.0),
        (3.0, 0.0, 1.0),
        (-3.0, 0.0, 1.0),
        (np.float32(0.75), 1.0, 0.25),
        (np.array([0.0, 1.0]), np.array([0.5, 1.0]), 0.25),
        (np.array([0.0, 9.0]), [0.0, 0.0], 1.0),
        (float("nan"), 1.0, 1.0),
        (1.0, float("nan"), 1.0),
        (np.array([np.nan]), np.array([0.0]), 1.0),
        (0.5, "cat", 1.0),
        (np.array(["a", "b"]), np.array(["a", "b"]), 0.0),
        (np.array(["a", "b"]), np.array(["a", "c"]), 1.0),
    ],
)
def test_default_loss(output: Any, label: Any, loss: float) -> None:
    """0/1 for labels, clipped absolute error for floats and numeric arrays, NaN counts as 1."""
    assert default_loss(output, label) == pytest.approx(loss)


# -- restoring a saved state ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", [Exp3(rng=0), Exp4()], ids=["exp3", "exp4"])
def test_restore_state_round_trips_a_saved_state(policy: Any) -> None:
    """A state saved as JSON and restored for the same links keeps every weight."""
    state = policy.init_state(MODELS)
    state = policy.observe(state, None, "y", {"a": "y", "b": "n", "c": "n"})
    restored = policy.restore_state(json.loads(json.dumps(state)), list(MODELS))
    assert restored["models"] == MODELS
    assert weights_of(restored) == pytest.approx(weights_of(state))


def test_restore_state_gives_newly_linked_models_the_mean_weight() -> None:
    """A model linked now but missing from the saved state starts at the saved mean weight."""
    saved = {"models": ["a", "b"], "log_weights": [0.0, math.log(0.5)]}
    restored = Exp4().restore_state(saved, ["a", "b", "new"])
    weights = weights_of(restored)
    assert weights["new"] / weights["a"] == pytest.approx(0.75)
    assert weights["b"] / weights["a"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("saved", "complaint"),
    [
        (None, "exactly the keys"),
        ({"models": ["a"]}, "exactly the keys"),
        ({"models": ["a"], "log_weights": [0.0], "extra": 1}, "exactly the keys"),
        ({"models": "a", "log_weights": [0.0]}, "list of model names"),
        ({"models": ["a", "a"], "log_weights": [0.0, 0.0]}, "twice"),
        ({"models": ["a", "b"], "log_weights": [0.0]}, "one number per model"),
        ({"models": ["a"], "log_weights": [float("nan")]}, "finite"),
        ({"models": ["a"], "log_weights": [float("inf")]}, "finite"),
        ({"models": ["a"], "log_weights": [True]}, "finite"),
        ({"models": ["a"], "log_weights": ["0"]}, "finite"),
        ({"models": ["a", "gone"], "log_weights": [0.0, 0.0]}, "not linked"),
    ],
)
def test_restore_state_rejects_malformed_states(saved: Any, complaint: str) -> None:
    """A saved state of the wrong shape, with bad weights or unlinked models, is a ValueError."""
    with pytest.raises(ValueError, match=complaint):
        Exp3().restore_state(saved, ["a", "b"])


# -- Exp4: deterministic ties, non-finite outputs -------------------------------------------------


def test_exp4_tie_goes_to_the_model_linked_first_not_the_one_that_arrived_first() -> None:
    """Equal weights, one vote each: the label of the first linked model wins, in any order."""
    policy = Exp4()
    state = policy.init_state(["old", "new"])
    arrived_new_first = {"new": "dog", "old": "cat"}
    assert policy.combine(state, None, arrived_new_first) == ("cat", pytest.approx(0.5))
    assert policy.combine(state, None, {"old": "cat", "new": "dog"})[0] == "cat"


def test_exp4_tie_on_total_weight_goes_to_the_heaviest_supporter() -> None:
    """Two labels with equal total weight: the one whose heaviest model weighs most wins."""
    policy = Exp4()
    state = exp4_state(a=0.25, b=0.25, c=0.5)  # a + b == c
    assert policy.combine(state, None, {"a": "cat", "b": "cat", "c": "dog"})[0] == "dog"
    assert policy.combine(state, None, {"c": "dog", "a": "cat", "b": "cat"})[0] == "dog"


def test_exp4_mean_leaves_out_a_nan_like_a_straggler() -> None:
    """A NaN output is not in the mean; confidence is the finite outputs' weight share."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": 1.0, "b": float("nan"), "c": 3.0})
    assert answer == pytest.approx(2.0)
    assert confidence == pytest.approx(2 / 3)
    assert policy.combine(state, None, {"a": 1.0, "c": 3.0}) == (answer, confidence)


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), np.float32("nan")])
def test_exp4_mean_leaves_out_infinite_and_numpy_nan_outputs(bad: Any) -> None:
    """inf, -inf and a numpy NaN are missing outputs too."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": 2.0, "b": bad, "c": 4.0})
    assert (answer, confidence) == (pytest.approx(3.0), pytest.approx(2 / 3))


def test_exp4_array_mean_leaves_out_an_array_with_a_nan_entry() -> None:
    """An array output with any non-finite entry is left out of the element-wise mean."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    outputs = {
        "a": np.array([1.0, 2.0]),
        "b": np.array([np.nan, 0.0]),
        "c": np.array([3.0, 4.0]),
    }
    answer, confidence = policy.combine(state, None, outputs)
    np.testing.assert_allclose(answer, [2.0, 3.0])
    assert confidence == pytest.approx(2 / 3)


def test_exp4_vote_leaves_out_a_nan() -> None:
    """A NaN does not take part in a vote of labels; it lowers the confidence."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    answer, confidence = policy.combine(state, None, {"a": 7, "b": float("nan"), "c": 7})
    assert answer == 7
    assert confidence == pytest.approx(2 / 3)


def test_exp4_only_non_finite_outputs_give_confidence_zero() -> None:
    """When every output is NaN or infinite, the confidence is 0: nothing stands behind it."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    _, confidence = policy.combine(state, None, {"a": float("nan"), "b": float("inf")})
    assert confidence == 0.0


def test_exp4_a_nan_model_loses_weight_and_the_answers_stay_finite() -> None:
    """After many feedbacks a model answering NaN has the least weight; answers stay finite."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    for _ in range(50):
        outputs = {"a": 1.0, "b": float("nan"), "c": 1.2}
        answer, _ = policy.combine(state, None, outputs)
        assert math.isfinite(answer)
        state = policy.observe(state, None, 1.0, outputs)
    w = weights_of(state)
    assert w["b"] < w["c"] < w["a"]


# -- Exp4: the default learning-rate schedule ----------------------------------------------------


def schedule_rate(k: int, ensemble_loss: float, scale: float = 0.75, floor: float = 0.1) -> float:
    """The schedule written out: max(floor, scale * sqrt(ln K / (1 + ensemble loss)))."""
    return max(floor, scale * math.sqrt(math.log(k) / (1.0 + ensemble_loss)))


def test_exp4_default_rate_starts_at_the_schedule_and_a_fresh_state_paid_nothing() -> None:
    """A fresh default state has paid no loss; its rate is 0.75 sqrt(ln K)."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    assert state["ensemble_loss"] == 0.0
    assert policy.rate(state) == pytest.approx(0.75 * math.sqrt(math.log(3)))


def test_exp4_schedule_step_by_step() -> None:
    """Each feedback: the losers pay the current rate, the ensemble loss grows by the
    weighted mean loss, and the log weights are rescaled by new rate / old rate."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    # Step 1: equal weights, "a" wrong: the ensemble paid 1/3.
    eta1 = schedule_rate(3, 0.0)
    state = policy.observe(state, None, "y", {"a": "n", "b": "y", "c": "y"})
    eta2 = schedule_rate(3, 1 / 3)
    assert state["ensemble_loss"] == pytest.approx(1 / 3)
    assert state["log_weights"] == pytest.approx([-eta1 * eta2 / eta1, 0.0, 0.0])
    assert policy.rate(state) == pytest.approx(eta2)
    # Step 2: "b" wrong; the shares are those of step 1's weights.
    shares = weights_of(state)
    state = policy.observe(state, None, "y", {"a": "y", "b": "n", "c": "y"})
    paid = 1 / 3 + shares["b"]
    eta3 = schedule_rate(3, paid)
    assert state["ensemble_loss"] == pytest.approx(paid)
    # Hedge's weights: exp(-rate * cumulative loss), each model one mistake behind "c".
    assert state["log_weights"] == pytest.approx([-eta3, -eta3, 0.0])


def test_exp4_schedule_keeps_the_hedge_weights_of_the_current_rate() -> None:
    """After many feedbacks each log weight is -rate * (its losses - the best's)."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    losses = dict.fromkeys(MODELS, 0)
    for t in range(40):
        outputs = {"a": "y" if t % 2 else "n", "b": "y" if t % 5 else "n", "c": "y"}
        state = policy.observe(state, None, "y", outputs)
        for m, out in outputs.items():
            losses[m] += out != "y"
    eta = policy.rate(state)
    assert eta > 0.1  # the floor is not reached yet
    best = min(losses.values())
    assert state["log_weights"] == pytest.approx([-eta * (losses[m] - best) for m in MODELS])


def test_exp4_schedule_falls_with_the_loss_paid_and_stops_at_its_floor() -> None:
    """The rate shrinks as the ensemble pays loss and never goes below min_eta."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    rates = [policy.rate(state)]
    for _ in range(200):
        state = policy.observe(state, None, "y", {"a": "n", "b": "n", "c": "n"})
        rates.append(policy.rate(state))
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[-1] == 0.1
    assert state["ensemble_loss"] == pytest.approx(200.0)
    assert Exp4(min_eta=0.0, rate_scale=2.0).rate(state) == pytest.approx(
        schedule_rate(3, 200.0, 2.0, 0.0)
    )


def test_exp4_schedule_ensemble_loss_counts_only_the_models_that_answered() -> None:
    """A straggler pays nothing, and the loss added is the answering models' weighted mean."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    state = policy.observe(state, None, "y", {"a": "n", "b": "y"})
    assert state["ensemble_loss"] == pytest.approx(0.5)
    assert state["log_weights"][2] == 0.0


def test_exp4_given_eta_is_a_constant_rate_with_the_old_state() -> None:
    """Exp4(eta=...) keeps a constant rate and a {"models", "log_weights"} state."""
    policy = Exp4(eta=0.3)
    state = policy.init_state(MODELS)
    for _ in range(3):
        state = policy.observe(state, None, "y", {"a": "n", "b": "y", "c": "y"})
        assert policy.rate(state) == 0.3
    assert set(state) == {"models", "log_weights"}
    assert state["log_weights"] == pytest.approx([-0.9, 0.0, 0.0])


def test_exp4_schedule_state_round_trips_through_json() -> None:
    """A saved schedule state restores to the same weights, rate and ensemble loss."""
    policy = Exp4()
    state = policy.init_state(MODELS)
    for _ in range(5):
        state = policy.observe(state, None, "y", {"a": "n", "b": "y", "c": "n"})
    restored = policy.restore_state(json.loads(json.dumps(state)), list(MODELS))
    assert restored["ensemble_loss"] == pytest.approx(state["ensemble_loss"])
    assert policy.rate(restored) == pytest.approx(policy.rate(state))
    assert weights_of(restored) == pytest.approx(weights_of(state))


def test_exp4_schedule_restores_a_weights_only_state_from_the_start() -> None:
    """A {"models", "log_weights"} state is accepted by the schedule, its loss paid 0."""
    restored = Exp4().restore_state({"models": ["a", "b"], "log_weights": [0.0, -1.0]}, ["a", "b"])
    assert restored == {"models": ["a", "b"], "log_weights": [0.0, -1.0], "ensemble_loss": 0.0}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "3", True, None])
def test_exp4_schedule_rejects_a_bad_ensemble_loss(bad: Any) -> None:
    """A saved ensemble_loss that is not a finite number >= 0 is a ValueError naming it."""
    saved = {"models": ["a"], "log_weights": [0.0], "ensemble_loss": bad}
    with pytest.raises(ValueError, match="ensemble_loss"):
        Exp4().restore_state(saved, ["a"])


def test_exp4_constant_eta_rejects_an_ensemble_loss_key() -> None:
    """With a constant eta the state is exactly {"models", "log_weights"}, as before."""
    with pytest.raises(ValueError, match="exactly the keys"):
        Exp4(eta=0.1).restore_state(
            {"models": ["a"], "log_weights": [0.0], "ensemble_loss": 1.0}, ["a"]
        )


def test_exp4_relinking_keeps_the_ensemble_loss() -> None:
    """init_state with a previous schedule state carries its ensemble loss over."""
    policy = Exp4()
    state = policy.init_state(["a", "b"])
    state = policy.observe(state, None, "y", {"a": "n", "b": "y"})
    relinked = policy.init_state(["a", "b", "c"], state)
    assert relinked["ensemble_loss"] == pytest.approx(state["ensemble_loss"])


@pytest.mark.parametrize(
    "options", [{"rate_scale": 0.0}, {"rate_scale": float("nan")}, {"min_eta": -0.1}]
)
def test_exp4_rejects_bad_schedule_options(options: dict[str, float]) -> None:
    """rate_scale must be > 0 and min_eta >= 0, both finite."""
    with pytest.raises(ValueError):
        Exp4(**options)


# -- Exp4: warm start from a labelled record -----------------------------------------------------


@pytest.mark.parametrize("policy", [Exp4(), Exp4(eta=0.5)], ids=repr)
def test_exp4_warm_state_is_feedback_on_each_record_entry_in_turn(policy: Exp4) -> None:
    """warm_state gives the state that observe reaches over the record, schedule included."""
    record = [
        ({"a": "y", "b": "n", "c": "n"}, "y"),
        ({"a": "y", "b": "y", "c": "n"}, "y"),
        ({}, "y"),
    ]
    state = policy.init_state(MODELS)
    for outputs, label in record:
        state = policy.observe(state, None, label, outputs)
    warm = policy.warm_state(MODELS, iter(record))
    assert warm == state
    assert weights_of(warm)["a"] > weights_of(warm)["b"] > weights_of(warm)["c"]


def test_exp4_warm_state_of_an_empty_record_is_a_fresh_state() -> None:
    """No record: the state init_state gives, equal weights and nothing paid."""
    assert Exp4().warm_state(MODELS, []) == Exp4().init_state(MODELS)


def test_exp4_warm_state_lets_the_best_record_outvote_two_that_agree() -> None:
    """Cold, two models agreeing outvote a third; after a record where they erred, it wins."""
    policy = Exp4()
    outputs = {"a": "y", "b": "n", "c": "n"}
    assert policy.combine(policy.init_state(MODELS), None, outputs)[0] == "n"
    record = [({"a": 1, "b": 1, "c": 1}, 1)] * 20 + [({"a": 1, "b": 2, "c": 3}, 1)] * 3
    assert policy.combine(policy.warm_state(MODELS, record), None, outputs)[0] == "y"


@pytest.mark.parametrize(
    ("models", "record", "match"),
    [
        ([], [], "each linked model once"),
        (["a", "a"], [], "each linked model once"),
        (["a", "b"], [({"a": 1}, 1), ({"a": 1, "z": 1}, 1)], r"entry 1 .*\['z'\]"),
    ],
)
def test_exp4_warm_state_rejects_a_bad_record(models: list[str], record: Any, match: str) -> None:
    """Unknown or repeated model names are a ValueError naming them, not silently skipped."""
    with pytest.raises(ValueError, match=match):
        Exp4().warm_state(models, record)


@pytest.mark.parametrize(
    ("models", "record", "match"),
    [
        ("ab", [], "the string 'ab'"),
        (["a"], [({"a": 1}, 1), ({"a": 1},)], r"entry 1 must be an \(outputs, label\) pair"),
        (["a"], [(["a"], 1)], r"entry 0's outputs must map model names"),
    ],
)
def test_exp4_warm_state_rejects_a_malformed_record(models: Any, record: Any, match: str) -> None:
    """A string for the models, or an entry that is not an (outputs, label) pair, is a
    TypeError saying which entry and what it must be."""
    with pytest.raises(TypeError, match=match):
        Exp4().warm_state(models, record)


def test_default_loss_of_a_label_beyond_any_float_is_one() -> None:
    """A numeric output against an int label too large for a float is wrong, not a crash."""
    assert default_loss(1.0, 10**400) == 1.0
