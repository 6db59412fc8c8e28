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
        self._wanted = 0
        self._starting: set[Replica] = set()
        self._chores: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Task[None] | None = None
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
        """Start one replica and put it in service (unless the version stopped meanwhile)."""
        self._serial += 1
        name = f"clipperlite:{self.name}:{self.version}:{self._serial}"
        replica = make_replica(self.backend, self.func, name)
        self._starting.add(replica)
        try:
            await replica.start()
        except BaseException:  # failed or cancelled: its thread or process must not linger
            await asyncio.shield(self._discard(replica))
            raise
        finally:
            self._starting.discard(replica)
        if self.stopped:  # stop() has come and gone while this one started
            await self._discard(replica)
            return
        slot = ReplicaSlot(replica.run_batch, name)
        self.batcher.replicas.append(slot)
        task = asyncio.get_running_loop().create_task(self.batcher.serve(slot), name=name)
        task.add_done_callback(self._on_replica_exit)
        self._replicas.append((replica, slot, task))

    async def _discard(self, replica: Replica, grace: float = 1.0) -> None:
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
        entry = next((e for e in self._replicas if e[2] is task), None)
        if entry is None:
            return
        # A serve loop ended on its own (a bug): take it out of service and start another.
        logger.error(
            "clipperlite: replica %s ended; replacing it",
            task.get_name(),
            exc_info=task.exception(),
        )
        self._replicas.remove(entry)
        if entry[1] in self.batcher.replicas:
            self.batcher.replicas.remove(entry[1])
        self.replaced += 1
        self._spawn(self._retire_one(entry, replace=True), "restart")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"clipperlite:{self.name}:{self.version}:{what}"
        )
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _retire_one(
        self, entry: tuple[Replica, ReplicaSlot, asyncio.Task[None]], *, replace: bool
    ) -> None:
        """Stop one replica taken out of service (stop() finishes this if cancelled),
        first starting its replacement when asked to."""
        replica, slot, task = entry
        self._retiring.append(entry)
        try:
            if replace:
                await self._top_up()  # before the old one leaves: never none
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
                batch = entry[1].batch
                if batch and now - max(q.deadline for q in batch) > self.hang_after:
                    self._replace(entry)

    def _replace(self, entry: tuple[Replica, ReplicaSlot, asyncio.Task[None]]) -> None:
        slot = entry[1]
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
            for _, slot, _ in doomed:
                slot.stopping = True
                self.batcher.replicas.remove(slot)
            self.batcher.wake_all()
            if n == 0:
                self.batcher.fail_queued(Failure(Cause.NO_REPLICA, "has no running replica"))
            self._retiring.extend(doomed)  # stop() takes over if it comes meanwhile
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
        mine = [e for e in doomed if e in self._retiring]  # stop() may have taken the rest
        for e in mine:
            self._retiring.remove(e)
        results = await asyncio.gather(
            *(r.stop(0.0 if t in pending else max(0.05, grace)) for r, _, t in mine)
        )
        self.abandoned += sum(1 for ok in results if not ok)

    async def stop(self, grace: float, failure: Failure) -> None:
        """Answer everything queued with `failure`, let running batches finish within
        `grace` seconds, then stop every replica (abandoning any stuck in the model).
        Idempotent: a second call waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(
                self._stop(grace, failure), name=f"clipperlite:{self.name}:{self.version}:stop"
            )
        await asyncio.shield(self._stopping)

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
        # Replicas still starting: give them until the grace period ends, then force them.
        if self._starting:
            for _ in range(int(grace / 0.01) + 1):
                if not self._starting or loop.time() >= end:
                    break
                await asyncio.sleep(0.01)
            await asyncio.gather(*(r.stop(0.0) for r in list(self._starting)))
        doomed, self._replicas = self._replicas + self._retiring, []
        self._retiring = []
        for _, slot, _ in doomed:
            slot.stopping = True
        tasks = [t for _, _, t in doomed]
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
            *(r.stop(0.0 if t in pending else left) for r, _, t in doomed)
        )
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
