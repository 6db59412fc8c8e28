"""Queries through the public API: batches, validation, SLOs, defaults and their causes,
failing models, cancellation, deadlines and batch sizing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from clipperlite import Clipper, ClipperError, InvalidInputError, Prediction
from clipperlite import testing as fake
from helpers import app_stats, first, version_stats, wait_until

pytestmark = pytest.mark.anyio

#: Slack on top of an SLO for "returns in time" (two noisy cores).
MARGIN = 0.25


class RaisingPolicy:
    """A selection policy whose select() raises."""

    def init_state(self, models: list[str], previous: Any = None) -> Any:
        return list(models)

    def select(self, state: Any, x: Any) -> list[str]:
        raise LookupError("no arm for you")

    def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
        return next(iter(outputs.values())), 1.0

    def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
        return state


class UnlinkedPolicy(RaisingPolicy):
    """A selection policy that selects a model that is not linked."""

    def select(self, state: Any, x: Any) -> list[str]:
        return ["not-linked"]


@pytest.fixture
def release(clipper: Clipper) -> Iterator[threading.Event]:
    """An event hung models wait on, set at teardown (before `clipper` stops) to free them."""
    event = threading.Event()
    yield event
    event.set()


# -- predict_batch ----------------------------------------------------------------------


async def test_predict_batch_answers_each_input_in_order(clipper: Clipper) -> None:
    """predict_batch gives one Prediction per input, in order, each with its own query_id."""
    await clipper.create_endpoint("ep", "doubles", lambda xs: [first(x) * 10 for x in xs])
    xs = [[float(i)] for i in range(12)] + [[3.0]]  # a repeated input, too
    ps = await clipper.predict_batch("ep", xs)
    assert len(ps) == len(xs)
    assert all(isinstance(p, Prediction) for p in ps)
    assert [p.output for p in ps] == [x[0] * 10 for x in xs]
    assert len({p.query_id for p in ps}) == len(xs)
    assert app_stats(clipper, "ep")["queries"] == len(xs)


async def test_predict_batch_validates_every_input_first(clipper: Clipper) -> None:
    """A bad 3rd input makes predict_batch raise InvalidInputError before any is queued."""
    model = fake.counting()
    await clipper.create_endpoint("ep", "doubles", model)
    with pytest.raises(InvalidInputError, match="ep"):
        await clipper.predict_batch("ep", [[1.0], [2.0], ["three"], [4.0]])
    await asyncio.sleep(0.05)
    assert model.calls == 0
    assert app_stats(clipper, "ep")["queries"] == 0


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "x", "given"),
    [
        ("doubles", [1.0, "abc"], "'abc'"),
        ("doubles", [1.0, None], "None"),
        ("doubles", [[1.0], [2.0]], None),
        ("doubles", [], None),
        ("doubles", 3.0, "3.0"),
        ("doubles", [True, 1.0], "True"),
        ("integers", [1, 2.5], "2.5"),
        ("integers", [1, 2**40], str(2**40)),
        ("floats", ["x"], "'x'"),
        ("floats", [1e40], "1e+40"),
        ("strings", 5, "5"),
        ("strings", "", None),
        ("bytes", "text", "'text'"),
    ],
)
async def test_invalid_input_is_explained_and_never_reaches_the_model(
    clipper: Clipper, input_type: str, x: Any, given: str | None
) -> None:
    """A misfit input raises InvalidInputError naming app, type and input; no model sees it."""
    model = fake.counting()
    await clipper.create_endpoint("my-app", input_type, model)
    with pytest.raises(InvalidInputError) as info:
        await clipper.predict("my-app", x)
    message = str(info.value)
    assert "my-app" in message
    assert input_type in message
    if given is not None:
        assert given in message
    assert isinstance(info.value, ValueError)
    await asyncio.sleep(0.01)
    assert model.calls == 0


async def test_inputs_are_copied_at_validation(clipper: Clipper) -> None:
    """Mutating a numpy input after predict returned does not change what was cached."""
    model = fake.counting(lambda xs: [first(x) for x in xs])
    await clipper.create_endpoint("ep", "doubles", model)
    x = np.array([1.0, 2.0])
    assert (await clipper.predict("ep", x)).output == 1.0
    x[0] = 9.0
    assert (await clipper.predict("ep", x)).output == 9.0
    assert (await clipper.predict("ep", [1.0, 2.0])).output == 1.0


# -- SLOs -------------------------------------------------------------------------------


async def test_per_query_slo_tightens_the_app_slo(
    clipper: Clipper, release: threading.Event
) -> None:
    """predict(slo_micros=...) replaces a long app SLO: a hung model's query returns in time."""
    await clipper.create_endpoint("ep", "doubles", fake.hang(release), slo_micros=30_000_000)
    t0 = time.monotonic()
    p = await clipper.predict("ep", [1.0], slo_micros=50_000)
    assert time.monotonic() - t0 < 0.05 + MARGIN
    assert p.default


async def test_per_query_slo_loosens_the_app_slo(clipper: Clipper) -> None:
    """predict(slo_micros=...) replaces a short app SLO: a slow model's answer arrives."""
    await clipper.create_endpoint("ep", "doubles", fake.slow(0.1), slo_micros=20_000)
    p = await clipper.predict("ep", [1.0], slo_micros=5_000_000)
    assert not p.default
    assert p.output.tolist() == [1.0]
    assert (await clipper.predict("ep", [2.0])).default


async def test_per_query_slo_longer_than_any_app_slo_is_honoured(clipper: Clipper) -> None:
    """A long per-query SLO gets the answer of a model slower than the app SLO and 1 s."""
    await clipper.create_endpoint(
        "ep", "doubles", fake.slow(1.5), default_output=-1.0, slo_micros=50_000
    )
    p = await clipper.predict("ep", [1.0], slo_micros=5_000_000)
    assert not p.default, p.default_explanation
    assert p.output.tolist() == [1.0]


# -- defaults: one test per cause --------------------------------------------------------


def assert_explained(p: Prediction, default_output: Any, *words: str) -> str:
    """p is the default output, with an explanation that contains every word."""
    assert p.default
    assert p.output == default_output
    text = p.default_explanation
    assert isinstance(text, str)
    for word in words:
        assert word.lower() in text.lower(), (word, text)
    return text


def assert_one_default(c: Clipper, app: str) -> str:
    """The app counted one query, answered as a default under one cause; return the cause."""
    stats = app_stats(c, app)
    assert stats["queries"] == 1
    assert stats["answered"] == 0
    defaults = {k: v for k, v in stats["defaults"].items() if v}
    assert list(defaults.values()) == [1]
    return next(iter(defaults))


async def test_default_when_no_model_is_linked(clipper: Clipper) -> None:
    """An app with no linked model answers its default, explained, and counts it."""
    clipper.register_application("app", "doubles", -1.0, 100_000)
    p = await clipper.predict("app", [1.0])
    assert_explained(p, -1.0, "'app'", "no", "model")
    assert_one_default(clipper, "app")


async def test_default_when_the_model_raises(clipper: Clipper) -> None:
    """A model that raises gives the default naming app, model, exception type and message."""
    clipper.register_application("app", "doubles", -1.0, 1_000_000)
    await clipper.deploy_model(
        "model-x", 1, "doubles", fake.flaky(1, exc=ValueError("the weights are gone"))
    )
    clipper.link_model_to_app("app", "model-x")
    p = await clipper.predict("app", [1.0])
    assert_explained(p, -1.0, "'app'", "model-x", "ValueError", "the weights are gone")
    assert_one_default(clipper, "app")
    assert version_stats(clipper, "model-x")["errors"] >= 1


@pytest.mark.parametrize("delta", [1, -1])
async def test_default_when_the_model_returns_the_wrong_number_of_outputs(
    clipper: Clipper, delta: int
) -> None:
    """A model returning too many or too few outputs gives the default, explained."""
    clipper.register_application("app", "doubles", -1.0, 1_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", fake.wrong_length(delta))
    clipper.link_model_to_app("app", "model-x")
    p = await clipper.predict("app", [1.0])
    assert_explained(p, -1.0, "'app'", "model-x", "output")
    assert_one_default(clipper, "app")


async def test_default_when_the_model_returns_no_list(clipper: Clipper) -> None:
    """A model returning a non-list gives the default, explained, and keeps serving."""
    calls = [0]

    def model(xs: list[Any]) -> Any:
        calls[0] += 1
        return None if calls[0] == 1 else [1.0] * len(xs)

    clipper.register_application("app", "doubles", -1.0, 1_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", model)
    clipper.link_model_to_app("app", "model-x")
    assert_explained(await clipper.predict("app", [1.0]), -1.0, "'app'", "model-x")
    assert (await clipper.predict("app", [2.0])).output == 1.0


async def test_default_when_the_deadline_passes(clipper: Clipper, release: threading.Event) -> None:
    """A hung model's query returns the default within its SLO (plus a margin), explained."""
    clipper.register_application("app", "doubles", -1.0, 50_000)
    await clipper.deploy_model("model-x", 1, "doubles", fake.hang(release))
    clipper.link_model_to_app("app", "model-x")
    t0 = time.monotonic()
    p = await clipper.predict("app", [1.0])
    assert time.monotonic() - t0 < 0.05 + MARGIN
    assert_explained(p, -1.0, "'app'", "model-x", "deadline")
    assert_one_default(clipper, "app")


async def test_default_when_no_replica_runs(clipper: Clipper) -> None:
    """A model scaled to 0 replicas gives the default at once, explained."""
    clipper.register_application("app", "doubles", -1.0, 10_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", fake.echo, num_replicas=0)
    clipper.link_model_to_app("app", "model-x")
    t0 = time.monotonic()
    p = await clipper.predict("app", [1.0])
    assert time.monotonic() - t0 < 0.5
    assert_explained(p, -1.0, "'app'", "model-x", "replica")
    assert_one_default(clipper, "app")


async def test_default_when_the_queue_is_full(clipper: Clipper, release: threading.Event) -> None:
    """Beyond max_queue a query gets the default at once, explained; the others are served."""
    model = fake.counting(fake.hang(release))
    clipper.register_application("app", "doubles", -1.0, 30_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", model, max_queue=1, batch_size=1)
    clipper.link_model_to_app("app", "model-x")
    running = asyncio.ensure_future(clipper.predict("app", [1.0]))
    await wait_until(lambda: model.calls == 1)
    queued = asyncio.ensure_future(clipper.predict("app", [2.0]))
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    p = await clipper.predict("app", [3.0])
    assert time.monotonic() - t0 < 0.5
    assert_explained(p, -1.0, "'app'", "model-x", "queue")
    release.set()
    assert not (await running).default
    assert not (await queued).default
    assert [first(x) for x in model.inputs] == [1.0, 2.0]


async def test_default_when_the_policy_raises(clipper: Clipper) -> None:
    """A policy whose select raises gives the default naming app, policy and the exception."""
    model = fake.counting()
    clipper.register_application("app", "doubles", -1.0, 1_000_000, policy=RaisingPolicy())
    await clipper.deploy_model("model-x", 1, "doubles", model)
    clipper.link_model_to_app("app", "model-x")
    p = await clipper.predict("app", [1.0])
    assert_explained(p, -1.0, "'app'", "policy", "LookupError", "no arm for you")
    assert_one_default(clipper, "app")
    assert model.calls == 0


async def test_default_when_the_policy_selects_an_unlinked_model(clipper: Clipper) -> None:
    """A policy selecting a model that is not linked gives the default, explained."""
    clipper.register_application("app", "doubles", -1.0, 1_000_000, policy=UnlinkedPolicy())
    await clipper.deploy_model("model-x", 1, "doubles", fake.echo)
    clipper.link_model_to_app("app", "model-x")
    p = await clipper.predict("app", [1.0])
    assert_explained(p, -1.0, "'app'", "policy", "not-linked")
    assert_one_default(clipper, "app")


async def test_default_when_confidence_is_below_min_confidence(clipper: Clipper) -> None:
    """With min_confidence, a split vote gives the default naming app, models and confidence."""
    clipper.register_application(
        "app", "doubles", "unsure", 1_000_000, policy="exp4", min_confidence=0.9
    )
    clipper.register_application("lenient", "doubles", "unsure", 1_000_000, policy="exp4")
    await clipper.deploy_model("cat-model", 1, "doubles", fake.constant("cat"))
    await clipper.deploy_model("dog-model", 1, "doubles", fake.constant("dog"))
    for app in ("app", "lenient"):
        clipper.link_model_to_app(app, "cat-model")
        clipper.link_model_to_app(app, "dog-model")
    p = await clipper.predict("app", [1.0])
    assert_explained(p, "unsure", "'app'", "cat-model", "dog-model", "confidence")
    assert_one_default(clipper, "app")
    p = await clipper.predict("lenient", [1.0])
    assert not p.default
    assert p.output in ("cat", "dog")


async def test_every_cause_is_counted_under_its_own_key() -> None:
    """metrics() counts each default cause under its own key; queries add up."""
    release = threading.Event()
    causes: dict[str, str] = {}
    async with Clipper(shutdown_grace_s=0.2) as c:
        try:
            scenarios: list[tuple[str, Any, dict[str, Any]]] = [
                ("raised", fake.flaky(1), {}),
                ("wrong", fake.wrong_length(1), {}),
                ("late", fake.hang(release), {}),
                ("no-replica", fake.echo, {"num_replicas": 0}),
            ]
            for name, func, options in scenarios:
                c.register_application(name, "doubles", -1.0, 50_000)
                await c.deploy_model(name, 1, "doubles", func, **options)
                c.link_model_to_app(name, name)
                await c.predict(name, [1.0])
                causes[name] = assert_one_default(c, name)
            c.register_application("unlinked", "doubles", -1.0, 50_000)
            await c.predict("unlinked", [1.0])
            causes["unlinked"] = assert_one_default(c, "unlinked")
            c.register_application("policy", "doubles", -1.0, 50_000, policy=RaisingPolicy())
            c.link_model_to_app("policy", "raised")
            await c.predict("policy", [1.0])
            causes["policy"] = assert_one_default(c, "policy")
            c.register_application("ok", "doubles", -1.0, 1_000_000)
            await c.deploy_model("ok", 1, "doubles", fake.flaky(2))
            c.link_model_to_app("ok", "ok")
            for i in range(4):
                await c.predict("ok", [float(i)])
        finally:
            release.set()
        assert len(set(causes.values())) == len(causes), causes
        for stats in c.metrics()["apps"].values():
            assert stats["queries"] == stats["answered"] + sum(stats["defaults"].values())
        assert app_stats(c, "ok")["answered"] == 2


async def test_default_when_the_worker_process_dies(clipper: Clipper) -> None:
    """A dying worker process gives an explained default and is replaced."""
    clipper.register_application("app", "doubles", -1.0, 10_000_000)
    await clipper.deploy_model(
        "model-x",
        1,
        "doubles",
        fake.crashing(lambda x: x[0] < 0, exit_code=3, func=fake.constant(1.0)),
        backend="process",
    )
    clipper.link_model_to_app("app", "model-x")
    assert (await clipper.predict("app", [1.0])).output == 1.0
    p = await clipper.predict("app", [-1.0])
    assert_explained(p, -1.0, "'app'", "model-x", "died")
    p = await clipper.predict("app", [2.0])
    assert (p.output, p.default) == (1.0, False)
    stats = app_stats(clipper, "app")
    assert stats["queries"] == stats["answered"] + sum(stats["defaults"].values()) == 3


# -- failing models ---------------------------------------------------------------------


async def test_a_failing_model_keeps_serving(clipper: Clipper) -> None:
    """After a model raises, the same replica answers the next query."""
    model = fake.counting(fake.flaky(lambda x: first(x) < 0))
    await clipper.create_endpoint("ep", "doubles", model, default_output=0.0)
    for i in range(3):
        assert (await clipper.predict("ep", [-1.0 - i])).default
        p = await clipper.predict("ep", [1.0 + i])
        assert not p.default
        assert first(p.output) == 1.0 + i
    assert clipper.get_num_replicas("ep") == 1


async def test_a_model_raising_system_exit_keeps_its_replica() -> None:
    """A thread model raising SystemExit gives an explained default; its replica lives on."""
    calls = [0]

    def model(xs: list[Any]) -> list[Any]:
        calls[0] += 1
        if calls[0] == 1:
            raise SystemExit("the model called sys.exit")
        return [1.0] * len(xs)

    async with Clipper(shutdown_grace_s=0.2) as clipper:
        await clipper.create_endpoint(
            "ep", "doubles", model, default_output=-1.0, slo_micros=1_000_000
        )
        t0 = time.monotonic()
        p = await clipper.predict("ep", [1.0])
        assert time.monotonic() - t0 < 0.5
        assert_explained(p, -1.0, "'ep'", "SystemExit")
        p = await clipper.predict("ep", [2.0])
        assert (p.output, p.default) == (1.0, False)


async def test_an_async_model_raising_cancelled_error_keeps_its_replica(
    clipper: Clipper,
) -> None:
    """An async model raising CancelledError gives an explained default; its replica lives on."""
    calls = [0]

    async def model(xs: list[Any]) -> list[Any]:
        calls[0] += 1
        if calls[0] == 1:
            raise asyncio.CancelledError
        return [1.0] * len(xs)

    await clipper.create_endpoint("ep", "doubles", model, default_output=-1.0, slo_micros=1_000_000)
    p = await clipper.predict("ep", [1.0])
    text = assert_explained(p, -1.0, "'ep'", "CancelledError")
    assert "shutting down" not in text
    p = await clipper.predict("ep", [2.0])
    assert (p.output, p.default) == (1.0, False)


async def test_a_poison_input_fails_alone(clipper: Clipper) -> None:
    """A poison input in a batch gets the default alone; its batch-mates get answers."""
    model = fake.counting(fake.flaky(lambda x: first(x) == 13.0))
    await clipper.create_endpoint(
        "ep",
        "doubles",
        model,
        default_output=-1.0,
        batch_size=4,
        batch_wait_micros=500_000,
        slo_micros=10_000_000,
    )
    xs = [[1.0], [13.0], [2.0], [3.0]]
    ps = await asyncio.gather(*(clipper.predict("ep", x) for x in xs))
    assert model.batch_sizes[0] == 4
    assert [p.default for p in ps] == [False, True, False, False]
    assert [first(p.output) for i, p in enumerate(ps) if i != 1] == [1.0, 2.0, 3.0]
    assert "raised" in (ps[1].default_explanation or "")


async def test_async_models_run_on_the_loop(clipper: Clipper) -> None:
    """An async def model runs on the event loop's thread; a plain one does not."""
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    async def async_model(xs: list[Any]) -> list[Any]:
        seen["async"] = threading.get_ident()
        await asyncio.sleep(0)
        return [1.0] * len(xs)

    def sync_model(xs: list[Any]) -> list[Any]:
        seen["sync"] = threading.get_ident()
        return [2.0] * len(xs)

    await clipper.create_endpoint("a", "doubles", async_model)
    await clipper.create_endpoint("s", "doubles", sync_model)
    assert (await clipper.predict("a", [1.0])).output == 1.0
    assert (await clipper.predict("s", [1.0])).output == 2.0
    assert seen["async"] == loop_thread
    assert seen["sync"] != loop_thread


async def test_a_slow_async_model_does_not_block_the_loop(clipper: Clipper) -> None:
    """While an async model awaits, other apps' queries are answered."""
    await clipper.create_endpoint("slow", "doubles", fake.async_slow(0.3))
    await clipper.create_endpoint("fast", "doubles", fake.constant(1.0))
    pending = asyncio.ensure_future(clipper.predict("slow", [1.0]))
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    assert (await clipper.predict("fast", [1.0])).output == 1.0
    assert time.monotonic() - t0 < 0.2
    assert not pending.done()
    assert first((await pending).output) == 1.0


async def test_exp4_leaves_stragglers_out(clipper: Clipper, release: threading.Event) -> None:
    """exp4 leaves a hung model out and answers from the others within the SLO."""
    clipper.register_application("app", "doubles", -1.0, 50_000, policy="exp4")
    await clipper.deploy_model("fast", 1, "doubles", fake.constant(2.0))
    await clipper.deploy_model("hung", 1, "doubles", fake.hang(release))
    clipper.link_model_to_app("app", "fast")
    clipper.link_model_to_app("app", "hung")
    t0 = time.monotonic()
    p = await clipper.predict("app", [1.0])
    assert time.monotonic() - t0 < 0.05 + MARGIN
    assert (p.output, p.default) == (2.0, False)


# -- cancellation -----------------------------------------------------------------------


async def test_a_cancelled_query_never_reaches_the_model(
    clipper: Clipper, release: threading.Event
) -> None:
    """A predict cancelled while queued never reaches the model; others are answered."""
    model = fake.counting(fake.hang(release))
    await clipper.create_endpoint("ep", "doubles", model, batch_size=1, slo_micros=30_000_000)
    running = asyncio.ensure_future(clipper.predict("ep", [1.0]))
    await wait_until(lambda: model.calls == 1)
    doomed = asyncio.ensure_future(clipper.predict("ep", [2.0]))
    other = asyncio.ensure_future(clipper.predict("ep", [3.0]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    release.set()
    assert first((await running).output) == 1.0
    assert first((await other).output) == 3.0
    assert first((await clipper.predict("ep", [4.0])).output) == 4.0
    assert [first(x) for x in model.inputs] == [1.0, 3.0, 4.0]


async def test_cancelling_one_of_identical_queries_keeps_the_other(
    clipper: Clipper, release: threading.Event
) -> None:
    """Of two identical queries sharing one model call, cancelling one leaves the other's."""
    model = fake.counting(fake.hang(release))
    await clipper.create_endpoint("ep", "doubles", model, slo_micros=30_000_000)
    a = asyncio.ensure_future(clipper.predict("ep", [1.0]))
    b = asyncio.ensure_future(clipper.predict("ep", [1.0]))
    await wait_until(lambda: model.calls == 1)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    release.set()
    p = await b
    assert not p.default
    assert first(p.output) == 1.0


async def test_cancelling_a_query_mid_batch_keeps_its_batch_mates(
    clipper: Clipper, release: threading.Event
) -> None:
    """Cancelling a query whose batch is running leaves the batch-mates' answers intact."""
    model = fake.counting(fake.hang(release))
    await clipper.create_endpoint(
        "ep",
        "doubles",
        model,
        batch_size=3,
        batch_wait_micros=500_000,
        slo_micros=30_000_000,
    )
    tasks = [asyncio.ensure_future(clipper.predict("ep", [float(i)])) for i in range(3)]
    await wait_until(lambda: model.calls == 1)
    tasks[1].cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert [first((await tasks[i]).output) for i in (0, 2)] == [0.0, 2.0]
    assert model.batch_sizes == [3]


# -- deadlines --------------------------------------------------------------------------


async def test_queries_behind_a_hung_model_return_within_their_slo(
    clipper: Clipper, release: threading.Event
) -> None:
    """Queries queued behind a hung model each return their default within the SLO."""
    await clipper.create_endpoint(
        "ep", "doubles", fake.hang(release), default_output=-1.0, slo_micros=50_000
    )
    t0 = time.monotonic()
    ps = await asyncio.gather(*(clipper.predict("ep", [float(i)]) for i in range(8)))
    assert time.monotonic() - t0 < 0.05 + MARGIN
    assert all(p.default and p.output == -1.0 for p in ps)
    assert all("deadline" in (p.default_explanation or "") for p in ps)


async def test_an_expired_query_never_reaches_the_model(
    clipper: Clipper, release: threading.Event
) -> None:
    """A query whose deadline passed while queued is dropped, never run by the model."""
    model = fake.counting(fake.hang(release))
    await clipper.create_endpoint("ep", "doubles", model, batch_size=1, slo_micros=30_000_000)
    running = asyncio.ensure_future(clipper.predict("ep", [1.0]))
    await wait_until(lambda: model.calls == 1)
    expired = await clipper.predict("ep", [2.0], slo_micros=30_000)
    assert expired.default
    release.set()
    await running
    assert first((await clipper.predict("ep", [3.0])).output) == 3.0
    assert [first(x) for x in model.inputs] == [1.0, 3.0]


# -- batch sizing -----------------------------------------------------------------------


async def test_aimd_grows_the_batch_under_load(clipper: Clipper) -> None:
    """With AIMD (batch_size=None) a burst against a slowish model grows the batch size."""
    model = fake.counting(fake.slow(0.005))
    await clipper.create_endpoint("ep", "doubles", model, slo_micros=2_000_000)
    ps = await clipper.predict_batch("ep", [[float(i)] for i in range(200)])
    assert not any(p.default for p in ps)
    assert max(model.batch_sizes) > 1
    assert version_stats(clipper, "ep")["max_batch_size"] > 1
    assert model.calls < 200


async def test_a_fixed_batch_size_is_never_exceeded(clipper: Clipper) -> None:
    """batch_size=N: no batch larger than N reaches the model, and full batches do form."""
    model = fake.counting(fake.slow(0.005))
    await clipper.create_endpoint("ep", "doubles", model, batch_size=4, slo_micros=5_000_000)
    ps = await clipper.predict_batch("ep", [[float(i)] for i in range(60)])
    assert not any(p.default for p in ps)
    assert max(model.batch_sizes) == 4
    assert sum(model.batch_sizes) == 60
    assert version_stats(clipper, "ep")["max_batch_size"] == 4


async def test_batch_wait_lets_a_short_batch_fill(clipper: Clipper) -> None:
    """With batch_wait_micros, a query waits for a later one to share its batch."""
    model = fake.counting()
    await clipper.create_endpoint(
        "ep", "doubles", model, batch_size=8, batch_wait_micros=300_000, slo_micros=5_000_000
    )
    first_query = asyncio.ensure_future(clipper.predict("ep", [1.0]))
    await asyncio.sleep(0.02)
    second = await clipper.predict("ep", [2.0])
    assert not (await first_query).default
    assert not second.default
    assert model.batch_sizes == [2]


async def test_a_full_batch_does_not_wait(clipper: Clipper) -> None:
    """A batch that reaches batch_size runs at once, without sitting out batch_wait_micros."""
    model = fake.counting()
    await clipper.create_endpoint(
        "ep", "doubles", model, batch_size=2, batch_wait_micros=5_000_000, slo_micros=30_000_000
    )
    t0 = time.monotonic()
    ps = await asyncio.gather(clipper.predict("ep", [1.0]), clipper.predict("ep", [2.0]))
    assert time.monotonic() - t0 < 2.0
    assert not any(p.default for p in ps)
    assert model.batch_sizes == [2]


async def test_deploy_options_are_validated(clipper: Clipper) -> None:
    """Nonsense deploy options raise ClipperError and deploy nothing."""
    for options in ({"batch_size": 0}, {"num_replicas": -1}, {"max_queue": 0}):
        with pytest.raises(ClipperError):
            await clipper.deploy_model("m", 1, "doubles", fake.echo, **options)
    with pytest.raises(ClipperError):
        await clipper.deploy_model("m", 1, "doubles", "not callable")  # type: ignore[arg-type]
    assert clipper.get_all_models() == []


@pytest.mark.anyio
@pytest.mark.parametrize("slo", [np.int64(500_000), np.float32(500_000), 500_000])
async def test_a_numpy_number_is_a_valid_slo(slo: Any) -> None:
    """slo_micros may be any real number type, numpy's ints included, as num_replicas may."""
    async with Clipper() as clipper:
        await clipper.create_endpoint(
            "a", "doubles", lambda xs: [x[0] for x in xs], default_output=-1.0, slo_micros=slo
        )
        p = await clipper.predict("a", [2.0], slo_micros=slo)
    assert (p.default, p.output) == (False, 2.0)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("slo", "says"),
    [(np.int64(0), "> 0"), ("fast", "a number"), (float("inf"), "> 0 and finite")],
)
async def test_a_bad_slo_says_what_it_must_be(slo: Any, says: str) -> None:
    """A zero or non-number slo_micros is a ClipperError naming it."""
    async with Clipper() as clipper:
        await clipper.create_endpoint("a", "doubles", lambda xs: xs, slo_micros=100_000)
        with pytest.raises(ClipperError, match=f"slo_micros must be {says}"):
            await clipper.predict("a", [2.0], slo_micros=slo)
