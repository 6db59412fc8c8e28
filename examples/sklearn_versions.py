"""A scikit-learn model with two versions and a rollback (`set_model_version`).

Version 1 is a logistic regression on the digits data set; version 2 is a deliberately
bad release (a tree of depth 1). Both stay deployed, so rolling back is instant.

Run: pip install scikit-learn && python examples/sklearn_versions.py
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np

import clipperlite

try:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier
except ImportError:
    print("SKIP: this example needs scikit-learn: pip install scikit-learn")
    sys.exit(0)


def as_model(estimator: object) -> object:
    """A clipperlite model function around a fitted scikit-learn classifier."""

    def predict(xs: list[np.ndarray]) -> list[int]:
        return [int(label) for label in estimator.predict(np.stack(xs))]  # type: ignore[attr-defined]

    return predict


async def accuracy(clipper: clipperlite.Clipper, xs: np.ndarray, ys: np.ndarray) -> float:
    answers = await clipper.predict_batch("digits", list(xs))
    return sum(p.output == y for p, y in zip(answers, ys, strict=True)) / len(ys)


async def main() -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=300, random_state=0)
    good = LogisticRegression(max_iter=2_000).fit(x_train, y_train)
    bad = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x_train, y_train)

    async with clipperlite.Clipper() as clipper:
        clipper.register_application("digits", "doubles", -1, 1_000_000)
        await clipper.deploy_model("digits-model", 1, "doubles", as_model(good))
        clipper.link_model_to_app("digits", "digits-model")
        print(f"version 1: accuracy {await accuracy(clipper, x_test, y_test):.2f}")

        await clipper.deploy_model("digits-model", 2, "doubles", as_model(bad))
        v = clipper.get_current_model_version("digits-model")
        print(f"version {v}: accuracy {await accuracy(clipper, x_test, y_test):.2f}")

        clipper.set_model_version("digits-model", 1)  # the rollback
        v = clipper.get_current_model_version("digits-model")
        print(f"rolled back to version {v}: accuracy {await accuracy(clipper, x_test, y_test):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
