"""Quickstart: one app, one model, a few queries, a default explained, the figures.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

import numpy as np

import clipperlite


def feature_sum(xs: list[np.ndarray]) -> list[float]:
    """The model: the sum of each input's features (Clipper's hello-world)."""
    return [float(x.sum()) for x in xs]


async def main() -> None:
    async with clipperlite.Clipper() as clipper:
        clipper.register_application("hello-world", "doubles", -1.0, 100_000)
        await clipper.deploy_model("sum-model", 1, "doubles", feature_sum)
        clipper.link_model_to_app("hello-world", "sum-model")

        print(await clipper.predict("hello-world", [1.1, 2.2, 3.3]))
        answers = await clipper.predict_batch("hello-world", [[1.0, 2.0], [3.0, 4.0]])
        print([p.output for p in answers])

        # An app with no linked model answers its default, and says why.
        clipper.register_application("lonely", "doubles", 0.0, 100_000)
        print(await clipper.predict("lonely", [1.0]))

        apps = clipper.metrics()["apps"]
        print("queries:", {name: a["queries"] for name, a in apps.items()})


if __name__ == "__main__":
    asyncio.run(main())
