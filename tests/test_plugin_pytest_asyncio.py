"""The `clipper` fixture under pytest-asyncio, strict and auto modes (run through pytester)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_asyncio", reason="pytest-asyncio is part of the test extra")

pytest_plugins = ["pytester"]

TESTS = """
import asyncio
import pytest
from clipperlite import testing as fake

{mark}
async def test_serves(clipper):
    assert clipper.running
    await clipper.create_endpoint("app", "doubles", fake.constant(1.0))
    assert (await clipper.predict("app", [1.0])).output == 1.0

{mark}
async def test_again_on_a_fresh_loop(clipper):
    await clipper.create_endpoint("app", "doubles", fake.async_slow(0.001, fake.constant(2.0)))
    assert (await clipper.predict("app", [1.0])).output == 2.0
"""


def _run(pytester: pytest.Pytester, mode: str, mark: str) -> pytest.RunResult:
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(TESTS.format(mark=mark))
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")


def test_clipper_fixture_under_pytest_asyncio_strict_mode(pytester: pytest.Pytester) -> None:
    """@pytest.mark.asyncio tests get a running Clipper on their own loop (strict mode)."""
    result = _run(pytester, "strict", "@pytest.mark.asyncio")
    result.assert_outcomes(passed=2)


def test_clipper_fixture_under_pytest_asyncio_auto_mode(pytester: pytest.Pytester) -> None:
    """Unmarked async tests get a running Clipper on their own loop (auto mode)."""
    result = _run(pytester, "auto", "")
    result.assert_outcomes(passed=2)


def test_clipper_fixture_under_anyio_with_pytest_asyncio_installed(
    pytester: pytest.Pytester,
) -> None:
    """With pytest-asyncio installed (strict mode), anyio-marked tests still work."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"
        """
    )
    result = _run(pytester, "strict", "@pytest.mark.anyio")
    result.assert_outcomes(passed=2)
