"""Every default value of clipperlite, once, with the reason for it and what chose it."""

from __future__ import annotations

#: Cached predictions kept (LRU). Clipper's cache held a few thousand entries; 10,000
#: costs a few MB for typical inputs (benchmarks/memory.py: 41 -> 51 MB RSS when full).
CACHE_SIZE = 10_000

#: Bytes of keys and outputs the cache may hold (estimated: numpy nbytes, len of bytes and
#: str). 256 MiB: an image service's 1 MB inputs keep ~250 answers instead of the 10,000
#: that CACHE_SIZE alone would let fill ~10 GB, while small numeric inputs (a few hundred
#: bytes an entry) never reach it and stay bounded by CACHE_SIZE.
CACHE_MAX_BYTES = 256 * 1024 * 1024

#: Seconds `stop()` lets running batches finish: long enough for any batch that fits an
#: SLO of a second, short enough that a service restart is not held up.
SHUTDOWN_GRACE_S = 3.0

#: A replica still in one batch this many seconds past its queries' last deadline is
#: hung and replaced: far beyond any SLO, so a slow but healthy batch is never cut.
HANG_TIMEOUT_S = 5.0

#: Batches remembered per model version for `history()`: ~10 s of a busy model, what a
#: plot shows; each record is a small slotted object.
HISTORY_SIZE = 1000

#: Microseconds a short batch may wait for more queries. 0: a replica takes what is
#: queued at once; benchmarks/batch_wait.py shows no gain from waiting under load (the
#: queue fills while the previous batch runs), only added latency when idle.
BATCH_WAIT_MICROS = 0.0

#: A model's queue bound: large enough never to limit AIMD in normal operation (the
#: largest batches measured are a few hundred), small enough to bound memory.
MAX_QUEUE = 10_000

#: `create_endpoint`'s SLO: the default of Clipper's own `create_endpoint` (3 s), a
#: generous objective for a first endpoint that the user tightens.
ENDPOINT_SLO_MICROS = 3_000_000

#: The selection policy of an app registered without one: Exp3, as in Clipper.
POLICY = "exp3"

#: Contexts (per-user policy states) kept per app, least recently used dropped: a
#: state of a few floats each, so 10,000 bound memory to about a MB per app.
MAX_CONTEXTS = 10_000

#: The AIMD budget (seconds) of a model no app links yet: it is not serving anyone, so
#: any modest value; it is re-derived from the apps' SLOs when one links it.
UNLINKED_SLO_S = 0.1

#: The smallest AIMD budget (seconds): below the event loop's timer resolution (~1 ms)
#: budgets mean nothing.
MIN_BUDGET_S = 0.0005

#: Seconds a replica's stop waits for a thread to end after its last batch when no grace
#: is asked for (a scale-down or replacement).
REPLICA_STOP_S = 1.0

#: Seconds between two logged exceptions of one model version (the first is logged at
#: once; those in between are counted in the next): a model failing on every batch
#: writes one traceback per 10 s, not thousands.
ERROR_LOG_INTERVAL_S = 10.0

#: Exp4's default learning-rate schedule (a weight is multiplied by exp(-eta * loss) per
#: feedback): eta = max(EXP4_MIN_ETA, EXP4_RATE_SCALE * sqrt(ln K / (1 + L))), L being the
#: loss the ensemble has paid so far. Scaling the rate by that loss (the "self-confident"
#: tuning of Auer, Cesa-Bianchi and Gentile, 2002) makes it large where the ensemble is
#: rarely wrong, so the weights separate within the first images (digits), and small where
#: the models err often and about as much, so they keep voting (the CIFAR-style ensemble).
#: The scale is chosen by benchmarks/selection.py ("2b") on tuning data only (digits
#: splits 10-14, CIFAR-style seeds 0-2; judged on others): the best worst-task margin over
#: the best single model among constant rates and scales; see
#: docs/concepts/selection.md, "Choosing Exp4's learning rate".
EXP4_RATE_SCALE = 0.75

#: The schedule's floor: the old constant rate. Once the schedule reaches it, Exp4 learns
#: as a constant-rate Exp4 does, so recovery after a model breaks does not slow down with
#: uptime (without it: 484 queries after 20,000 good ones instead of ~200). It is fixed by
#: that reason, not tuned: on the tuning data it changes no figure at scales 0.75 to 2.
EXP4_MIN_ETA = 0.1

#: Predictions remembered per app for the feedback join (which model answered an
#: input, and with what probability, keyed by context and a hash of the input key):
#: feedback usually follows its prediction closely, and a record is a few small objects.
SERVED_RECORDS = 4096

#: Seconds after which a replica still starting is logged as slow (at INFO), with what it
#: waits for: long enough that ordinary thread starts stay quiet.
SLOW_START_LOG_S = 1.0

#: Seconds between the event loop's heartbeats (how a flood of queries is noticed):
#: 200 cheap callbacks a second, fine-grained enough for SLOs of 20 ms and more.
HEARTBEAT_S = 0.005

#: A query is shed at entry (a `would_miss` default, explained) when the event loop is
#: behind by more than this share of its SLO: the loop has been kept from every timer
#: and batch that long, so the query would wait out much of its SLO before its first
#: batch. Measured with the floods of tests/test_flood.py: a 20k-query `gather` at a
#: 100 ms SLO used to end every query as a deadline default after ~250 ms each, 612 ms
#: in all; now each is shed at once, 300-400 ms in all; a 2,000-query burst, which the
#: loop absorbs in time, is not shed at 0.5 (it was, in part, at 0.25).
SHED_LAG_SHARE = 0.5
