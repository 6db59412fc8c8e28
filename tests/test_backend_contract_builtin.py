"""The backend contract (tests/backend_contract.py) against the built-in backends."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import clipperlite
from backend_contract import BackendContract, WorkerProcessContract
from clipperlite._backends import BUILTIN_BACKENDS


class TestThreadBackendContract(BackendContract):
    """The contract, on worker threads."""

    stuck_stop_result = False  # a thread stuck in its model is abandoned

    @pytest.fixture
    def backend(self) -> clipperlite.Backend:
        """The built-in thread backend."""
        backend: clipperlite.Backend = BUILTIN_BACKENDS["thread"]()
        return backend

    def leftover_workers(self) -> int:
        """Replica threads alive (named after their replica)."""
        return sum(1 for t in threading.enumerate() if t.name.startswith("contract:"))


class TestProcessBackendContract(BackendContract, WorkerProcessContract):
    """The contract, on worker processes."""

    stuck_stop_result = True  # a stuck worker process is killed

    @pytest.fixture
    def backend(self) -> clipperlite.Backend:
        """The built-in process backend."""
        backend: clipperlite.Backend = BUILTIN_BACKENDS["process"]()
        return backend

    @pytest.mark.xfail(
        reason="child_main catches Exception only, so a model's SystemExit ends the worker"
        " (reported as worker_died, then restarted) where thread and Ray contain it",
        strict=True,
    )
    @pytest.mark.anyio
    async def test_system_exit_is_contained(self, backend: clipperlite.Backend) -> None:
        """A model's SystemExit comes back as an Exception and does not end the replica."""
        await super().test_system_exit_is_contained(backend)

    @pytest.mark.xfail(
        reason="stop() kills the stuck child, but the replica thread then restarts a worker"
        " (_ChildProcess._replace) before it exits, which can outlast stop's 1 s allowance:"
        " stop then reports the replica abandoned (timing-dependent, hence not strict)",
        strict=False,
    )
    @pytest.mark.anyio
    async def test_stop_of_a_stuck_replica(
        self, backend: clipperlite.Backend, tmp_path: Path
    ) -> None:
        """A replica stuck in its model stops within its grace: abandoned or ended."""
        await super().test_stop_of_a_stuck_replica(backend, tmp_path)

    def leftover_workers(self) -> int:
        """This process's live worker children."""
        me = str(os.getpid())
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1].split()
            except OSError:
                continue
            if stat[1] == me and stat[0] != "Z":
                count += 1
        return count
