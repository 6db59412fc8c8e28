"""The prediction cache: a bounded LRU of answers, plus the queries still in flight."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import numpy as np

from ._types import ATOMIC, copier

T = TypeVar("T")

_MISS = object()

#: The estimated bytes of a value that is not an array, bytes or str (a number, a small
#: object): about what CPython spends on one.
SMALL_BYTES = 64
#: Items of a list or tuple looked at to estimate its size (the rest are taken alike).
_SAMPLE = 16


def size_of(value: Any, depth: int = 0) -> int:
    """An estimate of the bytes `value` holds: numpy `nbytes`, the `len` of bytes and
    str, the items of lists and tuples (sampled), a small constant for anything else.
    Cheap on purpose: it runs once per cached answer."""
    t = type(value)
    if t is bytes or t is str or t is bytearray:
        return len(value) + SMALL_BYTES
    if t is np.ndarray:
        return int(value.nbytes) + SMALL_BYTES
    if (t is tuple or t is list) and depth < 4:
        n = len(value)
        if n <= _SAMPLE:
            return SMALL_BYTES + sum(size_of(v, depth + 1) for v in value)
        sample = sum(size_of(value[i], depth + 1) for i in range(_SAMPLE))
        return SMALL_BYTES + sample * n // _SAMPLE
    return SMALL_BYTES


class PredictionCache(Generic[T]):
    """LRU of (model, version, input key) -> output, and key -> in-flight token.

    Bounded twice: at most `size` answers, and at most `max_bytes` estimated bytes of
    keys and outputs together (`size_of`), so large inputs such as images cannot fill
    memory. The in-flight table lets identical concurrent queries share one model call
    (single flight); the token is whatever the caller uses to wait (a queued query).
    `size=0` disables caching and coalescing alike.

    The LRU is an `OrderedDict` of outputs with a running byte total: hits move to the
    end and evictions pop the front, in C; a miss and its insert cost about a quarter
    of `cachetools.LRUCache`'s, whose bookkeeping is Python code, on the path of every
    query. Each entry's bytes live in a plain dict beside it rather than in a tuple with
    the output: a tuple per answer is one more object for the garbage collector, and
    under load the collections it adds measurably (benchmarks/capacity.py) stall the
    loop.
    """

    __slots__ = ("_bytes", "_copiers", "_inflight", "_lru", "_max_bytes", "_size", "_sizes")

    MISS: Any = _MISS

    def __init__(self, size: int, max_bytes: int | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {size!r}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(f"cache_max_bytes must be an int >= 1, got {max_bytes!r}")
        self._size = size
        self._max_bytes = max_bytes if max_bytes is not None else 2**62
        self._lru: OrderedDict[Hashable, Any] | None = OrderedDict() if size else None
        self._sizes: dict[Hashable, int] = {}
        #: How to copy each mutable entry for a caller (entries not here are shared).
        self._copiers: dict[Hashable, Callable[[Any], Any]] = {}
        self._bytes = 0
        self._inflight: dict[Hashable, T] = {}

    @property
    def enabled(self) -> bool:
        """Whether answers are kept at all."""
        return self._lru is not None

    @property
    def maxsize(self) -> int:
        return self._size

    @property
    def max_bytes(self) -> int:
        """The bound on the estimated bytes of keys and outputs."""
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        """The estimated bytes of the keys and outputs cached now."""
        return self._bytes

    def get(self, key: Hashable) -> Any:
        """The cached output for `key`, or `PredictionCache.MISS`."""
        lru = self._lru
        if lru is None:
            return _MISS
        entry: Any = lru.get(key, _MISS)
        if entry is not _MISS:
            lru.move_to_end(key)
            if type(entry) in ATOMIC:
                return entry
            copy = self._copiers.get(key)
            return entry if copy is None else copy(entry)
        return entry

    def put(self, key: Hashable, output: Any) -> None:
        """Remember an output, evicting the least recently used while either bound is
        passed; an answer bigger than the whole byte bound is not kept."""
        lru = self._lru
        if lru is None:
            return
        sizes = self._sizes
        copiers = self._copiers
        nbytes = size_of(key) + size_of(output)
        old = sizes.pop(key, None)
        if old is not None:
            del lru[key]
            copiers.pop(key, None)
            self._bytes -= old
        if nbytes > self._max_bytes:
            return
        copy = None if type(output) in ATOMIC else copier(output)
        if copy is None:
            lru[key] = output
        else:  # the caller keeps the original, free to edit it; each hit gets a copy
            lru[key] = copy(output)
            copiers[key] = copy
        sizes[key] = nbytes
        self._bytes += nbytes
        while len(lru) > self._size or self._bytes > self._max_bytes:
            gone = lru.popitem(last=False)[0]
            self._bytes -= sizes.pop(gone)
            copiers.pop(gone, None)

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
            self._bytes -= self._sizes.pop(k)
            self._copiers.pop(k, None)
        return len(doomed)

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)

    @property
    def inflight(self) -> int:
        """How many keys are being computed now."""
        return len(self._inflight)
