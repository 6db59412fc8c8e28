"""Shared test setup: anyio drives async tests on asyncio."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """clipperlite runs on asyncio only."""
    return "asyncio"
