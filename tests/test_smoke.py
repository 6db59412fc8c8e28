"""The README's hello-world works end to end."""

from __future__ import annotations

import pytest

from clipperlite import Clipper, Prediction


@pytest.mark.anyio
async def test_hello_world() -> None:
    """A registered app with a linked model answers with the model's output."""
    async with Clipper() as clipper:
        clipper.register_application("hello-world", "doubles", -1.0, 100_000)
        await clipper.deploy_model(
            "sum-model", 1, "doubles", lambda xs: [float(x.sum()) for x in xs]
        )
        clipper.link_model_to_app("hello-world", "sum-model")
        p = await clipper.predict("hello-world", [1.1, 2.2, 3.3])
    assert isinstance(p, Prediction)
    assert p.query_id == 0
    assert p.output == pytest.approx(6.6)
    assert p.default is False
    assert p.default_explanation is None
