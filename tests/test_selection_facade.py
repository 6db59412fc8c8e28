"""Model selection through the public API: apps with several models, predict and feedback."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest

import clipperlite
from clipperlite import Clipper, ClipperError, Exp4, testing

SLO = 1_000_000  # µs: generous, so only the tests that mean to see a deadline see one


async def deploy(
    clipper: Clipper, app: str, models: dict[str, Any], itype: str = "doubles"
) -> None:
    """Deploy each model (name -> func) and link it to `app`, in order."""
    for name, func in models.items():
        await clipper.deploy_model(name, 1, itype, func)
        clipper.link_model_to_app(app, name)


def weights(state: dict[str, Any]) -> dict[str, float]:
    """Model -> log weight, from a built-in policy's state."""
    return dict(zip(state["models"], state["log_weights"], strict=True))


class Failing:
    """A policy (Exp4's behaviour) whose `method` raises `error` (RuntimeError('boom'))."""

    def __init__(self, method: str, error: Exception | None = None) -> None:
        self.method = method
        self.error = error or RuntimeError("boom")
        self.inner = Exp4()

    def _maybe_fail(self, method: str) -> None:
        if method == self.method:
            raise self.error

    def init_state(self, models: list[str], previous: Any = None) -> Any:
        return self.inner.init_state(models, previous)

    def select(self, state: Any, x: Any) -> list[str]:
        self._maybe_fail("select")
        return self.inner.select(state, x)

    def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        self._maybe_fail("combine")
        return self.inner.combine(state, x, outputs)

    def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
        self._maybe_fail("observe")
        return self.inner.observe(state, x, y, outputs)


class FirstWins:
    """A user-written policy: ask the model with the fewest mistakes so far (ties: the first)."""

    def init_state(self, models: list[str], previous: Any = None) -> dict[str, int]:
        old = previous or {}
        return {m: old.get(m, 0) for m in models}

    def select(self, state: dict[str, int], x: Any) -> list[str]:
        return [min(state, key=state.__getitem__)]

    def combine(self, state: dict[str, int], x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        return next(iter(outputs.values())), 1.0

    def observe(
        self, state: dict[str, int], x: Any, y: Any, outputs: dict[str, Any]
    ) -> dict[str, int]:
        return {m: n + (m in outputs and outputs[m] != y) for m, n in state.items()}


class RecordingExp4(Exp4):
    """Exp4 that records every init_state call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], Any]] = []

    def init_state(self, models: list[str], previous: Any = None) -> dict[str, Any]:
        self.calls.append((list(models), previous))
        return super().init_state(models, previous)


@pytest.mark.anyio
async def test_exp3_app_learns_to_choose_the_model_feedback_says_is_right() -> None:
    """After 100 feedbacks naming one model right, a seeded Exp3 app mostly asks that one."""
    async with Clipper(seed=7) as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp3")
        await deploy(
            clipper, "app", {"right": testing.constant("yes"), "wrong": testing.constant("no")}
        )
        for i in range(100):
            await clipper.feedback("app", [float(i)], "yes")
        answers = [(await clipper.predict("app", [1000.0 + i])).output for i in range(200)]
        state = weights(clipper.get_policy_state("app"))
    assert answers.count("yes") >= 180
    assert state["right"] > state["wrong"]


@pytest.mark.anyio
async def test_feedback_uses_the_cached_output_of_a_prediction() -> None:
    """Feedback for an x predicted before takes the models' outputs from the cache."""
    a, b = testing.counting(testing.constant("cat")), testing.counting(testing.constant("dog"))
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", {"a": a, "b": b})
        await clipper.predict("app", [1.0, 2.0])
        before = weights(clipper.get_policy_state("app"))
        await clipper.feedback("app", [1.0, 2.0], "cat")
        after = weights(clipper.get_policy_state("app"))
    assert (a.calls, b.calls) == (1, 1)
    assert after["a"] - after["b"] > before["a"] - before["b"]


@pytest.mark.anyio
async def test_feedback_computes_an_output_that_is_missing() -> None:
    """Feedback for an x never predicted asks the models, then updates the weights."""
    a, b = testing.counting(testing.constant("cat")), testing.counting(testing.constant("dog"))
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", {"a": a, "b": b})
        await clipper.feedback("app", [3.0], "dog")
        state = weights(clipper.get_policy_state("app"))
    assert (a.calls, b.calls) == (1, 1)
    assert [float(x[0]) for x in a.inputs] == [3.0]
    assert state["b"] > state["a"]


@pytest.mark.anyio
async def test_exp4_weighted_vote_through_predict() -> None:
    """Exp4 answers the label with the most weight, its confidence that weight's share."""
    models = {m: testing.constant(v) for m, v in (("a", "cat"), ("b", "dog"), ("c", "dog"))}
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", models)
        equal = await clipper.predict("app", [1.0])
        clipper.set_policy_state("app", {"models": ["a", "b", "c"], "log_weights": [0, -2, -2]})
        weighted = await clipper.predict("app", [1.0])
    assert (equal.output, equal.models_answered) == ("dog", 3)
    assert equal.confidence == pytest.approx(2 / 3)
    assert (weighted.output, weighted.models_answered) == ("cat", 3)
    assert weighted.confidence == pytest.approx(1 / (1 + 2 * math.exp(-2)))


@pytest.mark.anyio
async def test_exp4_weighted_mean_through_predict() -> None:
    """Exp4 averages float outputs by weight, with confidence 1 when all answered."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", -1.0, SLO, policy="exp4")
        await deploy(clipper, "app", {"a": testing.constant(1.0), "b": testing.constant(3.0)})
        equal = await clipper.predict("app", [1.0])
        clipper.set_policy_state("app", {"models": ["a", "b"], "log_weights": [0, math.log(3)]})
        weighted = await clipper.predict("app", [1.0])
    assert equal.output == pytest.approx(2.0)
    assert weighted.output == pytest.approx(2.5)
    assert (weighted.models_answered, weighted.confidence) == (2, pytest.approx(1.0))


@pytest.mark.anyio
async def test_exp4_answers_from_the_models_that_beat_the_deadline() -> None:
    """A model slower than the SLO is left out: the others' mean, fewer answers, less confidence."""
    models = {
        "a": testing.constant(1.0),
        "b": testing.constant(3.0),
        "slow": testing.async_slow(2.0, testing.constant(100.0)),
    }
    async with Clipper(shutdown_grace_s=0.0) as clipper:
        clipper.register_application("app", "doubles", -1.0, 200_000, policy="exp4")
        await deploy(clipper, "app", models)
        p = await clipper.predict("app", [1.0])
    assert (p.default, p.output, p.models_answered) == (False, pytest.approx(2.0), 2)
    assert p.confidence == pytest.approx(2 / 3)


@pytest.mark.anyio
async def test_min_confidence_gives_the_default_with_an_explanation() -> None:
    """An answer less confident than min_confidence becomes the default, explained."""
    models = {m: testing.constant(v) for m, v in (("a", "cat"), ("b", "dog"), ("c", "dog"))}
    async with Clipper() as clipper:
        clipper.register_application(
            "pets", "doubles", "unsure", SLO, policy="exp4", min_confidence=0.9
        )
        await deploy(clipper, "pets", models)
        p = await clipper.predict("pets", [1.0])
    assert (p.default, p.output, p.models_answered) == (True, "unsure", 3)
    assert p.confidence == pytest.approx(2 / 3)
    assert p.default_explanation is not None
    assert "'pets'" in p.default_explanation
    assert "min_confidence" in p.default_explanation
    assert "0.667" in p.default_explanation


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["select", "combine"])
async def test_a_policy_that_raises_gives_predict_the_default_explained(method: str) -> None:
    """A policy raising in select or combine gives the default, 'policy ... raised ...'."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=Failing(method))
        await deploy(clipper, "app", {"a": testing.constant("cat")})
        p = await clipper.predict("app", [1.0])
    assert (p.default, p.output) == (True, "?")
    assert p.default_explanation is not None
    assert "'app'" in p.default_explanation
    assert "policy Failing" in p.default_explanation
    assert "raised RuntimeError: boom" in p.default_explanation


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["select", "observe"])
async def test_a_policy_that_raises_makes_feedback_raise_a_chained_clipper_error(
    method: str,
) -> None:
    """A policy raising in select or observe makes feedback raise ClipperError from the cause."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=Failing(method))
        await deploy(clipper, "app", {"a": testing.constant("cat")})
        with pytest.raises(ClipperError, match=r"policy Failing .*raised RuntimeError") as info:
            await clipper.feedback("app", [1.0], "cat")
    assert isinstance(info.value.__cause__, RuntimeError)


class Unprintable(Exception):
    """An error whose str() raises: its `__str__` reads an attribute never set."""

    def __str__(self) -> str:
        return str(self.reason)  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["select", "combine", "observe"])
async def test_a_policy_error_that_cannot_be_printed_is_still_explained(method: str) -> None:
    """A policy error whose str() raises is named by its type: predict gets the default
    explained, feedback a ClipperError chained to it."""
    async with Clipper() as clipper:
        policy = Failing(method, Unprintable())
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": testing.constant("cat")})
        p = await clipper.predict("app", [1.0])
        if method != "combine":
            with pytest.raises(ClipperError, match=r"raised Unprintable: <str\(\) failed>") as info:
                await clipper.feedback("app", [1.0], "cat")
            assert isinstance(info.value.__cause__, Unprintable)
    if method == "observe":
        assert (p.default, p.output) == (False, "cat")
    else:
        assert (p.default, p.output) == (True, "?")
        assert "raised Unprintable: <str() failed>" in (p.default_explanation or "")


@pytest.mark.anyio
async def test_a_policy_selecting_an_unlinked_model_is_a_policy_error() -> None:
    """Selecting a model that is not linked gives predict the default and feedback an error."""

    class Stray(Failing):
        def select(self, state: Any, x: Any) -> list[str]:
            return ["ghost"]

    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=Stray("none"))
        await deploy(clipper, "app", {"a": testing.constant("cat")})
        p = await clipper.predict("app", [1.0])
        with pytest.raises(ClipperError, match="ghost"):
            await clipper.feedback("app", [1.0], "cat")
    assert p.default
    assert p.default_explanation is not None
    assert "policy Stray" in p.default_explanation
    assert "ghost" in p.default_explanation


@pytest.mark.anyio
async def test_a_user_defined_policy_object_serves_an_app() -> None:
    """A plain object with the four methods is a SelectionPolicy and drives predict/feedback."""
    policy = FirstWins()
    assert isinstance(policy, clipperlite.SelectionPolicy)
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": testing.constant("cat"), "b": testing.constant("dog")})
        first = await clipper.predict("app", [1.0])
        await clipper.feedback("app", [1.0], "dog")
        second = await clipper.predict("app", [2.0])
        state = clipper.get_policy_state("app")
    assert (first.output, second.output) == ("cat", "dog")
    assert state == {"a": 1, "b": 0}


@pytest.mark.anyio
async def test_a_model_linked_mid_stream_starts_at_the_average_weight() -> None:
    """Linking a model calls init_state with the old state; the newcomer gets the mean weight."""
    policy = RecordingExp4()
    a, b = testing.constant("cat"), testing.constant("dog")
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": a, "b": b})
        for i in range(5):
            await clipper.feedback("app", [float(i)], "cat")
        old = clipper.get_policy_state("app")
        await deploy(clipper, "app", {"c": testing.constant("bird")})
        p = await clipper.predict("app", [9.0])
        new = weights(clipper.get_policy_state("app"))
    models, previous = policy.calls[-1]
    assert models == ["a", "b", "c"]
    assert previous == old
    w = weights(old)
    assert new["a"] - new["b"] == pytest.approx(w["a"] - w["b"])
    mean = math.log((math.exp(new["a"]) + math.exp(new["b"])) / 2)
    assert new["c"] == pytest.approx(mean)
    assert p.models_answered == 3


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["exp3", "exp4"])
async def test_policy_state_round_trips_through_json(policy: str) -> None:
    """get_policy_state gives JSON-able values; setting them back changes nothing."""
    async with Clipper(seed=3) as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": testing.constant("cat"), "b": testing.constant("dog")})
        for i in range(20):
            await clipper.feedback("app", [float(i)], "cat")
        saved = clipper.get_policy_state("app")
        clipper.set_policy_state("app", json.loads(json.dumps(saved)))
        restored = clipper.get_policy_state("app")
    assert restored == saved
    assert weights(saved)["a"] > weights(saved)["b"]


@pytest.mark.anyio
async def test_a_restored_state_carries_learning_to_a_new_clipper() -> None:
    """A state saved from one Clipper makes a fresh one answer as the trained one did."""
    models = {m: testing.constant(v) for m, v in (("a", "cat"), ("b", "dog"), ("c", "dog"))}
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", models)
        for i in range(30):
            await clipper.feedback("app", [float(i)], "cat")
        saved = json.dumps(clipper.get_policy_state("app"))
    async with Clipper() as fresh:
        fresh.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(fresh, "app", models)
        assert (await fresh.predict("app", [1.0])).output == "dog"
        fresh.set_policy_state("app", json.loads(saved))
        assert (await fresh.predict("app", [1.0])).output == "cat"


@pytest.mark.anyio
async def test_a_state_naming_an_unknown_model_is_refused() -> None:
    """set_policy_state refuses a state naming a model that is not linked, and keeps the old."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", {"a": testing.constant("cat"), "b": testing.constant("dog")})
        before = clipper.get_policy_state("app")
        with pytest.raises(ClipperError, match="ghost"):
            clipper.set_policy_state("app", {"models": ["a", "ghost"], "log_weights": [0.0, -1.0]})
        assert clipper.get_policy_state("app") == before


@pytest.mark.anyio
@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        "weights",
        {"models": ["a", "b"]},
        {"models": ["a", "b"], "log_weights": [0.0, 0.0], "extra": 1},
        {"models": ["a", "b"], "log_weights": [0.0]},
        {"models": ["a", "b"], "log_weights": [0.0, "x"]},
        {"models": ["a", "b"], "log_weights": [0.0, float("nan")]},
        {"models": ["a", "b"], "log_weights": [0.0, float("inf")]},
        {"models": ["a", "b"], "log_weights": [0.0, True]},
        {"models": ["a", "a"], "log_weights": [0.0, 0.0]},
        {"models": "ab", "log_weights": [0.0, 0.0]},
        {"models": ["a", 2], "log_weights": [0.0, 0.0]},
    ],
)
@pytest.mark.parametrize("policy", ["exp3", "exp4"])
async def test_a_malformed_state_is_refused(policy: str, state: Any) -> None:
    """set_policy_state raises ClipperError for a malformed state and keeps the old one."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": testing.constant("cat"), "b": testing.constant("dog")})
        before = clipper.get_policy_state("app")
        with pytest.raises(ClipperError, match="'app'"):
            clipper.set_policy_state("app", state)
        assert clipper.get_policy_state("app") == before


@pytest.mark.anyio
async def test_one_policy_object_keeps_separate_state_per_app() -> None:
    """Two apps sharing one Exp4 object learn separately."""
    policy = Exp4()
    async with Clipper() as clipper:
        for app in ("one", "two"):
            clipper.register_application(app, "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "one", {"a": testing.constant("cat"), "b": testing.constant("dog")})
        clipper.link_model_to_app("two", "a")
        clipper.link_model_to_app("two", "b")
        for i in range(10):
            await clipper.feedback("one", [float(i)], "cat")
            await clipper.feedback("two", [float(i)], "dog")
        one = weights(clipper.get_policy_state("one"))
        two = weights(clipper.get_policy_state("two"))
    assert one["a"] > one["b"]
    assert two["b"] > two["a"]
    assert one["b"] - one["a"] == pytest.approx(two["a"] - two["b"])


@pytest.mark.anyio
async def test_concurrent_feedbacks_lose_no_update() -> None:
    """50 concurrent feedbacks on an Exp4 app end in the state applying them one by one gives."""
    mod2 = testing.counting(lambda xs: [int(x[0]) % 2 for x in xs])
    funcs = {
        "mod2": mod2,
        "mod3": lambda xs: [int(x[0]) % 3 for x in xs],
        "zero": lambda xs: [0 for _ in xs],
    }
    xs = list(range(50))
    labels = [x % 2 for x in xs]
    reference = Exp4()
    expected = reference.init_state(list(funcs))
    for x, y in zip(xs, labels, strict=True):
        outputs = {"mod2": x % 2, "mod3": x % 3, "zero": 0}
        expected = reference.observe(expected, x, y, outputs)
    async with Clipper() as clipper:
        clipper.register_application("app", "integers", -1, SLO, policy="exp4")
        await deploy(clipper, "app", funcs, itype="integers")
        await asyncio.gather(
            *(clipper.feedback("app", [x], y) for x, y in zip(xs, labels, strict=True))
        )
        state = clipper.get_policy_state("app")
    assert state["models"] == expected["models"]
    assert state["log_weights"] == pytest.approx(expected["log_weights"], abs=1e-9)
    assert weights(state)["mod2"] > weights(state)["zero"] > weights(state)["mod3"]
    assert sum(mod2.batch_sizes) == 50
    assert max(mod2.batch_sizes) > 1  # the feedbacks really were in flight together


# -- feedback joined to what was served ----------------------------------------------------------


@pytest.mark.anyio
async def test_exp3_feedback_after_predict_calls_no_model_again() -> None:
    """Feedback on predicted inputs updates the model that answered, from the cache: no call."""
    a, b = testing.counting(testing.constant("yes")), testing.counting(testing.constant("no"))
    async with Clipper(seed=3) as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp3")
        await deploy(clipper, "app", {"a": a, "b": b})
        served: dict[float, str] = {}
        for i in range(40):
            p = await clipper.predict("app", [float(i)])
            served[float(i)] = "a" if p.output == "yes" else "b"
        predicted = a.calls + b.calls
        before = weights(clipper.get_policy_state("app"))
        for i in range(40):
            await clipper.feedback("app", [float(i)], "yes")
        after = weights(clipper.get_policy_state("app"))
    assert predicted == 40
    assert a.calls + b.calls == 40  # not one call for the 40 feedbacks
    assert set(served.values()) == {"a", "b"}
    # only "b" was ever wrong, and only the queries it served taught that
    assert after["a"] - after["b"] > before["a"] - before["b"]


@pytest.mark.anyio
async def test_exp3_feedback_is_weighted_by_the_probability_the_model_had_when_it_served() -> None:
    """The update divides the loss by the chance recorded at predict time, not the current one."""
    async with Clipper(seed=1) as clipper:
        policy = clipperlite.Exp3(eta=0.1, gamma=0.5, rng=0)
        clipper.register_application("app", "doubles", "?", SLO, policy=policy)
        await deploy(clipper, "app", {"a": testing.constant("no"), "b": testing.constant("no")})
        clipper.set_policy_state("app", {"models": ["a", "b"], "log_weights": [0.0, 0.0]})
        p = await clipper.predict("app", [1.0])
        assert p.output == "no"
        # the state moves on before the feedback arrives: p(served model) is now different
        clipper.set_policy_state("app", {"models": ["a", "b"], "log_weights": [0.0, -5.0]})
        before = weights(clipper.get_policy_state("app"))
        await clipper.feedback("app", [1.0], "yes")
        after = weights(clipper.get_policy_state("app"))
    # p(served model) was 0.5 at predict time (now 0.75 or 0.25): a loss of 1 costs
    # 0.1 / 0.5 = 0.2 in log weight (0.13 or 0.4 with the current chances).
    gap_before = before["a"] - before["b"]
    gap_after = after["a"] - after["b"]
    assert abs(abs(gap_after - gap_before) - 0.2) < 1e-9


@pytest.mark.anyio
async def test_feedback_on_an_input_never_predicted_selects_and_computes() -> None:
    """Without a recorded prediction, Exp3 feedback draws a model and calls it once."""
    a, b = testing.counting(testing.constant("yes")), testing.counting(testing.constant("no"))
    async with Clipper(seed=5) as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp3")
        await deploy(clipper, "app", {"a": a, "b": b})
        for i in range(10):
            await clipper.feedback("app", [float(i)], "yes")
    assert a.calls + b.calls == 10


@pytest.mark.anyio
async def test_exp4_feedback_after_predict_calls_no_model_again() -> None:
    """Exp4 feedback on a predicted input updates every model that answered, no new call."""
    a, b = testing.counting(testing.constant("cat")), testing.counting(testing.constant("dog"))
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "app", {"a": a, "b": b})
        await clipper.predict("app", [2.0])
        await clipper.feedback("app", [2.0], "dog")
        state = weights(clipper.get_policy_state("app"))
    assert (a.calls, b.calls) == (1, 1)
    assert state["b"] > state["a"]


# -- deterministic combining ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cached_model_answering_first_does_not_win_a_tie() -> None:
    """A tie of equal weights goes to the model linked first, though the other was cached."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp4")
        clipper.register_application("warm", "doubles", "?", SLO)
        await deploy(
            clipper, "app", {"old": testing.constant("cat"), "new": testing.constant("dog")}
        )
        clipper.link_model_to_app("warm", "new")
        await clipper.predict("warm", [9.0])  # "new" now answers [9.0] from the cache, first
        p = await clipper.predict("app", [9.0])
    assert (p.output, p.confidence) == ("cat", pytest.approx(0.5))


@pytest.mark.anyio
async def test_the_same_seed_gives_the_same_answers() -> None:
    """Two Clippers with one seed, fed the same stream, answer alike query by query."""

    async def run(seed: int) -> list[Any]:
        async with Clipper(seed=seed) as clipper:
            clipper.register_application("app", "doubles", "?", SLO, policy="exp3")
            clipper.register_application("ens", "doubles", "?", SLO, policy="exp4")
            models = {m: testing.constant(m) for m in ("a", "b", "c")}
            await deploy(clipper, "app", models)
            for m in models:
                clipper.link_model_to_app("ens", m)
            answers = []
            for i in range(60):
                x = [float(i % 7)]
                answers += [(await clipper.predict(app, x)).output for app in ("app", "ens")]
                await clipper.feedback("app", x, "b" if i % 3 else "a")
                await clipper.feedback("ens", x, "c" if i % 2 else "a")
            return answers

    first, second = await run(11), await run(11)
    assert first == second
    assert len(set(first[::2])) > 1  # Exp3 did draw different models


@pytest.mark.anyio
async def test_a_model_answering_nan_does_not_poison_the_mean() -> None:
    """Exp4's mean leaves a NaN output out, like a straggler, and says so in the confidence."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", -1.0, SLO, policy="exp4")
        await deploy(
            clipper,
            "app",
            {
                "a": testing.constant(1.0),
                "nan": testing.constant(float("nan")),
                "c": testing.constant(3.0),
            },
        )
        answers = []
        for i in range(20):
            p = await clipper.predict("app", [float(i)])
            answers.append(p)
            await clipper.feedback("app", [float(i)], 2.0)
    assert all(math.isfinite(p.output) for p in answers)
    assert answers[0].output == pytest.approx(2.0)
    assert answers[0].confidence == pytest.approx(2 / 3)
    assert all(p.confidence < 1.0 for p in answers)


@pytest.mark.anyio
async def test_a_warm_started_exp4_app_keeps_the_query_a_cold_one_loses() -> None:
    """A state from Exp4.warm_state, set through set_policy_state, serves from the start."""
    models = {
        "svm": testing.constant("4"),
        "knn": testing.constant("1"),
        "bayes": testing.constant("1"),
    }
    record = [({"svm": "4", "knn": "4", "bayes": "4"}, "4")] * 30
    record += [({"svm": "4", "knn": "7", "bayes": "7"}, "4")] * 2
    async with Clipper() as clipper:
        for app in ("cold", "warm"):
            clipper.register_application(app, "doubles", "?", SLO, policy="exp4")
        await deploy(clipper, "cold", models)
        for name in models:
            clipper.link_model_to_app("warm", name)
        state = Exp4().warm_state(clipper.get_linked_models("warm"), record)
        clipper.set_policy_state("warm", json.loads(json.dumps(state)))
        restored = clipper.get_policy_state("warm")
        assert restored["log_weights"] == pytest.approx(state["log_weights"])
        assert restored["ensemble_loss"] == pytest.approx(state["ensemble_loss"])
        cold = await clipper.predict("cold", [1.0])
        warm = await clipper.predict("warm", [1.0])
    assert (cold.output, warm.output) == ("1", "4")
    assert warm.confidence > 0.5


@pytest.mark.anyio
@pytest.mark.parametrize("policy", [Exp4(), Exp4(eta=0.3)], ids=repr)
@pytest.mark.parametrize("context", [None, "user-1"])
async def test_warm_state_is_what_feedback_through_the_app_learns(
    policy: Exp4, context: str | None
) -> None:
    """Feedback on labelled inputs through a Clipper app and warm_state of the models'
    answers to them reach the same state, whatever order the models are named in."""
    answers = {"a": [0, 1, 1, 0, 1, 1], "b": [0, 0, 1, 1, 1, 0], "c": [1, 1, 0, 0, 1, 1]}
    labels = [0, 1, 1, 0, 1, 1]

    def model(name: str) -> Any:
        return lambda xs: [answers[name][int(x[0])] for x in xs]

    async with Clipper() as clipper:
        for app in ("fed", "warm"):
            clipper.register_application(app, "doubles", -1, SLO, policy=policy)
        await deploy(clipper, "fed", {name: model(name) for name in answers})
        for name in answers:
            clipper.link_model_to_app("warm", name)
        for i, y in enumerate(labels):
            await clipper.feedback("fed", [float(i)], y, context=context)
        record = [({m: answers[m][i] for m in ("c", "a", "b")}, y) for i, y in enumerate(labels)]
        state = policy.warm_state(["c", "a", "b"], record)
        clipper.set_policy_state("warm", json.loads(json.dumps(state)), context=context)
        fed = clipper.get_policy_state("fed", context=context)
        warm = clipper.get_policy_state("warm", context=context)
    assert weights(warm) == pytest.approx(weights(fed))
    assert warm.get("ensemble_loss") == pytest.approx(fed.get("ensemble_loss"))
    assert len(set(weights(fed).values())) == 3  # the record separated all three models


@pytest.mark.anyio
@pytest.mark.parametrize(("x", "twin"), [(-1, -2), (1, 2**61)], ids=["-1,-2", "1,2**61"])
async def test_feedback_joins_the_input_not_an_input_with_the_same_hash(x: int, twin: int) -> None:
    """Inputs Python hashes alike (hash(-1) == hash(-2)) keep their own served records:
    feedback on x updates the model that answered x, not the one that answered its twin."""
    assert hash(x) == hash(twin)
    async with Clipper(seed=0) as clipper:
        clipper.register_application("app", "any", None, SLO, policy="exp3")
        await deploy(
            clipper, "app", {"a": testing.constant("A"), "b": testing.constant("B")}, "any"
        )
        first = (await clipper.predict("app", x)).output
        other = {"A": "B", "B": "A"}[first]
        for _ in range(200):  # draw until the twin is answered by the other model
            if (await clipper.predict("app", twin)).output == other:
                break
        else:
            pytest.fail("the twin was never answered by the other model")
        before = weights(clipper.get_policy_state("app"))
        await clipper.feedback("app", x, first)  # x's own model was right: nothing moves
        after = weights(clipper.get_policy_state("app"))
    assert after == before


class _Picks:
    """A user policy whose select returns `picked` (any container), as written."""

    def __init__(self, picked: Any) -> None:
        self.picked = picked
        self.inner = Exp4()

    def init_state(self, models: list[str], previous: Any = None) -> Any:
        return self.inner.init_state(models, previous)

    def select(self, state: Any, x: Any) -> Any:
        return self.picked

    def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        return self.inner.combine(state, x, outputs)

    def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
        return self.inner.observe(state, x, y, outputs)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "picked", [("b",), np.array(["b"]), iter(["b"])], ids=["tuple", "ndarray", "iterator"]
)
async def test_select_may_return_any_iterable_of_names(picked: Any) -> None:
    """A tuple, a numpy array or an iterator of names selects those models."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=_Picks(picked))
        await deploy(clipper, "app", {"a": testing.constant("A"), "b": testing.constant("B")})
        p = await clipper.predict("app", [1.0])
    assert (p.default, p.output) == (False, "B")


@pytest.mark.anyio
@pytest.mark.parametrize("picked", ["b", 3], ids=["str", "int"])
async def test_select_returning_no_list_is_a_policy_error_saying_so(picked: Any) -> None:
    """A str (not a list of one) or a non-iterable from select is a policy error that says
    what select must return."""
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy=_Picks(picked))
        await deploy(clipper, "app", {"a": testing.constant("A"), "b": testing.constant("B")})
        p = await clipper.predict("app", [1.0])
    assert p.default_cause == "policy_error", p
    assert "select must return a list of model names" in (p.default_explanation or "")


@pytest.mark.anyio
async def test_feedback_joins_an_equal_input_made_of_other_objects() -> None:
    """Feedback on an input equal to the predicted one but built anew (a str repeated as
    one object, against equal copies from json) joins the same served record."""
    import json as _json

    s = "ab"
    async with Clipper(seed=0) as clipper:
        clipper.register_application("app", "any", None, SLO, policy="exp3")
        await deploy(
            clipper, "app", {"a": testing.constant("A"), "b": testing.constant("B")}, "any"
        )
        served = (await clipper.predict("app", [s, s])).output
        before = weights(clipper.get_policy_state("app"))
        await clipper.feedback("app", _json.loads('["ab", "ab"]'), served)  # it was right
        after = weights(clipper.get_policy_state("app"))
    assert after == before
