"""The clipperlite pytest plugin (entry point ``clipperlite``): a ready `Clipper` fixture.

The ``clipper`` fixture works under either async test runner, on the event loop of
the test that uses it:

- anyio's pytest plugin (``@pytest.mark.anyio``): the Clipper is started by an async
  fixture that anyio drives; clipperlite runs on asyncio only, so with another anyio
  backend the fixture skips the test, saying why;
- pytest-asyncio, strict mode (``@pytest.mark.asyncio``) or auto mode (unmarked async
  tests): the Clipper is started by a ``pytest_asyncio`` fixture on the test's loop.

A fixture of one runner used by a test of the other runs on another loop ("Future
attached to a different loop"), so ``clipper`` itself is a plain fixture that asks
for the right one by the test's marks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clipperlite import Clipper

try:
    import pytest_asyncio
except ImportError:  # pytest-asyncio is optional: anyio's plugin is enough
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def clipper_options() -> dict[str, Any]:
    """Keyword options for the `clipper` fixture's `Clipper`; override it to change them."""
    return {}


async def _started(options: dict[str, Any]) -> AsyncIterator[Clipper]:
    # Imported here, not at the top: pytest loads this plugin before coverage starts.
    from clipperlite import Clipper

    async with Clipper(**options) as c:
        yield c


def _runs_on_pytest_asyncio(request: pytest.FixtureRequest) -> bool:
    node = request.node
    if pytest_asyncio is None or node.get_closest_marker("anyio") is not None:
        return False
    return node.get_closest_marker("asyncio") is not None


@pytest.fixture
def clipper(request: pytest.FixtureRequest) -> Clipper:
    """A started `Clipper(**clipper_options)` on the test's event loop, stopped when the
    test ends (under anyio's plugin or pytest-asyncio, strict or auto mode)."""
    if _runs_on_pytest_asyncio(request):
        started: Clipper = request.getfixturevalue("_clipperlite_on_pytest_asyncio")
    else:
        started = request.getfixturevalue("_clipperlite_on_anyio")
    return started


@pytest.fixture
async def _clipperlite_on_anyio(
    anyio_backend: Any, clipper_options: dict[str, Any]
) -> AsyncIterator[Clipper]:
    """The `clipper` of anyio-driven tests."""
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.skip(f"clipperlite runs on asyncio only, not on anyio backend {backend!r}")
    async for c in _started(clipper_options):
        yield c


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def _clipperlite_on_pytest_asyncio(
        clipper_options: dict[str, Any],
    ) -> AsyncIterator[Clipper]:
        """The `clipper` of pytest-asyncio tests (on the test's loop)."""
        async for c in _started(clipper_options):
            yield c
