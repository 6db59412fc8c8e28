"""RayBackend against a real local Ray runtime: the backend contract, then the faults
through a real Clipper (actors killed, hung, stopped, scaled under load)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

import clipperlite  # noqa: E402
from backend_contract import BackendContract, WorkerProcessContract  # noqa: E402
from clipperlite.ray import RayBackend  # noqa: E402

pytestmark = [
    # Ray's own import-time and shutdown-time deprecation notices (not ours).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts actors in /proc"),
]


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One light local Ray runtime for the whole session (it takes seconds to start)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def live_actor_processes() -> list[int]:
    """PIDs of this machine's Ray workers holding a clipperlite replica actor (Ray titles an
    actor's process `ray::<class name>`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if cmdline.startswith(b"ray::ClipperliteReplica") and state != "Z":
            pids.append(int(entry))
    return pids


class TestRayBackendContract(BackendContract, WorkerProcessContract):
    """The backend contract, on Ray actors."""

    stuck_stop_result = True  # Ray kills a stuck actor

    @pytest.fixture
    def backend(self, ray_runtime: None) -> clipperlite.Backend:
        """A RayBackend on the session's runtime."""
        return RayBackend()

    def leftover_workers(self) -> int:
        """Replica actors alive on this machine."""
        return len(live_actor_processes())
