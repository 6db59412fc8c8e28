"""Clipper's xgboost tutorial, redone: a booster on 784 integer inputs (an MNIST-sized
image of pixels 0-255), deployed as a model of an "integers" app.

Clipper's tutorial trained on one random point; here the booster learns a rule it can
get right (is the image's centre pixel bright?) from 2,000 random images, so the
answers can be checked.

Run: pip install xgboost && python examples/xgboost_tutorial.py
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

import clipperlite

try:
    import xgboost as xgb
except ImportError:
    print("SKIP: this example needs xgboost: pip install xgboost")
    sys.exit(0)

PIXELS = 784
CENTRE = 14 * 28 + 14


def images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 images as rows of 784 ints, labelled 1 when the centre pixel is bright."""
    x = rng.integers(0, 256, size=(n, PIXELS), dtype=np.int32)
    y = (x[:, CENTRE] > 127).astype(int)
    return x, y


def train(rng: np.random.Generator) -> xgb.Booster:
    """Clipper's tutorial parameters, with more rounds so the rule is learned."""
    x, y = images(2_000, rng)
    params = {"max_depth": 2, "eta": 1, "objective": "binary:logistic", "nthread": 1}
    return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=20)


async def main() -> None:
    rng = np.random.default_rng(0)
    booster = train(rng)

    def predict(xs: list[np.ndarray]) -> list[float]:
        """One DMatrix per batch: xgboost, like Clipper's containers, batches well."""
        return [float(p) for p in booster.predict(xgb.DMatrix(np.stack(xs)))]

    predict([np.zeros(PIXELS, dtype=np.int32)])  # warm up, as a model container loads

    async with clipperlite.Clipper() as clipper:
        # A generous SLO (Clipper's tutorial used 100 ms): 200 concurrent queries of
        # 784 features on a small shared machine.
        clipper.register_application("xgboost-test", "integers", 0.0, 1_000_000)
        await clipper.deploy_model("xgboost-model", 1, "integers", predict)
        clipper.link_model_to_app("xgboost-test", "xgboost-model")

        x, y = images(200, rng)
        answers = await asyncio.gather(*(clipper.predict("xgboost-test", list(r)) for r in x))
        defaults = sum(p.default for p in answers)
        correct = sum(int(p.output > 0.5) == label for p, label in zip(answers, y, strict=True))
        print(f"first answer: {answers[0]}")
        print(f"{len(answers)} queries, {defaults} defaults, accuracy {correct / len(answers):.2f}")
        stats = clipper.metrics()["models"]["xgboost-model"]["1"]
        print(f"batches: {stats['batches']}, mean batch size: {stats['mean_batch_size']:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
