"""The prediction cache: LRU answers and the single-flight table of queries in flight."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clipperlite._cache import PredictionCache

MISS = PredictionCache.MISS


def test_put_then_get_returns_the_output() -> None:
    """A stored output is returned for its key; an unknown key is a MISS."""
    cache: PredictionCache[object] = PredictionCache(4)
    cache.put(("m", "1", b"x"), 42)
    assert cache.get(("m", "1", b"x")) == 42
    assert cache.get(("m", "1", b"y")) is MISS
    assert len(cache) == 1


def test_none_is_a_cacheable_output_distinct_from_miss() -> None:
    """An output of None is cached and returned, not confused with a miss."""
    cache: PredictionCache[object] = PredictionCache(2)
    cache.put("k", None)
    assert cache.get("k") is None


def test_least_recently_put_is_evicted_first() -> None:
    """When full, storing a new answer evicts the oldest one."""
    cache: PredictionCache[object] = PredictionCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is MISS
    assert cache.get("b") == 2
    assert cache.get("c") == 3
    assert len(cache) == 2


def test_get_refreshes_recency() -> None:
    """Reading an answer makes it recently used, so the other one is evicted instead."""
    cache: PredictionCache[object] = PredictionCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is MISS
    assert cache.get("a") == 1
    assert cache.get("c") == 3


def test_put_of_an_existing_key_replaces_and_refreshes_it() -> None:
    """Storing a key again replaces its output and makes it recently used."""
    cache: PredictionCache[object] = PredictionCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.get("a") == 10
    assert cache.get("b") is MISS
    assert len(cache) == 2


def test_a_miss_does_not_refresh_anything() -> None:
    """Looking up a missing key leaves the eviction order as it was."""
    cache: PredictionCache[object] = PredictionCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("zzz") is MISS
    cache.put("c", 3)
    assert cache.get("a") is MISS
    assert cache.get("b") == 2


def test_long_run_keeps_exactly_the_most_recent_answers() -> None:
    """After many puts, only the last maxsize keys remain."""
    cache: PredictionCache[object] = PredictionCache(10)
    for i in range(1000):
        cache.put(i, i * i)
    assert len(cache) == 10
    assert [k for k in range(1000) if cache.get(k) is not MISS] == list(range(990, 1000))


def test_size_zero_disables_caching() -> None:
    """With size 0, get is always a MISS and nothing is stored."""
    cache: PredictionCache[object] = PredictionCache(0)
    assert cache.enabled is False
    assert cache.maxsize == 0
    cache.put("a", 1)
    assert cache.get("a") is MISS
    assert len(cache) == 0
    assert cache.drop(lambda key: True) == 0


def test_size_zero_disables_coalescing() -> None:
    """With size 0, begin records nothing, so identical queries are never joined."""
    cache: PredictionCache[object] = PredictionCache(0)
    token = object()
    cache.begin("a", token)
    assert cache.pending("a") is None
    assert cache.inflight == 0


def test_enabled_cache_reports_its_size() -> None:
    """A positive size enables the cache and is reported as maxsize."""
    cache: PredictionCache[object] = PredictionCache(3)
    assert cache.enabled is True
    assert cache.maxsize == 3


def test_begin_then_pending_returns_the_token() -> None:
    """A key being computed is pending under the token given to begin."""
    cache: PredictionCache[object] = PredictionCache(4)
    token = object()
    assert cache.pending("k") is None
    cache.begin("k", token)
    assert cache.pending("k") is token
    assert cache.pending("other") is None
    assert cache.inflight == 1


def test_end_with_the_matching_token_forgets_the_key() -> None:
    """end(key, token) removes the in-flight entry when it is that token's."""
    cache: PredictionCache[object] = PredictionCache(4)
    token = object()
    cache.begin("k", token)
    cache.end("k", token)
    assert cache.pending("k") is None
    assert cache.inflight == 0


def test_end_with_another_token_leaves_the_newer_flight() -> None:
    """A stale end (from an older flight of the same key) does not remove the newer one."""
    cache: PredictionCache[object] = PredictionCache(4)
    old, new = object(), object()
    cache.begin("k", old)
    cache.begin("k", new)
    cache.end("k", old)
    assert cache.pending("k") is new
    cache.end("k", new)
    assert cache.pending("k") is None


def test_end_compares_tokens_by_identity() -> None:
    """An equal but different token is not the same flight."""
    cache: PredictionCache[object] = PredictionCache(4)
    mine: list[int] = []
    lookalike: list[int] = []
    cache.begin("k", mine)
    cache.end("k", lookalike)
    assert cache.pending("k") is mine


def test_end_of_an_unknown_key_is_harmless() -> None:
    """Ending a key that is not in flight changes nothing and does not raise."""
    cache: PredictionCache[object] = PredictionCache(4)
    cache.end("nothing", object())
    assert cache.inflight == 0


def test_in_flight_entries_are_separate_from_cached_answers() -> None:
    """A pending key is not an answer, and an answer is not pending."""
    cache: PredictionCache[object] = PredictionCache(4)
    cache.begin("k", object())
    assert cache.get("k") is MISS
    cache.put("j", 1)
    assert cache.pending("j") is None
    assert len(cache) == 1


def test_drop_removes_matching_keys_and_counts_them() -> None:
    """drop(predicate) removes exactly the answers whose key matches and returns how many."""
    cache: PredictionCache[object] = PredictionCache(10)
    for model in ("a", "b"):
        for version in ("1", "2"):
            cache.put((model, version, b"x"), f"{model}{version}")
    removed = cache.drop(lambda key: key[0] == "a" and key[1] == "1")
    assert removed == 1
    assert cache.get(("a", "1", b"x")) is MISS
    assert cache.get(("a", "2", b"x")) == "a2"
    assert cache.get(("b", "1", b"x")) == "b1"
    assert len(cache) == 3
    assert cache.drop(lambda key: key[0] == "b") == 2
    assert len(cache) == 1
    assert cache.drop(lambda key: False) == 0


def test_drop_leaves_in_flight_entries() -> None:
    """Dropping answers does not forget queries still in flight."""
    cache: PredictionCache[object] = PredictionCache(4)
    token = object()
    cache.begin(("a", "1", b"x"), token)
    cache.drop(lambda key: True)
    assert cache.pending(("a", "1", b"x")) is token


@pytest.mark.parametrize("bad", [-1, 1.5, True, False, "8", None])
def test_bad_sizes_raise_value_error(bad: Any) -> None:
    """A size that is not an int >= 0 (bools included) raises ValueError naming it."""
    with pytest.raises(ValueError, match="cache_size"):
        PredictionCache(bad)


def test_outputs_are_copied_structurally_and_bounded() -> None:
    """The cache gives each hit its own containers and arrays; values, flat tuples and
    containers past the budget are shared, so a big shared structure is never copied."""
    from clipperlite._types import copier, detached

    big = {i: i for i in range(10_000)}
    nested = {"scores": [0.9, 0.1], "table": big, "pair": (1, 2), "arr": np.zeros(2)}
    cache: PredictionCache[Any] = PredictionCache(10)
    cache.put("k", nested)
    hit = cache.get("k")
    assert hit == {**nested, "arr": hit["arr"]} and hit is not nested
    assert hit["scores"] is not nested["scores"] and hit["arr"] is not nested["arr"]
    assert hit["table"] is big and hit["pair"] is nested["pair"]
    hit["scores"].append(99)
    assert cache.get("k")["scores"] == [0.9, 0.1]
    flat = [np.float64(1.0), 2, "a"]
    assert copier(flat) is list.copy and copier((1, "a")) is None and copier(3.0) is None
    assert detached(((1, [2]),)) == ((1, [2]),)
