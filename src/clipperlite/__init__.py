"""clipperlite: Clipper's low-latency prediction serving as a library you import.

General layout
--------------
Imports go down the layers only; files in one layer do not import each other. The
path of one query reads in file order, top down:

7 facade        _clipper.py           the `Clipper`: lifecycle, the async calls
6 query         _query_processor.py   the path of one query and of one feedback
5 tables        _registry.py          apps, models, links, versions, every configuration rule
4 model         _model.py             one deployed version: its batcher, replicas, statistics
3 moving parts  _batching.py          the pull loop over a version's queue
                _backends/            where `func` runs: one file per backend
2 pure logic    _queue.py             the EDF queue of `Query` records
                _aimd.py              batch sizing (AIMD)
                _selection.py         policies (Exp3, Exp4)
                _cache.py             LRU cache with single flight
                _inputs.py            input types, validation and cache keys
                _stats.py             bounded histograms
                _timers.py            one timer for many deadlines
1 base          _types.py             records (Prediction, statistics) and protocols (Backend)
                _errors.py            the error tree
                _clock.py             the clock
                _defaults.py          every default, with the reason for its value

A query: `Clipper.predict` validates x (`_inputs`), then `QueryProcessor.answer`
asks the app's policy (`_selection`), looks in the cache (`_cache`), or queues a
`Query` (`_queue`) on the current `ModelVersion` (`_model`), whose `Batcher`
(`_batching`) hands batches sized by `_aimd` to a replica of its backend
(`_backends`); the deadline timer (`_timers`) answers the late ones with the default.

Extras, on the public API only: `testing/`, `http/`, `prometheus.py`, `ray.py`,
`plotting.py`, `demo.py`, `__main__.py`.
"""

from __future__ import annotations

from ._clipper import Clipper
from ._errors import (
    AlreadyExistsError,
    ClipperClosedError,
    ClipperError,
    InvalidInputError,
    UnknownApplicationError,
    UnknownModelError,
    WorkerDiedError,
)
from ._selection import Exp3, Exp4, SelectionPolicy
from ._types import (
    AppStatistics,
    Backend,
    BatchRecord,
    BatchResult,
    CacheStatistics,
    ClipperStatistics,
    DefaultCause,
    HistogramStatistics,
    ModelStatistics,
    Prediction,
    Replica,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "AppStatistics",
    "Backend",
    "BatchRecord",
    "BatchResult",
    "CacheStatistics",
    "Clipper",
    "ClipperClosedError",
    "ClipperError",
    "ClipperStatistics",
    "DefaultCause",
    "Exp3",
    "Exp4",
    "HistogramStatistics",
    "InvalidInputError",
    "ModelStatistics",
    "Prediction",
    "Replica",
    "SelectionPolicy",
    "UnknownApplicationError",
    "UnknownModelError",
    "WorkerDiedError",
]

for _name in __all__:
    globals()[_name].__module__ = "clipperlite"
del _name
