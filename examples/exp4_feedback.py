"""Exp4 over several models, learning from feedback which of them to trust.

Three models guess a digit's label: one is right 90% of the time, one 60%, one guesses.
Exp4 queries all of them and answers by weighted vote; each feedback moves weight to
the models that were right, so the vote's accuracy and confidence climb.

Run: python examples/exp4_feedback.py
"""

from __future__ import annotations

import asyncio

import numpy as np

import clipperlite

LABELS = 10


def noisy_model(accuracy: float, seed: int):  # type: ignore[no-untyped-def]
    """A model that answers the true label (the input's first integer) with `accuracy`."""
    rng = np.random.default_rng(seed)

    def predict(xs: list[np.ndarray]) -> list[int]:
        return [int(x[0]) if rng.random() < accuracy else int(rng.integers(LABELS)) for x in xs]

    return predict


async def main() -> None:
    rng = np.random.default_rng(0)
    async with clipperlite.Clipper(seed=0, cache_size=0) as clipper:
        clipper.register_application("digits", "integers", -1, 1_000_000, policy="exp4")
        for name, acc in [("good", 0.9), ("fair", 0.6), ("random", 0.1)]:
            await clipper.deploy_model(name, 1, "integers", noisy_model(acc, seed=len(name)))
            clipper.link_model_to_app("digits", name)

        for rnd in range(4):
            right, confidence = 0, 0.0
            for _ in range(100):
                label = int(rng.integers(LABELS))
                x = [label, int(rng.integers(1_000_000))]  # a unique input: no cache hits
                p = await clipper.predict("digits", x)
                right += p.output == label
                confidence += p.confidence
                await clipper.feedback("digits", x, label)
            print(
                f"round {rnd}: accuracy {right / 100:.2f}, mean confidence {confidence / 100:.2f}"
            )

        state = clipper.get_policy_state("digits")
        weights = np.exp(np.array(state["log_weights"]) - max(state["log_weights"]))
        shares = dict(
            zip(state["models"], np.round(weights / weights.sum(), 3).tolist(), strict=True)
        )
        print("weight shares:", shares)


if __name__ == "__main__":
    asyncio.run(main())
