"""Batch sizing: the NSDI'17 AIMD controller, guarded by a robust fit of batch latency
against batch size, and a fixed size for `batch_size=N`."""

from __future__ import annotations

import math
from typing import Protocol

#: Batch sizes grouped in buckets 12.5% wide (every size its own bucket up to 8).
_BUCKET_RATIO = math.log(1.125)
#: Latencies remembered per bucket (the newest).
_PER_BUCKET = 8
#: A bucket not visited in this many batches no longer informs the fit.
_WINDOW = 256


class _Bucket:
    __slots__ = ("count", "latencies", "mean_n", "n_sum", "ns", "rep", "seen")

    def __init__(self) -> None:
        self.ns: list[int] = []
        self.latencies: list[float] = []
        self.n_sum = 0
        self.count = 0
        self.mean_n = 0.0
        self.rep = 0.0
        self.seen = 0

    def add(self, n: int, latency: float, now: int) -> None:
        ns, ls = self.ns, self.latencies
        if len(ls) >= _PER_BUCKET:
            self.n_sum -= ns.pop(0)
            ls.pop(0)
        ns.append(n)
        ls.append(latency)
        self.n_sum += n
        self.count = count = len(ls)
        self.mean_n = self.n_sum / count
        # The low median: one stall (a GC, a late GIL) among two or more cannot move it.
        self.rep = sorted(ls)[(count - 1) // 2]
        self.seen = now


def _key(n: int) -> int:
    return int(math.log(n) / _BUCKET_RATIO) if n > 8 else -n


class LatencyModel:
    """Batch latency against batch size: `a + b·n` fitted to recent batches, robustly.

    Recent batches are grouped by size (buckets 12.5% wide); each bucket is
    represented by the low median of its last 8 latencies, so a stall cannot move it
    unless it is the bucket's only sample; a least-squares line weighted by the
    samples runs through the buckets seen in the last 256 batches. Two fits are
    kept: over every bucket (`estimate`, `limit`: what growth may reach) and over
    buckets with two samples or more (`confirmed`: what a back-off may rest on). With
    one size seen, or a slope that is not positive, the estimate is proportional to n
    from the largest size seen: an upper bound for a model with a fixed cost.
    Each batch costs O(1): sums are updated for the one bucket that changed, and
    rebuilt (dropping stale buckets) every 64 batches.
    """

    __slots__ = (
        "_batches",
        "_buckets",
        "_conf",
        "_fit",
        "_fit_confirmed",
        "_sums",
        "_top",
        "_top_c",
        "largest",
    )

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._batches = 0
        self._sums = [0.0] * 5  # w, w·n, w·L, w·n², w·n·L over every bucket
        self._conf = [0.0] * 5  # the same over buckets of two samples or more
        self._top: _Bucket | None = None
        self._top_c: _Bucket | None = None
        self._fit: tuple[float, float] | None = None
        self._fit_confirmed: tuple[float, float] | None = None
        #: The largest batch size seen in the window.
        self.largest = 0

    def observe(self, n: int, latency: float) -> None:
        """Add a batch of n that took `latency` seconds."""
        if n < 1 or not latency >= 0.0 or math.isinf(latency):
            return
        self._batches += 1
        key = _key(n)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        else:
            _account(self._sums, self._conf, bucket, -1.0)
        bucket.add(n, latency, self._batches)
        _account(self._sums, self._conf, bucket, 1.0)
        if self._top is None or bucket.mean_n >= self._top.mean_n:
            self._top = bucket
        if bucket.count >= 2 and (self._top_c is None or bucket.mean_n >= self._top_c.mean_n):
            self._top_c = bucket
        if self._batches % 64 == 0:
            self._rebuild()
        self.largest = int(self._top.mean_n)
        self._fit = _line(self._sums, self._top)
        self._fit_confirmed = _line(self._conf, self._top_c)

    def _rebuild(self) -> None:
        oldest = self._batches - _WINDOW
        buckets = self._buckets
        for key in [k for k, b in buckets.items() if b.seen <= oldest]:
            del buckets[key]
        self._sums = [0.0] * 5
        self._conf = [0.0] * 5
        self._top = self._top_c = None
        for b in buckets.values():
            _account(self._sums, self._conf, b, 1.0)
            if self._top is None or b.mean_n > self._top.mean_n:
                self._top = b
            if b.count >= 2 and (self._top_c is None or b.mean_n > self._top_c.mean_n):
                self._top_c = b

    def estimate(self, n: int) -> float:
        """Expected seconds for a batch of n (0.0 before any batch); the proportional
        bound is not extrapolated past the largest size seen (admission and shedding
        rest on this: they must not refuse on a guess)."""
        fit = self._fit
        if fit is None:
            return 0.0
        if fit[0] == 0.0 and n > self.largest:
            n = max(1, self.largest)
        return max(0.0, fit[0] + fit[1] * n)

    def confirmed(self, n: int) -> float | None:
        """The estimate at n from confirmed buckets only (None without any)."""
        fit = self._fit_confirmed
        if fit is None:
            return None
        if fit[0] == 0.0 and self._top_c is not None and n > self._top_c.mean_n:
            n = max(1, int(self._top_c.mean_n))
        return max(0.0, fit[0] + fit[1] * n)

    def bucket_latency(self, n: int) -> float | None:
        """The low median of recent batches of about n, when two or more were seen."""
        b = self._buckets.get(_key(n))
        return b.rep if b is not None and b.count >= 2 else None

    def limit(self, latency: float, *, confirmed: bool = False) -> int | None:
        """The largest batch whose expected latency is under `latency` (None: no data)."""
        fit = self._fit_confirmed if confirmed else self._fit
        if fit is None:
            return None
        a, b = fit
        if b <= 0:
            return None
        return max(0, math.floor(min((latency - a) / b + 1e-9, 1e9)))

    def __repr__(self) -> str:
        fit = self._fit
        if fit is None:
            return "LatencyModel(no batches)"
        return f"LatencyModel({fit[0] * 1e3:.3f} ms + {fit[1] * 1e3:.4f} ms x n)"


def _account(sums: list[float], conf: list[float], b: _Bucket, sign: float) -> None:
    """Add (sign 1) or remove (sign -1) a bucket's weight in the fit's sums."""
    w = sign * b.count
    n = b.mean_n
    y = b.rep
    wn = w * n
    sums[0] += w
    sums[1] += wn
    sums[2] += w * y
    sums[3] += wn * n
    sums[4] += wn * y
    if b.count >= 2:
        conf[0] += w
        conf[1] += wn
        conf[2] += w * y
        conf[3] += wn * n
        conf[4] += wn * y


def _line(s: list[float], top: _Bucket | None) -> tuple[float, float] | None:
    """(a, b) of the weighted least-squares line, or the proportional bound."""
    w, sn, sy, snn, sny = s
    if top is None or w < 0.5:
        return None
    var = snn - sn * sn / w
    if var > 1e-9 * max(1.0, snn):
        b = (sny - sn * sy / w) / var
        if b > 0:
            return (sy - b * sn) / w, b
    n, y = top.mean_n, top.rep
    return 0.0, (y / n if n > 0 and y > 0 else 1e-9)


class BatchSizer(Protocol):
    """Decides how many queries a replica may take next, learning from batch latencies."""

    @property
    def max_batch(self) -> int:
        """The largest batch a replica may take now."""
        ...

    def observe(self, n: int, latency: float, queued: int = 0) -> int:
        """Record that a batch of `n` took `latency` seconds (`queued`: queries still
        waiting); return the new `max_batch`."""
        ...

    def estimate(self, n: int) -> float:
        """Expected seconds for a batch of n (0.0 before any batch)."""
        ...


class AIMD:
    """Additive increase, multiplicative decrease of the batch size against a latency budget,
    guarded by a robust fit of latency against batch size.

    With budget B and a batch of n that took L seconds (Clipper, NSDI'17, section 4.3):

    - a full batch (n >= max_batch) with L < 0.9 B grows the limit to n + 2 (during a
      slow start: to 2 n, but never past the size the fit expects to take 0.9 B);
    - 0.9 B <= L < B holds it (the hold band stops oscillation around B);
    - a back-off sets it to max(1, floor(0.9 n)) (or lower, to what the fit allows,
      but never below n / 2) when L >= B for 3 of the last 4 batches, or when
      L >= 0.9 B and both the recent batches of about n and the fit at n reach B.
      One slow batch alone (a stall the batch size does not explain) never shrinks
      the limit.

    A slow start runs from the first batch and again while a backlog of 3 full
    batches or more persists for 3 batches.
    """

    __slots__ = (
        "_backlog",
        "_backoff",
        "_budget",
        "_ceiling",
        "_hold",
        "_max_batch",
        "_overruns",
        "_step",
        "model",
        "slow_start",
    )

    #: Overruns among the last 4 batches that back off on their own.
    OVERRUNS = 3
    #: A backlog is this many full batches queued ...
    BACKLOG_BATCHES = 3
    #: ... for this many batches in a row.
    BACKLOG_PERSISTS = 3

    def __init__(
        self,
        budget: float,
        *,
        initial: int = 1,
        step: int = 2,
        backoff: float = 0.9,
        hold: float = 0.9,
        ceiling: int = 100_000,
    ) -> None:
        if not budget > 0:
            raise ValueError(f"AIMD budget must be positive seconds, got {budget!r}")
        if initial < 1 or ceiling < 1:
            raise ValueError("AIMD batch sizes start at 1 or more")
        if not 0 < backoff < 1 or not 0 < hold <= 1 or step < 1:
            raise ValueError("AIMD needs step >= 1, 0 < backoff < 1 and 0 < hold <= 1")
        self._budget = budget
        self._hold = hold
        self._max_batch = min(initial, ceiling)
        self._step = step
        self._backoff = backoff
        self._ceiling = ceiling
        self._overruns = 0  # bits: the last 4 batches, 1 = L >= B
        self._backlog = 0
        #: Whether growth is multiplicative now (bounded by the fit).
        self.slow_start = True
        #: Batch latency against batch size, from the batches observed.
        self.model = LatencyModel()

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def budget(self) -> float:
        """The latency budget B, in seconds."""
        return self._budget

    @budget.setter
    def budget(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"AIMD budget must be positive seconds, got {value!r}")
        self._budget = value

    def estimate(self, n: int) -> float:
        confirmed = self.model.confirmed(n)
        return confirmed if confirmed is not None else self.model.estimate(n)

    def observe(self, n: int, latency: float, queued: int = 0) -> int:
        if n < 1:
            return self._max_batch
        model = self.model
        model.observe(n, latency)
        budget = self._budget
        current = self._max_batch
        over = latency >= budget
        self._overruns = ((self._overruns << 1) | over) & 0b1111
        if self._back_off_now(n, latency):
            new = max(1, math.floor(self._backoff * n))
            fitted = model.limit(self._hold * budget, confirmed=True)
            if fitted is not None:  # lower, to what the fit allows, but by half at most
                new = max(1, n // 2, min(new, fitted))
            self._max_batch = min(self._ceiling, current, new)  # a back-off never raises it
            self._overruns = 0
            self._backlog = 0
            self.slow_start = False
            return self._max_batch
        if queued >= self.BACKLOG_BATCHES * current:
            self._backlog += 1
            if self._backlog >= self.BACKLOG_PERSISTS:
                self.slow_start = True
        else:
            self._backlog = 0
        if n >= current and latency < self._hold * budget:
            additive = n + self._step
            if self.slow_start:
                cap = model.limit(self._hold * budget)
                target = 2 * n if cap is None else min(2 * n, cap)
                if cap is not None and cap <= additive:
                    self.slow_start = False  # the fit's limit is reached
                new = max(additive, target)
            else:
                new = additive
            self._max_batch = min(self._ceiling, max(current, new))
        return self._max_batch

    def _back_off_now(self, n: int, latency: float) -> bool:
        """Repeated real overruns, or this batch not fast while the recent batches of
        about n and the fit at n are both at B."""
        if bin(self._overruns).count("1") >= self.OVERRUNS:
            return True
        if latency < self._hold * self._budget:
            return False  # the fit's older samples are contradicted
        measured = self.model.bucket_latency(n)
        if measured is None or measured < self._budget:
            return False
        fitted = self.model.confirmed(n)
        return fitted is not None and fitted >= self._budget

    def __repr__(self) -> str:
        return f"AIMD(budget={self._budget!r}, max_batch={self._max_batch})"


class FixedBatchSize:
    """A batch size that never changes (`batch_size=N`)."""

    __slots__ = ("_size", "model")

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive int, got {size!r}")
        self._size = size
        #: Batch latency against batch size (for admission estimates).
        self.model = LatencyModel()

    @property
    def max_batch(self) -> int:
        return self._size

    def observe(self, n: int, latency: float, queued: int = 0) -> int:
        self.model.observe(n, latency)
        return self._size

    def estimate(self, n: int) -> float:
        confirmed = self.model.confirmed(n)
        return confirmed if confirmed is not None else self.model.estimate(n)

    def __repr__(self) -> str:
        return f"FixedBatchSize({self._size})"
