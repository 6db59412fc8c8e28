"""`clipperlite.testing`: the fake models, and the pytest plugin (run through pytester)."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import time
from importlib.metadata import entry_points
from typing import Any

import cloudpickle
import pytest

import clipperlite.testing as fake

pytest_plugins = ["pytester"]


# -- the package ------------------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    """`clipperlite.testing.__all__` is sorted and lists every public name it exposes."""
    public = {
        name
        for name, value in vars(fake).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert fake.__all__ == sorted(fake.__all__)
    assert set(fake.__all__) == public
    for name in fake.__all__:
        assert getattr(fake, name).__module__ == "clipperlite.testing", name


# -- fake models ------------------------------------------------------------------------


def test_echo_returns_its_inputs() -> None:
    """echo returns a new list of the very inputs it was given."""
    xs = [object(), object()]
    out = fake.echo(xs)
    assert out == xs
    assert out is not xs


def test_constant_answers_one_value_per_input() -> None:
    """constant(v) answers v once per input."""
    model = fake.constant("label")
    assert model([1, 2, 3]) == ["label"] * 3
    assert model([]) == []
    assert "label" in repr(model)


def test_slow_blocks_then_runs_its_func() -> None:
    """slow(s, func) sleeps s seconds per call, then returns func's outputs."""
    model = fake.slow(0.05, fake.constant(1))
    t0 = time.monotonic()
    assert model(["a", "b"]) == [1, 1]
    assert time.monotonic() - t0 >= 0.05
    with pytest.raises(ValueError):
        fake.slow(-1)


def test_async_slow_is_an_async_model() -> None:
    """async_slow is an async def callable that awaits, then echoes."""
    model = fake.async_slow(0.01)
    assert inspect.iscoroutinefunction(type(model).__call__)
    assert asyncio.run(model([1, 2])) == [1, 2]  # type: ignore[arg-type]


def test_flaky_fails_every_nth_call() -> None:
    """flaky(fail_every=n) raises on calls n, 2n, ..., and echoes otherwise."""
    model = fake.flaky(fail_every=3)

    def outcome(i: int) -> Any:
        try:
            return model([i])
        except RuntimeError as exc:
            assert "batch" in str(exc)
            return "raised"

    assert [outcome(i) for i in range(7)] == [[0], [1], "raised", [3], [4], "raised", [6]]


def test_flaky_with_a_predicate_fails_on_poison_inputs() -> None:
    """flaky(predicate) raises when any input of the batch matches, naming it."""
    model = fake.flaky(lambda x: x == "poison", exc=ValueError)
    assert model(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="poison"):
        model(["a", "poison", "b"])


def test_flaky_raises_a_given_exception_instance() -> None:
    """flaky(exc=instance) raises that very instance."""
    boom = KeyError("boom")
    model = fake.flaky(1, exc=boom)
    with pytest.raises(KeyError) as info:
        model([1])
    assert info.value is boom


@pytest.mark.parametrize("bad", [0, -1, True, "often", 1.5])
def test_flaky_rejects_a_nonsense_rule(bad: Any) -> None:
    """flaky refuses a fail_every that is neither an int >= 1 nor a predicate."""
    with pytest.raises(ValueError):
        fake.flaky(bad)


def test_flaky_rejects_a_non_exception() -> None:
    """flaky refuses an exc that is not an exception class or instance."""
    with pytest.raises(TypeError):
        fake.flaky(1, exc=42)  # type: ignore[arg-type]


def test_flaky_pickles_with_a_fresh_count() -> None:
    """flaky can be sent to a worker process; the copy counts its own calls."""
    model = fake.flaky(2)
    model([1])
    copy = pickle.loads(pickle.dumps(model))
    assert copy([1]) == [1]
    with pytest.raises(RuntimeError):
        copy([2])


@pytest.mark.parametrize(("delta", "expected"), [(1, 4), (2, 5), (-1, 2), (-3, 0)])
def test_wrong_length_returns_the_wrong_number_of_outputs(delta: int, expected: int) -> None:
    """wrong_length(delta) returns len(xs) + delta outputs (never fewer than none)."""
    assert len(fake.wrong_length(delta)([1, 2, 3])) == expected


def test_wrong_length_rejects_zero() -> None:
    """wrong_length(0) would be a correct model, so it is refused."""
    with pytest.raises(ValueError):
        fake.wrong_length(0)
    assert fake.wrong_length(2)([]) == [None, None]


def test_hang_blocks_until_its_event_is_set() -> None:
    """hang(event) blocks its caller until the event is set, then echoes."""
    release = threading.Event()
    model = fake.hang(release)
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(model([1])), daemon=True)
    worker.start()
    worker.join(0.1)
    assert worker.is_alive()
    release.set()
    worker.join(5)
    assert out == [[1]]


def test_hang_for_seconds_sleeps() -> None:
    """hang(seconds) blocks for that long, then echoes."""
    t0 = time.monotonic()
    assert fake.hang(0.05)([7]) == [7]
    assert time.monotonic() - t0 >= 0.05


def test_crashing_refuses_to_kill_the_process_that_made_it() -> None:
    """crashing() raises instead of exiting in its own process; harmless inputs pass."""
    model = fake.crashing(lambda x: x < 0, func=fake.constant(0))
    assert model([1, 2]) == [0, 0]
    with pytest.raises(RuntimeError, match="process"):
        model([1, -1])
    copy = pickle.loads(cloudpickle.dumps(model))  # what a worker process receives
    with pytest.raises(RuntimeError):
        copy([-1])


def test_counting_records_every_batch_thread_safely() -> None:
    """counting records each batch (also failing ones) from many threads, losing none."""
    model = fake.counting(fake.flaky(lambda x: x == -1))

    def hammer(k: int) -> None:
        for i in range(200):
            model([k, i])

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(RuntimeError):
        model([-1])
    assert model.calls == 8 * 200 + 1
    assert model.batch_sizes == [2] * 1600 + [1]
    assert len(model.inputs) == 3201
    assert model.batches[-1] == [-1]
    model.reset()
    assert model.calls == 0


def test_counting_an_async_model_is_async() -> None:
    """counting(async model) is itself an async def callable and records batches."""
    model = fake.counting(fake.async_slow(0))
    assert isinstance(model, fake.AsyncCounting)
    assert inspect.iscoroutinefunction(type(model).__call__)
    assert asyncio.run(model([1, 2])) == [1, 2]
    assert model.batch_sizes == [2]


def test_counting_cannot_be_sent_to_a_worker_process() -> None:
    """counting refuses to be pickled, saying why (its records would stay in the worker)."""
    with pytest.raises(TypeError, match="process"):
        pickle.dumps(fake.counting())


# -- the pytest plugin ------------------------------------------------------------------


def test_plugin_is_registered_as_a_pytest_entry_point() -> None:
    """The package registers clipperlite.testing._plugin under pytest11."""
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("clipperlite") == "clipperlite.testing._plugin"


CONFTEST = """
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def test_clipper_fixture_yields_a_started_clipper_and_stops_it(
    pytester: pytest.Pytester,
) -> None:
    """The `clipper` fixture gives an async test a running Clipper, stopped afterwards."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest
        from clipperlite import Clipper, ClipperClosedError
        from clipperlite import testing as fake

        seen = []

        @pytest.mark.anyio
        async def test_serves(clipper):
            assert isinstance(clipper, Clipper)
            assert clipper.running
            await clipper.create_endpoint("app", "doubles", fake.constant(1.0))
            assert (await clipper.predict("app", [1.0])).output == 1.0
            seen.append(clipper)

        @pytest.mark.anyio
        async def test_fails_inside(clipper):
            seen.append(clipper)
            raise AssertionError("on purpose")

        @pytest.mark.anyio
        async def test_earlier_ones_were_stopped(clipper):
            assert len(seen) == 2
            assert clipper not in seen
            for old in seen:
                assert not old.running
                with pytest.raises(ClipperClosedError):
                    await old.predict("app", [1.0])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)


def test_clipper_fixture_works_with_anyio_default_backend(pytester: pytest.Pytester) -> None:
    """Without an anyio_backend override the fixture runs on anyio's asyncio backend."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.anyio
        async def test_running(clipper):
            assert clipper.running
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1
    assert "failed" not in outcomes
    assert "error" not in outcomes and "errors" not in outcomes


def test_clipper_options_configure_the_fixture(pytester: pytest.Pytester) -> None:
    """Overriding `clipper_options` passes keyword options to the fixture's Clipper."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest
        from clipperlite import testing as fake

        @pytest.fixture
        def clipper_options():
            return {"cache_size": 0}

        @pytest.mark.anyio
        async def test_no_cache(clipper):
            model = fake.counting(fake.constant(2.0))
            await clipper.create_endpoint("app", "doubles", model)
            for _ in range(3):
                assert (await clipper.predict("app", [1.0])).output == 2.0
            assert model.calls == 3
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    """`pytest --fixtures` lists `clipper` and `clipper_options` with their docstrings."""
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*clipper_options -- *", "*Keyword options*", "*clipper -- *", "*A started*"]
    )
