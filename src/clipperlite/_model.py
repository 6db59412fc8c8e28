"""One deployed model version: its batcher, its replicas and its statistics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

from . import _defaults
from ._aimd import AIMD, FixedBatchSize
from ._batching import Batcher, ReplicaSlot
from ._clock import Clock
from ._queue import Query
from ._types import Backend, BatchRecord, DefaultCause, Failure, ModelStatistics, Replica

logger = logging.getLogger("clipperlite")

_STOPPED = Failure(DefaultCause.NO_REPLICA, "is not deployed (it was stopped)")


class ServingReplica:
    """A replica in service: the backend's replica, its slot in the pull loop, the task
    running that loop."""

    __slots__ = ("replica", "slot", "task")

    def __init__(self, replica: Replica, slot: ReplicaSlot, task: asyncio.Task[None]) -> None:
        self.replica = replica
        self.slot = slot
        self.task = task


def budget_for(slo: float, batch_wait: float) -> float:
    """The batch-latency budget B that lets queueing plus processing fit `slo` (seconds).

    With replicas pulling whole batches, a query that arrives just after a batch
    started waits for it (at most B) and then runs in the next one (at most B), and
    may first sit out the batch wait: 2 B + batch_wait <= SLO.
    """
    return max(_defaults.MIN_BUDGET_S, (slo - batch_wait) / 2.0)


class ModelVersion:
    """A version of a model that is deployed: replicas pulling from one EDF batcher."""

    def __init__(
        self,
        name: str,
        version: int | str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        backend: Backend,
        backend_name: str,
        batch_size: int | None,
        batch_wait: float,
        max_queue: int,
        clock: Clock,
        hang_timeout: float = _defaults.HANG_TIMEOUT_S,
        cache: bool = True,
        history_size: int = _defaults.HISTORY_SIZE,
        serial: int = 0,
    ) -> None:
        self.name = name
        #: A batch still running this long after the last deadline of its queries is hung.
        self.hang_after = hang_timeout
        self.version = version
        self.version_key = str(version)
        #: The deployment's number: tells apart two deployments of one version (cache keys).
        self.serial = serial
        self.input_type = input_type
        self.func = func
        self.backend = backend
        self.backend_name = backend_name
        #: Whether its outputs may be cached.
        self.cache = cache
        #: Starts every cache key of this deployment (its serial), so a key of a validated
        #: numeric or bytes input is one bytes object: no tuple per query.
        self.cache_prefix = serial.to_bytes(8, "little", signed=True)
        self.batch_size = batch_size
        self.sizer: AIMD | FixedBatchSize = (
            FixedBatchSize(batch_size)
            if batch_size is not None
            else AIMD(budget_for(_defaults.UNLINKED_SLO_S, batch_wait), ceiling=max_queue)
        )
        self.batcher = Batcher(
            self.sizer,
            batch_wait=batch_wait,
            max_queue=max_queue,
            clock=clock,
            history_size=history_size,
            label=f"{name!r} version {version!r}",
        )
        self.batch_wait = batch_wait
        self._replicas: list[ServingReplica] = []
        self._replica_count = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.abandoned = 0
        self.replaced = 0
        self.stopped = False
        self.clock = clock
        self._watchdog: asyncio.Task[None] | None = None
        self._scaling = asyncio.Lock()
        self._wanted = 0
        #: Replicas being started by the backend (stop() waits for them, then cancels).
        self._starting: set[asyncio.Task[Replica]] = set()
        self._chores: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Task[None] | None = None
        self._retiring: list[ServingReplica] = []

    def __repr__(self) -> str:
        return f"<ModelVersion {self.name}:{self.version} replicas={self.num_replicas}>"

    @property
    def num_replicas(self) -> int:
        return self.batcher.active_replicas

    def set_slo(self, slo: float) -> None:
        """Re-derive the AIMD budget from the tightest SLO of the apps this model serves."""
        if isinstance(self.sizer, AIMD):
            self.sizer.budget = budget_for(slo, self.batch_wait)

    def cache_key(self, key: Hashable) -> Hashable:
        """The cache key of an input key for this deployment (a batch of a stopped
        deployment finishing late must not answer for a new one of the same version)."""
        if key.__class__ is bytes:
            return self.cache_prefix + key
        return (self.cache_prefix, key)

    def owns_key(self, k: Hashable) -> bool:
        """Whether a cache key is one of this deployment's."""
        if k.__class__ is bytes:
            return k.startswith(self.cache_prefix)
        return isinstance(k, tuple) and len(k) == 2 and k[0] == self.cache_prefix

    def submit(self, q: Query) -> Failure | None:
        """Queue a query for this version, or say why it cannot be."""
        if self.stopped:
            return _STOPPED
        return self.batcher.submit(q)

    async def _add_replica(self) -> None:
        """Start one replica and put it in service (unless the version stopped meanwhile)."""
        self._replica_count += 1
        name = f"clipperlite:{self.name}:{self.version}:{self._replica_count}"
        loop = asyncio.get_running_loop()
        # A task of its own, so stop() can cancel a start that outlives the grace period
        # (a backend's start_replica leaves nothing behind when cancelled).
        start = loop.create_task(self.backend.start_replica(self.func, name=name), name=name)
        self._starting.add(start)
        began = loop.time()
        # A slow start (a worker process or actor loading a big model) says what it waits for.
        slow = loop.call_later(
            _defaults.SLOW_START_LOG_S, self._log_slow_start, len(self._replicas) + 1
        )
        try:
            replica = await start
        except asyncio.CancelledError:
            me = asyncio.current_task()
            ours = me is not None and getattr(me, "cancelling", lambda: 0)() > 0
            if self.stopped and not ours:  # stop() cancelled the start, not our caller
                raise RuntimeError(
                    "the model version was stopped while a replica started"
                ) from None
            raise
        finally:
            self._starting.discard(start)
            slow.cancel()
        if loop.time() - began >= _defaults.SLOW_START_LOG_S:
            logger.info(
                "deploying model %r version %r: replica %d of %d ready after %.1f s",
                self.name,
                self.version,
                len(self._replicas) + 1,
                max(self._wanted, len(self._replicas) + 1),
                loop.time() - began,
            )
        if self.stopped:  # stop() has come and gone while this one started
            await self._discard(replica)
            return
        slot = ReplicaSlot(replica.run_batch, name)
        self.batcher.replicas.append(slot)
        task = loop.create_task(self.batcher.serve(slot), name=name)
        task.add_done_callback(self._on_replica_exit)
        self._replicas.append(ServingReplica(replica, slot, task))

    def _log_slow_start(self, index: int) -> None:
        logger.info(
            "deploying model %r version %r: starting replica %d of %d (%s backend) ...",
            self.name,
            self.version,
            index,
            max(self._wanted, index),
            self.backend_name,
        )

    async def _discard(self, replica: Replica, grace: float = _defaults.REPLICA_STOP_S) -> None:
        if not await replica.stop(grace):
            self.abandoned += 1

    async def _top_up(self) -> None:
        """Under the scaling lock: start replicas until the wanted number run again."""
        async with self._scaling:
            try:
                while not self.stopped and len(self._replicas) < self._wanted:
                    await self._add_replica()
            except Exception:
                logger.exception("clipperlite: could not start a replica of %s", self)

    def _on_replica_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopped:
            return  # we cancelled it (a stop, a scale-down, a replacement, loop teardown)
        entry = next((e for e in self._replicas if e.task is task), None)
        if entry is None:
            return
        # A serve loop ended on its own (a bug): take it out of service and start another.
        logger.error(
            "clipperlite: replica %s ended; replacing it",
            task.get_name(),
            exc_info=task.exception(),
        )
        self._replicas.remove(entry)
        if entry.slot in self.batcher.replicas:
            self.batcher.replicas.remove(entry.slot)
        self.replaced += 1
        self._spawn(self._retire_one(entry, replace=True), "restart")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"clipperlite:{self.name}:{self.version}:{what}"
        )
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _retire_one(self, entry: ServingReplica, *, replace: bool) -> None:
        """Stop one replica taken out of service (stop() finishes this if cancelled),
        first starting its replacement when asked to."""
        replica, slot, task = entry.replica, entry.slot, entry.task
        self._retiring.append(entry)
        try:
            if replace:
                await self._top_up()  # before the old one leaves: never none
                logger.info("clipperlite: replica %s of %s replaced", slot.name, self)
        finally:
            if slot in self.batcher.replicas:
                self.batcher.replicas.remove(slot)
            task.cancel()
        clean = await replica.stop(0.0)
        if entry in self._retiring:
            self._retiring.remove(entry)
            if not clean:
                self.abandoned += 1

    async def _watch(self) -> None:
        """Replace replicas stuck in one batch far past every deadline it could serve."""
        while not self.stopped:
            await asyncio.sleep(max(0.05, self.hang_after / 4))
            now = self.clock()
            for entry in list(self._replicas):
                batch = entry.slot.batch
                if batch and now - max(q.deadline for q in batch) > self.hang_after:
                    self._replace(entry)

    def _replace(self, entry: ServingReplica) -> None:
        slot = entry.slot
        if entry not in self._replicas:
            return
        logger.warning(
            "clipperlite: replica %s is still in a batch %.1f s past its deadlines; replacing it",
            slot.name,
            self.hang_after,
        )
        self._replicas.remove(entry)
        slot.stopping = True
        hung = Failure(
            DefaultCause.DEADLINE, f"hung: still running {self.hang_after:.1f} s past the deadline"
        )
        for q in slot.batch or ():
            q.resolve(hung)
        self.replaced += 1
        self._spawn(self._retire_one(entry, replace=True), "replace")

    async def set_num_replicas(self, n: int, grace: float) -> None:
        """Start or stop replicas until `n` run; with 0, queued queries get the default at once.

        Calls are applied one at a time, and a version stopped meanwhile starts nothing.
        """
        async with self._scaling:
            if self.stopped:
                return
            self._wanted = n
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().create_task(
                    self._watch(), name=f"clipperlite:{self.name}:{self.version}:watchdog"
                )
            while len(self._replicas) < n and not self.stopped:
                await self._add_replica()
            if self.stopped:
                return  # stop() retires whatever was started
            doomed = self._replicas[n:]
            del self._replicas[n:]
            for e in doomed:
                e.slot.stopping = True
                self.batcher.replicas.remove(e.slot)
            self.batcher.wake_all()
            if n == 0:
                self.batcher.fail_queued(Failure(DefaultCause.NO_REPLICA, "has no running replica"))
            self._retiring.extend(doomed)  # stop() takes over if it comes meanwhile
            await self._retire(doomed, grace)

    async def _retire(self, doomed: list[ServingReplica], grace: float) -> None:
        if not doomed:
            return
        tasks = [e.task for e in doomed]
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        scaled = Failure(DefaultCause.NO_REPLICA, "had its replica stopped (scaled down) mid-batch")
        for e in doomed:
            if e.task in pending:
                for q in e.slot.batch or ():
                    q.resolve(scaled)
                e.task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.1)
        mine = [e for e in doomed if e in self._retiring]  # stop() may have taken the rest
        for e in mine:
            self._retiring.remove(e)
        results = await asyncio.gather(
            *(e.replica.stop(0.0 if e.task in pending else max(0.05, grace)) for e in mine)
        )
        self.abandoned += sum(1 for ok in results if not ok)

    async def stop(self, grace: float, failure: Failure) -> None:
        """Answer everything queued with `failure`, let running batches finish within
        `grace` seconds, then stop every replica (abandoning any stuck in the model).
        Idempotent: a second call waits for the first."""
        await asyncio.shield(self.stop_task(grace, failure))

    def stop_task(self, grace: float, failure: Failure) -> asyncio.Task[None]:
        """The task stopping this version (started by the first call): it runs to its end
        whoever stops waiting for it."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(
                self._stop(grace, failure), name=f"clipperlite:{self.name}:{self.version}:stop"
            )
        return self._stopping

    async def _stop(self, grace: float, failure: Failure) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        self.stopped = True
        batcher = self.batcher
        batcher.close()
        batcher.fail_queued(failure)
        if self._watchdog is not None:
            self._watchdog.cancel()
        for chore in list(self._chores):
            chore.cancel()
        # Replicas still starting: give them until the grace period ends, then cancel the
        # rest (a cancelled start_replica stops what it started).
        if self._starting:
            starting = list(self._starting)
            await asyncio.wait(starting, timeout=max(0.0, end - loop.time()))
            for start in starting:
                start.cancel()
            await asyncio.wait(starting)
        doomed, self._replicas = self._replicas + self._retiring, []
        self._retiring = []
        for e in doomed:
            e.slot.stopping = True
        tasks = [e.task for e in doomed]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, end - loop.time()))
        batcher.fail_running(failure)
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.1)
        left = max(0.05, end - loop.time())
        results = await asyncio.gather(
            *(e.replica.stop(0.0 if e.task in pending else left) for e in doomed)
        )
        self.abandoned += sum(1 for ok in results if not ok)
        batcher.replicas.clear()

    def statistics(self, *, is_current: bool) -> ModelStatistics:
        """A frozen snapshot of this version's figures."""
        s = self.batcher.stats
        return ModelStatistics(
            name=self.name,
            version=self.version,
            is_current=is_current,
            stopped=self.stopped,
            backend=self.backend_name,
            num_replicas=self.num_replicas,
            batches=s.batches,
            items=s.items,
            mean_batch_size=(s.items / s.batches) if s.batches else 0.0,
            max_batch_size=self.sizer.max_batch,
            batch_latency_micros=self.sizer.estimate(self.sizer.max_batch) * 1e6,
            batch_budget_micros=(self.sizer.budget * 1e6 if isinstance(self.sizer, AIMD) else None),
            queue_length=len(self.batcher.queue),
            errors=s.errors,
            retried_batches=s.retries,
            expired_in_queue=s.expired,
            cancelled_in_queue=s.cancelled,
            rejected_queue_full=s.rejected,
            rejected_would_miss=s.would_miss,
            cache_hits=self.cache_hits,
            cache_misses=self.cache_misses,
            abandoned_threads=self.abandoned,
            replaced_replicas=self.replaced,
            batch_latency=s.latency_histogram.export(),
            batch_size=s.size_histogram.export(),
        )

    def history(self) -> list[BatchRecord]:
        """The recent batches, oldest first (a copy)."""
        return list(self.batcher.history)
