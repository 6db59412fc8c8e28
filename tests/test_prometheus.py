"""ClipperCollector: the exposition parsed by prometheus-client after known traffic."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
import pytest

pytest.importorskip("prometheus_client", reason="the prometheus extra is not installed")

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from clipperlite import Clipper, DefaultCause
from clipperlite.prometheus import ClipperCollector

NAMES = {
    "clipperlite_queries": ("counter", ("app",)),
    "clipperlite_defaults": ("counter", ("app", "cause")),
    "clipperlite_query_latency_seconds": ("histogram", ("app",)),
    "clipperlite_batches": ("counter", ("model", "version")),
    "clipperlite_batch_size": ("histogram", ("model", "version")),
    "clipperlite_batch_latency_seconds": ("histogram", ("model", "version")),
    "clipperlite_queue_length": ("gauge", ("model", "version")),
    "clipperlite_replicas": ("gauge", ("model", "version")),
    "clipperlite_model_errors": ("counter", ("model", "version")),
    "clipperlite_cache_hits": ("counter", ("model", "version")),
    "clipperlite_cache_misses": ("counter", ("model", "version")),
}


def failing(xs: list[Any]) -> list[Any]:
    """A model that always raises."""
    raise RuntimeError("broken")


@pytest.fixture
async def clipper() -> AsyncIterator[Clipper]:
    """A Clipper after known traffic: 5 queries (2 repeats) to "sum", 3 defaults elsewhere."""
    async with Clipper() as c:
        await c.create_endpoint("sum", "doubles", lambda xs: [float(x.sum()) for x in xs])
        await c.create_endpoint("bad", "doubles", failing, default_output=0.0)
        c.register_application("empty", "doubles", -1.0, 100_000)
        for x in ([1.0], [2.0], [3.0], [1.0], [2.0]):
            assert not (await c.predict("sum", x)).default
        assert (await c.predict("bad", [1.0])).default
        for _ in range(2):
            assert (await c.predict("empty", [1.0])).default
        yield c


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    """The registry's exposition, parsed by prometheus-client's own parser, by family name."""
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    """The value of the one sample with that name and those labels."""
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    family = family.removesuffix("_bucket")
    found = [
        s.value
        for s in families[family].samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample_name, labels, found)
    return float(found[0])


@pytest.mark.anyio
async def test_every_metric_has_its_name_type_and_labels(clipper: Clipper) -> None:
    """The exposition holds exactly DESIGN's metrics, with their types and label names."""
    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    families = scrape(registry)
    assert set(families) == set(NAMES)
    for name, (kind, labels) in NAMES.items():
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == set(labels), (name, sample)
    text = generate_latest(registry).decode()
    for counter in (n for n, (kind, _) in NAMES.items() if kind == "counter"):
        assert f"{counter}_total{{" in text


@pytest.mark.anyio
async def test_counts_match_the_traffic(clipper: Clipper) -> None:
    """Queries, defaults by cause, cache hits, batches and errors count what happened."""
    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    f = scrape(registry)
    assert value(f, "clipperlite_queries_total", app="sum") == 5
    assert value(f, "clipperlite_queries_total", app="empty") == 2
    assert value(f, "clipperlite_defaults_total", app="empty", cause="no_model") == 2
    assert value(f, "clipperlite_defaults_total", app="bad", cause="model_error") == 1
    assert value(f, "clipperlite_defaults_total", app="sum", cause="deadline") == 0
    causes = {s.labels["cause"] for s in f["clipperlite_defaults"].samples}
    assert causes == {c.value for c in DefaultCause}
    labels = {"model": "sum", "version": "1"}
    assert value(f, "clipperlite_cache_hits_total", **labels) == 2
    assert value(f, "clipperlite_cache_misses_total", **labels) == 3
    assert value(f, "clipperlite_batches_total", **labels) == 3
    assert value(f, "clipperlite_batch_size_sum", **labels) == 3
    assert value(f, "clipperlite_replicas", **labels) == 1
    assert value(f, "clipperlite_queue_length", **labels) == 0
    assert value(f, "clipperlite_model_errors_total", **labels) == 0
    assert value(f, "clipperlite_model_errors_total", model="bad", version="1") >= 1


@pytest.mark.anyio
async def test_histograms_are_cumulative_and_end_at_inf(clipper: Clipper) -> None:
    """Query latency buckets rise to the query count at +Inf; the sum is in seconds."""
    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    f = scrape(registry)
    buckets = [
        (s.labels["le"], s.value)
        for s in f["clipperlite_query_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["app"] == "sum"
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == ("+Inf", 5)
    assert value(f, "clipperlite_query_latency_seconds_count", app="sum") == 5
    assert 0 < value(f, "clipperlite_query_latency_seconds_sum", app="sum") < 5


@pytest.mark.anyio
async def test_figures_are_read_at_scrape_time(clipper: Clipper) -> None:
    """A second scrape after more traffic shows the new counts (nothing cached)."""
    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    before = value(scrape(registry), "clipperlite_queries_total", app="sum")
    await clipper.predict_batch("sum", [np.array([9.0])] * 4)
    assert value(scrape(registry), "clipperlite_queries_total", app="sum") == before + 4


def test_registering_takes_no_snapshot_and_touches_no_global_registry() -> None:
    """describe() names the families without calling statistics(); REGISTRY is left alone."""

    class NoStatistics:
        def statistics(self) -> Any:
            raise AssertionError("statistics() called at registration")

    before = set(REGISTRY._names_to_collectors)
    registry = CollectorRegistry()
    registry.register(ClipperCollector(NoStatistics()))  # type: ignore[arg-type]
    assert set(REGISTRY._names_to_collectors) == before


def read(url: str) -> str:
    """The body at a URL, as text."""
    with urllib.request.urlopen(url) as response:
        return str(response.read().decode())


@pytest.mark.anyio
async def test_prometheus_clients_own_server_serves_it(clipper: Clipper) -> None:
    """The collector works without the HTTP frontend, on start_http_server (loopback)."""
    registry = CollectorRegistry()
    registry.register(ClipperCollector(clipper))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        text = await anyio.to_thread.run_sync(read, url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert 'clipperlite_queries_total{app="sum"} 5.0' in text
