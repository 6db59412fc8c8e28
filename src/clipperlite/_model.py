"""One deployed model version: its batcher, its replicas and its statistics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ._aimd import AIMD, FixedBatchSize
from ._backends import Replica, make_replica
from ._batching import Batcher, Query, ReplicaSlot
from ._clock import Clock
from ._types import Cause, Failure

logger = logging.getLogger("clipperlite")

#: The AIMD budget when no app links the model yet (seconds).
UNLINKED_SLO = 0.1
_MIN_BUDGET = 0.0005


def budget_for(slo: float, batch_wait: float) -> float:
    """The batch-latency budget B that lets queueing plus processing fit `slo` (seconds).

    With replicas pulling whole batches, a query that arrives just after a batch
    started waits for it (at most B) and then runs in the next one (at most B), and
    may first sit out the batch wait: 2 B + batch_wait <= SLO.
    """
    return max(_MIN_BUDGET, (slo - batch_wait) / 2.0)


class ModelVersion:
    """A version of a model that is deployed: replicas pulling from one EDF batcher."""

    def __init__(
        self,
        name: str,
        version: int | str,
        input_type: str,
        func: Callable[[list[Any]], Any],
        *,
        backend: str,
        batch_size: int | None,
        batch_wait: float,
        max_queue: int,
        clock: Clock,
        hang_timeout: float = 5.0,
    ) -> None:
        self.name = name
        #: A batch still running this long after the last deadline of its queries is hung.
        self.hang_after = hang_timeout
        self.version = version
        self.version_key = str(version)
        #: Tells apart two deployments of one version (set by the Clipper).
        self.deployment = 0
        self.input_type = input_type
        self.func = func
        self.backend = backend
        self.batch_size = batch_size
        self.sizer: AIMD | FixedBatchSize = (
            FixedBatchSize(batch_size)
            if batch_size is not None
            else AIMD(budget_for(UNLINKED_SLO, batch_wait), ceiling=max_queue)
        )
        self.batcher = Batcher(
            self.sizer,
            batch_wait=batch_wait,
            max_queue=max_queue,
            clock=clock,
            describe=f"{name}:{version}",
        )
        self.batch_wait = batch_wait
        self._replicas: list[tuple[Replica, ReplicaSlot, asyncio.Task[None]]] = []
        self._serial = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.abandoned = 0
        self.replaced = 0
        self.stopped = False
        self.clock = clock
        self.slo = UNLINKED_SLO
        self._watchdog: asyncio.Task[None] | None = None
        self._scaling = asyncio.Lock()
        self._retiring: list[tuple[Replica, ReplicaSlot, asyncio.Task[None]]] = []

    def __repr__(self) -> str:
        return f"<ModelVersion {self.name}:{self.version} replicas={self.num_replicas}>"

    @property
    def num_replicas(self) -> int:
        return self.batcher.active_replicas

    def set_slo(self, slo: float) -> None:
        """Re-derive the AIMD budget from the tightest SLO of the apps this model serves."""
        self.slo = slo
        if isinstance(self.sizer, AIMD):
            self.sizer.budget = budget_for(slo, self.batch_wait)

    def submit(self, q: Query) -> Failure | None:
        """Queue a query for this version, or say why it cannot be."""
        if self.stopped:
            return Failure(Cause.NO_REPLICA, "is not deployed (it was stopped)")
        return self.batcher.submit(q)

    async def _add_replica(self) -> None:
        self._serial += 1
        name = f"clipperlite:{self.name}:{self.version}:{self._serial}"
        replica = make_replica(self.backend, self.func, name)
        try:
            await replica.start()
        except BaseException:  # failed or cancelled: its thread or process must not linger
            await asyncio.shield(self._discard(replica))
            raise
        slot = ReplicaSlot(replica.run_batch, name)
        self.batcher.replicas.append(slot)
        task = asyncio.get_running_loop().create_task(self.batcher.serve(slot), name=name)
        task.add_done_callback(self._on_replica_exit)
        self._replicas.append((replica, slot, task))

    async def _discard(self, replica: Replica, grace: float = 1.0) -> None:
        if not await replica.stop(grace):
            self.abandoned += 1

    def _on_replica_exit(self, task: asyncio.Task[None]) -> None:
        entry = next((e for e in self._replicas if e[2] is task), None)
        if entry is None or self.stopped:
            return  # retired on purpose
        # A serve loop ended on its own (a bug, or a model's stray CancelledError before
        # Python 3.11): take it out of service and start another, so nobody waits on it.
        error = None if task.cancelled() else task.exception()
        logger.error("clipperlite: replica %s ended; replacing it", task.get_name(), exc_info=error)
        self._replicas.remove(entry)
        if entry[1] in self.batcher.replicas:
            self.batcher.replicas.remove(entry[1])
        self._retiring.append(entry)
        self.replaced += 1
        task.get_loop().create_task(
            self._restart(entry), name=f"clipperlite:{self.name}:{self.version}:restart"
        )

    async def _restart(self, entry: tuple[Replica, ReplicaSlot, asyncio.Task[None]]) -> None:
        async with self._scaling:
            if not self.stopped:
                await self._add_replica()
        if entry in self._retiring:
            self._retiring.remove(entry)
            if not await entry[0].stop(0.0):
                self.abandoned += 1

    async def _watch(self) -> None:
        """Replace replicas stuck in one batch far past every deadline it could serve."""
        while not self.stopped:
            await asyncio.sleep(max(0.05, self.hang_after / 4))
            now = self.clock()
            for entry in list(self._replicas):
                batch = entry[1].batch
                if batch and now - max(q.deadline for q in batch) > self.hang_after:
                    await self._replace(entry)

    async def _replace(self, entry: tuple[Replica, ReplicaSlot, asyncio.Task[None]]) -> None:
        replica, slot, task = entry
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
            Cause.DEADLINE, f"hung: still running {self.hang_after:.1f} s past the deadline"
        )
        for q in slot.batch or ():
            q.resolve(hung)
        self.replaced += 1
        self._retiring.append(entry)  # stop() finishes the job if this is cancelled
        try:
            async with self._scaling:
                if not self.stopped:
                    await self._add_replica()  # before the old one leaves: never none
        finally:
            if slot in self.batcher.replicas:
                self.batcher.replicas.remove(slot)
            task.cancel()
        clean = await replica.stop(0.0)
        if entry in self._retiring:
            self._retiring.remove(entry)
            if not clean:
                self.abandoned += 1

    async def set_num_replicas(self, n: int, grace: float) -> None:
        """Start or stop replicas until `n` run; with 0, queued queries get the default at once.

        Calls are applied one at a time, and a version stopped meanwhile starts nothing.
        """
        async with self._scaling:
            if self.stopped:
                return
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
            for _, slot, _ in doomed:
                slot.stopping = True
                self.batcher.replicas.remove(slot)
            self.batcher.wake_all()
            if n == 0:
                self.batcher.fail_queued(Failure(Cause.NO_REPLICA, "has no running replica"))
            await self._retire(doomed, grace)

    async def _retire(
        self, doomed: list[tuple[Replica, ReplicaSlot, asyncio.Task[None]]], grace: float
    ) -> None:
        if not doomed:
            return
        tasks = [t for _, _, t in doomed]
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        scaled = Failure(Cause.NO_REPLICA, "had its replica stopped (scaled down) mid-batch")
        for _, slot, task in doomed:
            if task in pending:
                for q in slot.batch or ():
                    q.resolve(scaled)
                task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.1)
        results = await asyncio.gather(
            *(r.stop(0.0 if pending else max(0.05, grace)) for r, _, _ in doomed)
        )
        self.abandoned += sum(1 for ok in results if not ok)

    async def stop(self, grace: float, failure: Failure) -> None:
        """Answer everything queued with `failure`, let running batches finish within
        `grace` seconds, then stop every replica (abandoning any stuck in the model)."""
        self.stopped = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.wait([self._watchdog])
        async with self._scaling:  # a scaling call in progress notices `stopped` first
            await self._stop(grace, failure)

    async def _stop(self, grace: float, failure: Failure) -> None:
        batcher = self.batcher
        batcher.close()
        batcher.fail_queued(failure)
        doomed, self._replicas = self._replicas + self._retiring, []
        self._retiring = []
        for _, slot, _ in doomed:
            slot.stopping = True
        loop = asyncio.get_running_loop()
        end = loop.time() + grace
        tasks = [t for _, _, t in doomed]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        batcher.fail_running(failure)
        for t in tasks:
            if not t.done():
                t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.1)
        left = max(0.05, end - loop.time())
        results = await asyncio.gather(*(r.stop(left) for r, _, _ in doomed))
        self.abandoned += sum(1 for ok in results if not ok)
        batcher.replicas.clear()

    def statistics(self) -> dict[str, Any]:
        """Plain counters and gauges for `metrics()`."""
        s = self.batcher.stats
        return {
            "batches": s.batches,
            "mean_batch_size": (s.items / s.batches) if s.batches else 0.0,
            "max_batch_size": self.sizer.max_batch,
            "batch_latency_micros": s.latency_ewma * 1e6,
            "queue_length": len(self.batcher.queue),
            "errors": s.errors,
            "retried_batches": s.retries,
            "expired_in_queue": s.expired,
            "cancelled_in_queue": s.cancelled,
            "rejected_queue_full": s.rejected,
            "rejected_would_miss": s.would_miss,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "num_replicas": self.num_replicas,
            "abandoned_threads": self.abandoned,
            "replaced_replicas": self.replaced,
        }
