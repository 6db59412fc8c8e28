"""The clipperlite pytest plugin (entry point ``clipperlite``): a ready `Clipper` fixture.

Async fixtures run through anyio's pytest plugin: a fixture that asks for
``anyio_backend`` is driven by anyio's test runner, on the same event loop as the
test that uses it. clipperlite runs on asyncio only, so with another backend the
fixture skips the test, saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clipperlite import Clipper


@pytest.fixture
def clipper_options() -> dict[str, Any]:
    """Keyword options for the `clipper` fixture's `Clipper`; override it to change them."""
    return {}


@pytest.fixture
async def clipper(anyio_backend: Any, clipper_options: dict[str, Any]) -> AsyncIterator[Clipper]:
    """A started `Clipper(**clipper_options)`, stopped when the test ends."""
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if backend != "asyncio":
        pytest.skip(f"clipperlite runs on asyncio only, not on anyio backend {backend!r}")
    # Imported here, not at the top: pytest loads this plugin before coverage starts.
    from clipperlite import Clipper

    async with Clipper(**clipper_options) as c:
        yield c
