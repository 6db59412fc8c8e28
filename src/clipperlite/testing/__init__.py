"""Test helpers for code that serves models with clipperlite.

Fake models to deploy (`echo`, `constant`, `slow`, `async_slow`, `flaky`,
`wrong_length`, `hang`, `crashing`, `counting`) and a pytest plugin, registered as the
``clipperlite`` entry point, whose ``clipper`` fixture yields a started `Clipper`
(its options come from the ``clipper_options`` fixture, which a test module or
conftest may override)::

    import pytest
    from clipperlite import testing

    @pytest.mark.anyio
    async def test_my_app(clipper):
        model = testing.counting(testing.constant(1.0))
        await clipper.create_endpoint("app", "doubles", model)
        assert (await clipper.predict("app", [1.0])).output == 1.0
        assert model.calls == 1

Everything here is built on clipperlite's public API only.
"""

from __future__ import annotations

from ._models import (
    AsyncCounting,
    Counting,
    async_slow,
    constant,
    counting,
    crashing,
    echo,
    flaky,
    hang,
    slow,
    wrong_length,
)

__all__ = [
    "AsyncCounting",
    "Counting",
    "async_slow",
    "constant",
    "counting",
    "crashing",
    "echo",
    "flaky",
    "hang",
    "slow",
    "wrong_length",
]

for _name in __all__:
    globals()[_name].__module__ = "clipperlite.testing"
del _name
