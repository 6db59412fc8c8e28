"""A tour of clipperlite: real models, two apps, a bad release rolled back, live traffic.

Run it with ``python -m clipperlite.demo``. It takes about ten seconds:

1. trains a logistic regression with numpy (two Gaussian blobs in 20 dimensions);
2. serves it to the app "classify" (SLO 20 ms), and a sum model to the app "sum"
   (SLO 50 ms);
3. releases version 2 of the sum model, which raises on inputs with a negative
   value, and rolls back to version 1 half-way through;
4. sends a few thousand queries at a steady Poisson rate (open loop: arrivals
   never wait for answers), some of them repeated so the cache has work to do;
5. prints what happened, from the answers and from ``clipper.metrics()``.

It uses only clipperlite's public API and numpy.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

import clipperlite
from clipperlite import Clipper, InvalidInputError, Prediction

SEED = 2017
FEATURES = 20
DURATION_S = 8.0  # how long traffic runs
RATES = {"classify": 300.0, "sum": 150.0}  # mean queries per second, per app
SLO_MICROS = {"classify": 20_000, "sum": 50_000}
REPEAT_SHARE = 0.2  # share of queries that repeat an earlier input


# -- the models ------------------------------------------------------------------------
def train_logistic_regression(
    rng: np.random.Generator, n_train: int = 2000, n_test: int = 2000, steps: int = 300
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Fit weights on two Gaussian blobs with plain gradient descent; return the
    weights, the bias and a held-out test set (inputs, labels)."""
    direction = rng.normal(size=FEATURES)
    direction /= np.linalg.norm(direction)
    n = n_train + n_test
    y = rng.integers(0, 2, size=n)
    # The blobs' centres are 3 standard deviations apart: about 93% is the best any
    # classifier can do, so the accuracy below has something to show.
    X = rng.normal(size=(n, FEATURES)) + np.outer(2 * y - 1, 1.5 * direction)
    X_train, y_train, X_test, y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]

    w, b = np.zeros(FEATURES), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X_train @ w + b)))
        w -= 0.5 * X_train.T @ (p - y_train) / n_train
        b -= 0.5 * float(np.mean(p - y_train))
    return w, b, X_test, y_test


def make_classifier(w: np.ndarray, b: float) -> Callable[[list[np.ndarray]], list[int]]:
    """The served model: predicted labels (0 or 1) for a batch, with one matrix product."""

    def classify(xs: list[np.ndarray]) -> list[int]:
        labels: list[int] = ((np.stack(xs) @ w + b) > 0).astype(int).tolist()
        return labels

    return classify


def feature_sum(xs: list[np.ndarray]) -> list[float]:
    """The README's sum model, version 1."""
    return [float(x.sum()) for x in xs]


def feature_sum_v2(xs: list[np.ndarray]) -> list[float]:
    """Version 2: a 'faster' rewrite with a bug; it raises on any negative value."""
    stacked = np.stack(xs)
    if (stacked < 0).any():
        raise ValueError("negative values are not supported")
    sums: list[float] = stacked.sum(axis=1).tolist()
    return sums


# -- traffic -------------------------------------------------------------------------
class Tally:
    """Counts answers as they arrive, and tells when every query sent was answered."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.finished = asyncio.Event()
        self.answers: dict[str, list[tuple[Any, Prediction]]] = {app: [] for app in RATES}
        self.in_flight: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references

    def record(self, app: str, tag: Any, prediction: Prediction) -> None:
        self.answers[app].append((tag, prediction))
        self.left -= 1
        if self.left == 0:
            self.finished.set()


async def send_at_poisson_rate(
    clipper: Clipper,
    app: str,
    queries: list[tuple[Any, np.ndarray]],
    rate: float,
    rng: np.random.Generator,
    tally: Tally,
) -> None:
    """Send (tag, input) queries at exponentially spaced times; never wait for answers.

    Each query is its own task. When the loop's timer wakes late, the queries that
    are due are sent at once, so the mean rate stays `rate`.
    """
    loop = asyncio.get_running_loop()

    async def ask(tag: Any, x: np.ndarray) -> None:
        tally.record(app, tag, await clipper.predict(app, x))

    send_times = loop.time() + np.cumsum(rng.exponential(1.0 / rate, size=len(queries)))
    for send_time, (tag, x) in zip(send_times, queries, strict=True):
        delay = send_time - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(ask(tag, x))
        tally.in_flight.add(task)
        task.add_done_callback(tally.in_flight.discard)


def with_repeats(
    fresh: list[tuple[Any, np.ndarray]], rng: np.random.Generator
) -> list[tuple[Any, np.ndarray]]:
    """Replace REPEAT_SHARE of the queries with one sent earlier (a user asking again)."""
    out = list(fresh)
    for i in range(1, len(out)):
        if rng.random() < REPEAT_SHARE:
            out[i] = out[int(rng.integers(max(0, i - 200), i))]
    return out


# -- the run ---------------------------------------------------------------------------
async def run(rng: np.random.Generator) -> None:
    """Train the model, serve both apps under traffic, roll back half-way, then report."""
    t0 = time.perf_counter()
    w, b, X_test, y_test = train_logistic_regression(rng)
    trained_s = time.perf_counter() - t0

    n_classify = int(RATES["classify"] * DURATION_S)
    n_sum = int(RATES["sum"] * DURATION_S)
    classify_queries = with_repeats([(i, X_test[i % len(X_test)]) for i in range(n_classify)], rng)
    # Five values in [-1, 9): about two inputs in five have a negative value.
    sum_queries = with_repeats(
        [(i, rng.uniform(-1.0, 9.0, size=5).round(2)) for i in range(n_sum)], rng
    )

    async with Clipper(seed=SEED) as clipper:
        clipper.register_application("classify", "doubles", -1, SLO_MICROS["classify"])
        clipper.register_application("sum", "doubles", None, SLO_MICROS["sum"])

        await clipper.deploy_model("logreg", 1, "doubles", make_classifier(w, b))
        clipper.link_model_to_app("classify", "logreg")

        await clipper.deploy_model("sum-model", 1, "doubles", feature_sum)
        clipper.link_model_to_app("sum", "sum-model")
        # A new version becomes current at once; version 1 stays deployed.
        await clipper.deploy_model("sum-model", 2, "doubles", feature_sum_v2)

        events = [f"{0.0:4.1f} s  sum-model version 2 released: it is the current version"]
        tally = Tally(len(classify_queries) + len(sum_queries))
        start = time.perf_counter()
        senders = [
            asyncio.create_task(
                send_at_poisson_rate(
                    clipper, "classify", classify_queries, RATES["classify"], rng, tally
                )
            ),
            asyncio.create_task(
                send_at_poisson_rate(clipper, "sum", sum_queries, RATES["sum"], rng, tally)
            ),
        ]

        # Half-way through, version 2's errors are plain in the metrics: roll back.
        await asyncio.sleep(DURATION_S / 2)
        errors = clipper.metrics()["models"]["sum-model"]["2"]["errors"]
        clipper.set_model_version("sum-model", 1)
        events.append(
            f"{time.perf_counter() - start:4.1f} s  version 2 failed {errors} batches:"
            f" set_model_version('sum-model', 1) rolled back to version"
            f" {clipper.get_current_model_version('sum-model')}"
        )

        await asyncio.gather(*senders)
        await asyncio.wait_for(tally.finished.wait(), timeout=30)
        elapsed = time.perf_counter() - start
        metrics = clipper.metrics()

        try:
            await clipper.predict("classify", [0.5, 1.5, "abc"])
        except InvalidInputError as exc:
            invalid = str(exc)

    report(metrics, tally, elapsed, events, trained_s, make_classifier(w, b), X_test, y_test)
    print(f"\nAn input that does not fit the app's type never reaches a model:\n  {invalid}")


def report(
    metrics: dict[str, Any],
    tally: Tally,
    elapsed: float,
    events: list[str],
    trained_s: float,
    classify: Callable[[list[np.ndarray]], list[int]],
    X_test: np.ndarray,
    y_test: np.ndarray,
) -> None:
    """Print what happened: per app, the logistic regression's accuracy, defaults, models."""
    total = sum(a["queries"] for a in metrics["apps"].values())
    print(f"clipperlite {clipperlite.__version__} demo")
    print(
        f"Trained a logistic regression ({FEATURES} features, plain gradient descent) in"
        f" {trained_s * 1000:.0f} ms."
    )
    print(f"Served {total:,} queries from 2 apps in {elapsed:.1f} s (Poisson arrivals).\n")
    for event in events:
        print(f"  {event}")

    print("\nApps")
    print(f"  {'app':<10}{'queries':>8}{'rate':>9}{'p50':>9}{'p99':>9}{'SLO':>8}"
          f"{'in SLO':>9}{'defaults':>10}")  # fmt: skip
    for app, m in metrics["apps"].items():
        slo = SLO_MICROS[app]
        answers = [p for _, p in tally.answers[app]]
        in_slo = sum(p.latency_micros <= slo for p in answers) / len(answers)
        lat = m["latency_micros"]
        print(
            f"  {app:<10}{m['queries']:>8,}{m['queries'] / elapsed:>7.0f}/s"
            f"{lat['p50'] / 1000:>6.2f} ms{lat['p99'] / 1000:>6.2f} ms{slo / 1000:>5.0f} ms"
            f"{in_slo:>9.1%}{m['defaults_total']:>10,}"
        )

    # Accuracy as served: the labels the app returned, against the true labels.
    served = [(i, p.output) for i, p in tally.answers["classify"] if not p.default]
    truth = np.array([y_test[i % len(y_test)] for i, _ in served])
    served_accuracy = float(np.mean(np.array([label for _, label in served]) == truth))
    offline = classify([X_test[i % len(X_test)] for i, _ in served])
    offline_accuracy = float(np.mean(np.array(offline) == truth))
    print(
        f"\nLogistic regression on held-out data, as served: {served_accuracy:.1%} accurate"
        f" over {len(served):,} answers (the same inputs called directly: {offline_accuracy:.1%})"
    )

    print("\nDefaults (the app's default output, with an explanation)")
    for app, m in metrics["apps"].items():
        if not m["defaults"]:
            print(f"  {app}: none")
            continue
        causes = ", ".join(f"{n:,} {cause}" for cause, n in m["defaults"].items())
        print(f"  {app}: {causes}")
        explained = Counter(p.default_explanation for _, p in tally.answers[app] if p.default)
        for explanation, n in explained.most_common(3):
            print(f"    {n:>5,} x {explanation}")

    print("\nModels (AIMD sizes batches when batch_size is not fixed)")
    print(f"  {'model':<10}{'version':>8}{'current':>9}{'batches':>9}{'mean batch':>12}"
          f"{'max batch':>11}{'errors':>8}{'cache hits':>12}{'misses':>8}")  # fmt: skip
    for name, versions in metrics["models"].items():
        for v in versions.values():
            print(
                f"  {name:<10}{v['version']!s:>8}{'yes' if v['is_current'] else 'no':>9}"
                f"{v['batches']:>9,}{v['mean_batch_size']:>12.2f}{v['max_batch_size']:>11}"
                f"{v['errors']:>8,}{v['cache_hits']:>12,}{v['cache_misses']:>8,}"
            )
    cache = metrics["cache"]
    print(f"  cache: {cache['size']:,} of {cache['maxsize']:,} entries used")
    print(
        "  (AIMD raises 'max batch' after each full batch that ran well inside its budget;"
        "\n   at this load a replica seldom finds more than one query waiting, so batches stay"
        " small.)"
    )


def main() -> None:
    """Run the demo (about ten seconds)."""
    asyncio.run(run(np.random.default_rng(SEED)))


if __name__ == "__main__":
    main()
