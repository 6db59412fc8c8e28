"""Contexts through the public API: a policy state per user, bounded, shared outputs."""

from __future__ import annotations

from typing import Any

import pytest

from clipperlite import Clipper, ClipperError, testing

SLO = 1_000_000  # µs


async def two_models(clipper: Clipper, policy: str = "exp3", **options: Any) -> None:
    """An app "app" with models "a" (answers "a") and "b" (answers "b"), in that order."""
    clipper.register_application("app", "doubles", "?", SLO, policy=policy, **options)
    for name in ("a", "b"):
        await clipper.deploy_model(name, 1, "doubles", testing.constant(name))
        clipper.link_model_to_app("app", name)


def weights(state: dict[str, Any]) -> dict[str, float]:
    """Model -> log weight, from a built-in policy's state."""
    return dict(zip(state["models"], state["log_weights"], strict=True))


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["exp3", "exp4"])
async def test_each_context_learns_its_own_model(policy: str) -> None:
    """Feedback from alice (a is right) and bob (b is right) teaches each its own model."""
    async with Clipper(seed=2) as clipper:
        await two_models(clipper, policy)
        for i in range(60):
            x = [float(i)]
            for user, right in (("alice", "a"), ("bob", "b")):
                await clipper.predict("app", x, context=user)
                await clipper.feedback("app", x, right, context=user)
        alice = weights(clipper.get_policy_state("app", "alice"))
        bob = weights(clipper.get_policy_state("app", "bob"))
        shared = weights(clipper.get_policy_state("app"))
        late = [
            (await clipper.predict("app", [1000.0 + i], context=user)).output
            for i in range(50)
            for user in ("alice", "bob")
        ]
    assert alice["a"] > alice["b"]
    assert bob["b"] > bob["a"]
    assert shared == {"a": 0.0, "b": 0.0}  # context=None was never taught
    assert late[0::2].count("a") >= 40
    assert late[1::2].count("b") >= 40


@pytest.mark.anyio
async def test_a_context_never_used_has_no_state() -> None:
    """get_policy_state of an unused context is None; the first predict creates it."""
    async with Clipper() as clipper:
        await two_models(clipper)
        assert clipper.get_policy_state("app", "carol") is None
        await clipper.predict("app", [1.0], context="carol")
        state = clipper.get_policy_state("app", "carol")
    assert weights(state) == {"a": 0.0, "b": 0.0}


@pytest.mark.anyio
async def test_contexts_beyond_max_contexts_drop_the_least_recently_used() -> None:
    """With max_contexts=2, a third context drops the one used longest ago."""
    async with Clipper() as clipper:
        await two_models(clipper, max_contexts=2)
        await clipper.predict("app", [1.0], context="u1")
        await clipper.predict("app", [1.0], context="u2")
        await clipper.predict("app", [1.0], context="u1")  # u2 is now the oldest
        await clipper.predict("app", [1.0], context="u3")
        await clipper.predict("app", [1.0])  # the shared state does not count
        kept = {u: clipper.get_policy_state("app", u) is not None for u in ("u1", "u2", "u3")}
        assert clipper.get_app_info("app")["max_contexts"] == 2
    assert kept == {"u1": True, "u2": False, "u3": True}


@pytest.mark.anyio
async def test_a_dropped_context_starts_afresh() -> None:
    """A context dropped by the bound comes back with a fresh state, not its old one."""
    async with Clipper() as clipper:
        await two_models(clipper, policy="exp4", max_contexts=1)
        for i in range(5):
            await clipper.feedback("app", [float(i)], "a", context="u1")
        assert weights(clipper.get_policy_state("app", "u1"))["b"] < 0
        await clipper.predict("app", [1.0], context="u2")
        assert clipper.get_policy_state("app", "u1") is None
        await clipper.predict("app", [1.0], context="u1")
        state = clipper.get_policy_state("app", "u1")
    assert weights(state) == {"a": 0.0, "b": 0.0}


@pytest.mark.anyio
async def test_set_policy_state_writes_one_context() -> None:
    """set_policy_state(..., context) sets that context's state only."""
    async with Clipper() as clipper:
        await two_models(clipper, policy="exp4")
        clipper.set_policy_state("app", {"models": ["a", "b"], "log_weights": [0, -3]}, "u")
        mine = await clipper.predict("app", [1.0], context="u")
        shared = await clipper.predict("app", [1.0])
        assert weights(clipper.get_policy_state("app", "u")) == {"a": 0.0, "b": -3.0}
        assert weights(clipper.get_policy_state("app")) == {"a": 0.0, "b": 0.0}
    assert mine.confidence > 0.9
    assert shared.confidence == pytest.approx(0.5)


@pytest.mark.anyio
async def test_outputs_and_cache_are_shared_across_contexts() -> None:
    """The same input asked by two contexts calls the model once."""
    model = testing.counting(testing.constant("x"))
    async with Clipper() as clipper:
        clipper.register_application("app", "doubles", "?", SLO)
        await clipper.deploy_model("m", 1, "doubles", model)
        clipper.link_model_to_app("app", "m")
        for user in ("alice", "bob", None, ("region", 7)):
            assert (await clipper.predict("app", [4.0], context=user)).output == "x"
    assert model.calls == 1


@pytest.mark.anyio
async def test_feedback_joins_the_prediction_of_the_same_context() -> None:
    """Each context's feedback uses its own recorded prediction: no model is called again."""
    a, b = testing.counting(testing.constant("a")), testing.counting(testing.constant("b"))
    async with Clipper(seed=4) as clipper:
        clipper.register_application("app", "doubles", "?", SLO, policy="exp3")
        for name, func in (("a", a), ("b", b)):
            await clipper.deploy_model(name, 1, "doubles", func)
            clipper.link_model_to_app("app", name)
        for i in range(20):
            for user in ("alice", "bob"):
                await clipper.predict("app", [float(i)], context=user)
        calls = a.calls + b.calls
        for i in range(20):
            for user in ("alice", "bob"):
                await clipper.feedback("app", [float(i)], "a", context=user)
    assert calls <= 40
    assert a.calls + b.calls == calls


@pytest.mark.anyio
async def test_a_context_state_follows_new_links() -> None:
    """A model linked later joins each context's state at its mean weight, lazily."""
    async with Clipper() as clipper:
        await two_models(clipper, policy="exp4")
        for i in range(4):
            await clipper.feedback("app", [float(i)], "a", context="u")
        await clipper.deploy_model("c", 1, "doubles", testing.constant("c"))
        clipper.link_model_to_app("app", "c")
        state = weights(clipper.get_policy_state("app", "u"))
        p = await clipper.predict("app", [50.0], context="u")
    assert list(state) == ["a", "b", "c"]
    assert state["b"] < state["c"] < state["a"]
    assert p.models_answered == 3


@pytest.mark.anyio
async def test_predict_batch_takes_a_context() -> None:
    """predict_batch(..., context=) uses (and creates) that context's state."""
    async with Clipper() as clipper:
        await two_models(clipper, policy="exp4")
        clipper.set_policy_state("app", {"models": ["a", "b"], "log_weights": [-4, 0]}, "u")
        ps = await clipper.predict_batch("app", [[1.0], [2.0]], context="u")
        await clipper.predict_batch("app", [[3.0]], context="v")
        assert clipper.get_policy_state("app", "v") is not None
    assert [p.output for p in ps] == ["b", "b"]


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["predict", "feedback", "predict_batch", "get", "set"])
async def test_an_unhashable_context_is_a_clipper_error_naming_it(call: str) -> None:
    """A list as context is refused with a ClipperError that shows it."""
    async with Clipper() as clipper:
        await two_models(clipper)
        bad: Any = ["not", "hashable"]
        with pytest.raises(ClipperError, match=r"hashable.*\['not', 'hashable'\]"):
            if call == "predict":
                await clipper.predict("app", [1.0], context=bad)
            elif call == "feedback":
                await clipper.feedback("app", [1.0], "a", context=bad)
            elif call == "predict_batch":
                await clipper.predict_batch("app", [[1.0]], context=bad)
            elif call == "get":
                clipper.get_policy_state("app", bad)
            else:
                clipper.set_policy_state("app", {"models": ["a"], "log_weights": [0]}, bad)


class _HashRaises:
    """A context whose __hash__ raises something other than TypeError, and whose
    __repr__ raises too."""

    def __hash__(self) -> int:
        raise ValueError("mutable record: not hashable")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["predict", "feedback", "get"])
async def test_a_context_whose_hash_raises_is_a_clipper_error_naming_why(call: str) -> None:
    """Whatever a context's __hash__ raises, the caller gets a ClipperError saying what
    hashing it raised; a __repr__ that raises does not replace it."""
    async with Clipper() as clipper:
        await two_models(clipper)
        bad: Any = _HashRaises()
        match = r"hashable.*<_HashRaises>.*raised ValueError: mutable record"
        with pytest.raises(ClipperError, match=match):
            if call == "predict":
                await clipper.predict("app", [1.0], context=bad)
            elif call == "feedback":
                await clipper.feedback("app", [1.0], "a", context=bad)
            else:
                clipper.get_policy_state("app", bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_max_contexts_must_be_a_positive_int(bad: Any) -> None:
    """register_application refuses a max_contexts that is not an int >= 1."""
    clipper = Clipper()
    with pytest.raises(ClipperError, match="max_contexts"):
        clipper.register_application("app", "doubles", "?", SLO, max_contexts=bad)
    assert clipper.get_all_apps() == []
