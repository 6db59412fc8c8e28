"""What travels between a process-backend replica and its worker: inputs, outputs, errors.

Every class and function a model uses is defined inside a function, so that cloudpickle
ships it by value (plain pickle cannot name it), as it does for a script's `__main__`:
the worker never imports this file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import pytest

from clipperlite import Clipper
from helpers import version_stats


def _labelling_model() -> tuple[Any, type]:
    """A model returning instances of a dataclass of its own (as if from a script)."""

    @dataclasses.dataclass
    class Label:
        name: str
        score: float

    def model(xs: list[Any]) -> list[Any]:
        return [Label("sum", float(sum(x))) for x in xs]

    return model, Label


def _raising_model() -> tuple[Any, type]:
    """A model raising an exception class of its own for a negative input."""

    class OwnError(Exception):
        pass

    def model(xs: list[Any]) -> list[Any]:
        if any(x[0] < 0 for x in xs):
            raise OwnError("negative input")
        return [float(x[0]) for x in xs]

    return model, OwnError


def _lock_returning_model() -> Any:
    """A model whose output for a negative input is a lock (which no pickler can send)."""

    def model(xs: list[Any]) -> list[Any]:
        import threading

        return [threading.Lock() if x[0] < 0 else float(x[0]) for x in xs]

    return model


def _pid_model() -> Any:
    """A model answering each input with the id of the process it runs in."""

    def model(xs: list[Any]) -> list[Any]:
        import os

        return [os.getpid() for _ in xs]

    return model


def _only_loads_here() -> Any:
    """An input that pickles in the parent but raises when rebuilt in the worker."""

    def refuse() -> Any:
        raise ValueError("only loads in the parent")

    class LoadsOnlyHere:
        def __reduce__(self) -> Any:
            return (refuse, ())

    return LoadsOnlyHere()


def _deeply_failing_model() -> Any:
    """A model whose error is raised two calls down, in a function with a telling name."""

    def helper_deep_inside_the_model(x: Any) -> float:
        raise ZeroDivisionError(f"no answer for {x[0]}")

    def model(xs: list[Any]) -> list[Any]:
        return [helper_deep_inside_the_model(x) for x in xs]

    return model


def _unpicklable_error_model() -> Any:
    """A model raising an error that holds a lock (so it cannot travel) and whose str()
    raises."""

    class HoldsALock(Exception):
        def __init__(self) -> None:
            import threading

            super().__init__()
            self.lock = threading.Lock()

        def __str__(self) -> str:
            return str(self.reason)  # type: ignore[attr-defined]

    def helper_raising_an_unpicklable_error() -> None:
        raise HoldsALock()

    def model(xs: list[Any]) -> list[Any]:
        helper_raising_an_unpicklable_error()
        return xs

    return model


async def _serve_in_process(clipper: Clipper, input_type: str, model: Any, default: Any) -> None:
    """App and model "p" on the process backend, with a deadline no probe here nears."""
    await clipper.create_endpoint(
        "p", input_type, model, default_output=default, backend="process", slo_micros=5_000_000
    )


@pytest.mark.anyio
async def test_outputs_of_a_class_defined_by_value_come_back() -> None:
    """Outputs pickle cannot name come back via cloudpickle, as the model's own class."""
    model, label = _labelling_model()
    async with Clipper(cache_size=0) as clipper:
        await clipper.create_endpoint("p", "doubles", model, default_output=None, backend="process")
        p = await clipper.predict("p", [1.0, 2.0])
    assert not p.default, p
    assert isinstance(p.output, label)
    assert (p.output.name, p.output.score) == ("sum", 3.0)


@pytest.mark.anyio
async def test_an_error_of_a_class_defined_by_value_comes_back_as_itself() -> None:
    """A model's exception of its own class is reported under its name, not as RuntimeError."""
    model, _ = _raising_model()
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "doubles", model, -1.0)
        bad = await clipper.predict("p", [-1.0])
        good = await clipper.predict("p", [2.0])
    assert bad.default_cause == "model_error", bad
    assert "raised OwnError: negative input" in (bad.default_explanation or ""), bad
    assert (good.default, good.output) == (False, 2.0)


@pytest.mark.anyio
async def test_outputs_that_cannot_be_sent_back_fail_the_batch_saying_so() -> None:
    """An output no pickler can send is a model_error saying so (no per-item hint); the
    worker serves on, not replaced."""
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "doubles", _lock_returning_model(), -1.0)
        bad = await clipper.predict("p", [-1.0])
        after = [await clipper.predict("p", [float(i)]) for i in range(3)]
        stats = version_stats(clipper, "p")
    text = bad.default_explanation or ""
    assert bad.default_cause == "model_error", bad
    assert "outputs could not be sent back from the worker process" in text, text
    assert "lock" in text, text
    assert "hint" not in text, text
    assert [(p.default, p.output) for p in after] == [(False, 0.0), (False, 1.0), (False, 2.0)]
    assert stats["replaced_replicas"] == 0


@pytest.mark.anyio
async def test_an_input_the_worker_cannot_load_fails_its_batch_and_the_worker_serves_on() -> None:
    """An "any" input that pickles here but not there is a model_error saying why, answered
    by the same worker process, which answers the next query at once."""
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "any", _pid_model(), -1)
        before = await clipper.predict("p", 1)
        bad = await clipper.predict("p", _only_loads_here())
        after = await clipper.predict("p", 2)
    text = bad.default_explanation or ""
    assert bad.default_cause == "model_error", bad
    assert "inputs could not be loaded in the worker process" in text, text
    assert "only loads in the parent" in text, text
    assert not before.default and not after.default, (before, after)
    assert after.output == before.output  # the same worker: not restarted


@pytest.mark.anyio
async def test_an_input_that_cannot_be_sent_fails_its_batch_saying_so() -> None:
    """An "any" input no pickler can send is a model_error saying so, without the
    per-item hint meant for a model's own TypeError."""
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "any", _pid_model(), -1)
        bad = await clipper.predict("p", threading.Lock())
        after = await clipper.predict("p", 2)
    text = bad.default_explanation or ""
    assert bad.default_cause == "model_error", bad
    assert "inputs could not be sent to worker process" in text, text
    assert "hint" not in text, text
    assert not after.default, after


@pytest.mark.anyio
async def test_a_models_error_is_logged_with_the_models_own_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The WARNING for a model's exception in a worker shows the worker-side traceback."""
    caplog.set_level(logging.WARNING, logger="clipperlite")
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "doubles", _deeply_failing_model(), -1.0)
        bad = await clipper.predict("p", [7.0])
    assert bad.default_cause == "model_error", bad
    assert "raised ZeroDivisionError: no answer for 7.0" in (bad.default_explanation or "")
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and r.exc_info]
    assert logged, caplog.text
    assert "helper_deep_inside_the_model" in caplog.text, caplog.text


@pytest.mark.anyio
async def test_an_error_that_cannot_travel_is_described_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unpicklable error whose str() raises becomes a RuntimeError describing it; the
    log still shows the model's frames, and the worker serves on."""
    caplog.set_level(logging.WARNING, logger="clipperlite")
    async with Clipper(cache_size=0) as clipper:
        await _serve_in_process(clipper, "doubles", _unpicklable_error_model(), -1.0)
        bad = await clipper.predict("p", [1.0])
        stats = version_stats(clipper, "p")
    assert bad.default_cause == "model_error", bad
    assert "raised RuntimeError: HoldsALock: <str() failed>" in (bad.default_explanation or "")
    assert "helper_raising_an_unpicklable_error" in caplog.text, caplog.text
    assert stats["replaced_replicas"] == 0
