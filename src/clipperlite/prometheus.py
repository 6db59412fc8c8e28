"""Prometheus metrics for a Clipper: a collector that reads `statistics()` at scrape time.

`ClipperCollector(clipper)` is a custom collector (extra `prometheus`, that is
prometheus-client). It adds nothing to the path of a query: each scrape reads one
`Clipper.statistics()` snapshot and translates its frozen records into metric
families. Nothing is registered anywhere until you register it::

    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from clipperlite.prometheus import ClipperCollector

    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    print(generate_latest(registry).decode())       # or: start_http_server(9100, registry=registry)

The HTTP frontend (`clipperlite.http`) serves the same collector at `GET /metrics`
on a registry of its own. Every metric is listed in docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by the "extra missing" test in a subprocess
    raise ImportError(
        "clipperlite.prometheus needs prometheus-client: pip install 'clipperlite[prometheus]'"
    ) from None

from clipperlite import DefaultCause

if TYPE_CHECKING:
    from clipperlite import Clipper

__all__ = ["ClipperCollector"]

_APP = ("app",)
_MODEL = ("model", "version")


class ClipperCollector(Collector):
    """Exports one Clipper's figures in Prometheus form, read at each scrape.

    Metrics (the `_total` suffix is added by prometheus-client to counters):
    `clipperlite_queries_total{app}`, `clipperlite_defaults_total{app,cause}`,
    `clipperlite_query_latency_seconds{app}` (histogram),
    `clipperlite_batches_total{model,version}`,
    `clipperlite_batch_size{model,version}` (histogram),
    `clipperlite_batch_latency_seconds{model,version}` (histogram),
    `clipperlite_queue_length{model,version}`, `clipperlite_replicas{model,version}`
    (gauges), `clipperlite_model_errors_total{model,version}`,
    `clipperlite_cache_hits_total{model,version}` and
    `clipperlite_cache_misses_total{model,version}`. Every cause of
    `DefaultCause` is exported for every app (0 until it happens), so rates start at
    the first default. Stopped model versions keep their final figures.

    Args:
        clipper: The Clipper to read. Its `statistics()` is a plain read, safe from a
            scraper's thread (`prometheus_client.start_http_server`).
    """

    def __init__(self, clipper: Clipper) -> None:
        self._clipper = clipper

    def describe(self) -> Iterable[Metric]:
        """The metric families without samples, so registering does not take a snapshot."""
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        """One snapshot of `statistics()` as metric families."""
        stats = self._clipper.statistics()
        (
            queries,
            defaults,
            query_latency,
            batches,
            batch_size,
            batch_latency,
            queue_length,
            replicas,
            errors,
            hits,
            misses,
        ) = families = _families()
        for app in stats.apps:
            labels = [app.name]
            queries.add_metric(labels, app.queries)
            for cause in DefaultCause:
                defaults.add_metric([app.name, cause.value], app.defaults.get(cause, 0))
            _add_histogram(query_latency, labels, app.latency)
        for model in stats.models:
            labels = [model.name, str(model.version)]
            batches.add_metric(labels, model.batches)
            _add_histogram(batch_size, labels, model.batch_size)
            _add_histogram(batch_latency, labels, model.batch_latency)
            queue_length.add_metric(labels, model.queue_length)
            replicas.add_metric(labels, model.num_replicas)
            errors.add_metric(labels, model.errors)
            hits.add_metric(labels, model.cache_hits)
            misses.add_metric(labels, model.cache_misses)
        return families


def _families() -> tuple[Any, ...]:
    """Empty metric families, in the order `collect` fills them."""
    return (
        CounterMetricFamily(
            "clipperlite_queries", "Queries answered, defaults included.", labels=_APP
        ),
        CounterMetricFamily(
            "clipperlite_defaults", "Queries answered with the app's default, by cause.",
            labels=(*_APP, "cause"),
        ),
        HistogramMetricFamily(
            "clipperlite_query_latency_seconds", "Query latency, from the call to the answer.",
            labels=_APP,
        ),
        CounterMetricFamily(
            "clipperlite_batches", "Batches a model version ran.", labels=_MODEL
        ),
        HistogramMetricFamily(
            "clipperlite_batch_size", "Queries per batch.", labels=_MODEL
        ),
        HistogramMetricFamily(
            "clipperlite_batch_latency_seconds",
            "Batch latency, as the backend measured the model.", labels=_MODEL,
        ),
        GaugeMetricFamily(
            "clipperlite_queue_length", "Queries waiting in the model's queue.", labels=_MODEL
        ),
        GaugeMetricFamily(
            "clipperlite_replicas", "Replicas of the model version running.", labels=_MODEL
        ),
        CounterMetricFamily(
            "clipperlite_model_errors",
            "Batches that failed (the model raised, gave the wrong length, its worker died).",
            labels=_MODEL,
        ),
        CounterMetricFamily(
            "clipperlite_cache_hits", "Queries answered from the prediction cache.",
            labels=_MODEL,
        ),
        CounterMetricFamily(
            "clipperlite_cache_misses", "Queries that looked in the cache and missed.",
            labels=_MODEL,
        ),
    )  # fmt: skip


def _add_histogram(family: HistogramMetricFamily, labels: Sequence[str], hist: Any) -> None:
    """One histogram's cumulative buckets (the last bound is +Inf) and its sum."""
    family.add_metric(list(labels), list(_buckets(hist.bounds, hist.counts, hist.count)), hist.sum)


def _buckets(
    bounds: Sequence[float], counts: Sequence[int], total: int
) -> Iterator[tuple[str, float]]:
    for bound, count in zip(bounds, counts, strict=True):
        yield ("+Inf" if bound == math.inf else repr(float(bound))), count
    if not bounds or bounds[-1] != math.inf:  # the exposition needs +Inf
        yield "+Inf", total
