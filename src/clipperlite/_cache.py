"""The prediction cache: a bounded LRU of answers, plus the queries still in flight."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_MISS = object()


class PredictionCache(Generic[T]):
    """LRU of (model, version, input key) -> output, and key -> in-flight token.

    The in-flight table lets identical concurrent queries share one model call
    (single flight); the token is whatever the caller uses to wait (a queued query).
    `size=0` disables caching and coalescing alike.

    The LRU is an `OrderedDict` (hits move to the end, evictions pop the front, all in
    C): a miss and its insert cost about a quarter of `cachetools.LRUCache`'s, whose
    bookkeeping is Python code, on the path of every query.
    """

    __slots__ = ("_inflight", "_lru", "_size")

    MISS: Any = _MISS

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {size!r}")
        self._size = size
        self._lru: OrderedDict[Hashable, Any] | None = OrderedDict() if size else None
        self._inflight: dict[Hashable, T] = {}

    @property
    def enabled(self) -> bool:
        """Whether answers are kept at all."""
        return self._lru is not None

    @property
    def maxsize(self) -> int:
        return self._size

    def get(self, key: Hashable) -> Any:
        """The cached output for `key`, or `PredictionCache.MISS`."""
        lru = self._lru
        if lru is None:
            return _MISS
        out = lru.get(key, _MISS)
        if out is not _MISS:
            lru.move_to_end(key)
        return out

    def put(self, key: Hashable, output: Any) -> None:
        """Remember an output (evicting the least recently used when full)."""
        lru = self._lru
        if lru is not None:
            lru[key] = output
            lru.move_to_end(key)
            if len(lru) > self._size:
                lru.popitem(last=False)

    def pending(self, key: Hashable) -> T | None:
        """The token of an identical query still in flight, if any."""
        return self._inflight.get(key)

    def begin(self, key: Hashable, token: T) -> None:
        """Record that `key` is being computed under `token`."""
        if self._lru is not None:
            self._inflight[key] = token

    def end(self, key: Hashable, token: T) -> None:
        """Forget the in-flight entry of `key` if it is still `token`'s."""
        if self._inflight.get(key) is token:
            del self._inflight[key]

    def drop(self, predicate: Any) -> int:
        """Remove cached answers whose key matches `predicate(key)`; return how many."""
        if self._lru is None:
            return 0
        doomed = [k for k in self._lru if predicate(k)]
        for k in doomed:
            del self._lru[k]
        return len(doomed)

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)

    @property
    def inflight(self) -> int:
        """How many keys are being computed now."""
        return len(self._inflight)
