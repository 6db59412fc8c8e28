"""The "process" backend: a model in a worker process of each replica's own, over pipes."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .._errors import WorkerDiedError, describe
from ._common import reject_options, started
from ._thread import ThreadReplica

logger = logging.getLogger("clipperlite")


class _ChildProcess:
    """A worker process running one model, spoken to over a pair of pipes.

    Started with `python -c` rather than multiprocessing so that the user's `__main__`
    is never re-imported; `func` travels cloudpickled. Called from the replica's own
    thread, so the blocking pipe reads never touch the event loop.
    """

    def __init__(self, payload: bytes, name: str) -> None:
        self._payload = payload
        self._name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn_in: Connection | None = None
        self._conn_out: Connection | None = None
        self.restarts = 0
        #: Set once the replica is being stopped: a worker killed then is not restarted.
        self.stopping = False
        #: The number of the last request, echoed by the worker in its reply.
        self._seq = 0

    def start(self) -> None:
        """Start the process and wait until it has loaded the model."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = "from clipperlite._backends._process import child_main; child_main()"
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._conn_out = Connection(to_child_w, readable=False)
        self._conn_in = Connection(from_child_r, writable=False)
        # The parent's import path, so a model defined in any module the parent can import
        # (a test file, a notebook's helper module) loads in the worker too.
        self._conn_out.send_bytes(pickle.dumps((list(sys.path), self._payload)))
        _, ok, value = self._receive()
        if not ok:
            self.close()
            raise value

    def _receive(self) -> tuple[int, bool, Any]:
        assert self._conn_in is not None and self._proc is not None
        try:
            data = self._conn_in.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._proc.wait(timeout=5)
            raise WorkerDiedError(f"worker process {self._name} exited with code {code}") from exc
        result: tuple[int, bool, Any] = pickle.loads(data)  # from our own child only
        return result

    def __call__(self, xs: list[Any]) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            self.restart()  # replace a worker that died while idle
        assert self._conn_out is not None
        self._seq += 1
        seq = self._seq
        try:
            payload = cloudpickle.dumps((seq, xs), protocol=pickle.HIGHEST_PROTOCOL)
            self._conn_out.send_bytes(payload)
            while True:
                got, ok, value = self._receive()
                if got == seq:
                    break
                # Not the reply to this request: a stray write (a process the model forked
                # and that did not _exit), never handed to a query.
                logger.warning(
                    "clipperlite: worker process %s sent a reply out of turn (%r, expected"
                    " %r); ignored",
                    self._name,
                    got,
                    seq,
                )
        except WorkerDiedError:
            self.close()  # reported first; restarted after (restart_if_dead)
            raise
        except (BrokenPipeError, OSError) as exc:
            self.close()
            raise WorkerDiedError(f"worker process {self._name} is gone: {exc}") from exc
        if ok:
            return value
        raise value

    @property
    def dead(self) -> bool:
        """Whether the worker is gone (and not yet replaced)."""
        return self._proc is None or self._proc.poll() is not None

    def restart(self) -> None:
        """Replace a dead worker (run after its death was reported, before the next batch)."""
        self.close()
        self.restarts += 1
        self.start()
        logger.info("clipperlite: worker process %s replaced", self._name)

    def restart_if_dead(self) -> None:
        """Replace the worker if it died, logging rather than raising when that fails
        (the next batch tries again)."""
        if not self.dead or self.stopping:
            return
        try:
            self.restart()
        except Exception:
            if not self.stopping:  # else it was killed on purpose while it started
                logger.exception("clipperlite: could not restart worker process %s", self._name)
            self.close()

    def kill(self) -> None:
        """Kill the process now, for good: it is not restarted (safe from any thread)."""
        self.stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self, grace: float = 0.0) -> None:
        """Ask the process to exit; kill it if it has not within `grace` seconds."""
        proc, self._proc = self._proc, None
        for conn in (self._conn_out, self._conn_in):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._conn_in = self._conn_out = None
        if proc is None:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _portable_error(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(describe(exc))
    return exc


def child_main() -> None:
    """Entry point of a worker process: load the model, then answer batches until EOF.

    Each reply carries the number of its request. A process the model forks and that
    returns from the model instead of exiting is not the worker: it leaves at once,
    writing nothing.
    """
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn_out = Connection(int(sys.argv[2]), readable=False)
    me = os.getpid()
    try:
        paths, payload = pickle.loads(conn_in.recv_bytes())
        sys.path[:0] = [p for p in paths if p not in sys.path]
        func = pickle.loads(payload)
    except Exception as exc:  # the model cannot be loaded here
        conn_out.send_bytes(pickle.dumps((0, False, _portable_error(exc))))
        return
    conn_out.send_bytes(pickle.dumps((0, True, None)))
    while True:
        try:
            seq, xs = pickle.loads(conn_in.recv_bytes())
        except EOFError:
            return
        try:
            reply = (seq, True, func(xs))
            if os.getpid() != me:
                os._exit(0)  # a fork of the model's that did not exit
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # a model's SystemExit must not end its worker
            if os.getpid() != me:
                os._exit(0)
            if not isinstance(exc, Exception):
                exc = RuntimeError(f"the model raised {describe(exc)}")
            data = pickle.dumps((seq, False, _portable_error(exc)))
        conn_out.send_bytes(data)


class ProcessReplica(ThreadReplica):
    """Runs a model in a worker process of its own (fed by a thread of the replica's own).

    A process that dies is reported first (the batch it was running gets the "worker
    died" default at once) and replaced after, before the next batch.
    """

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        try:
            payload = cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"the model cannot be sent to a worker process: {exc}") from exc
        self._child = _ChildProcess(payload, name)
        super().__init__(self._child, name)

    def _setup(self) -> None:
        self._child.start()

    def _teardown(self) -> None:
        self._child.close(1.0)

    def _after_batch(self) -> None:
        self._child.restart_if_dead()

    @property
    def restarts(self) -> int:
        return self._child.restarts

    def _force_stop(self) -> bool:
        self._child.kill()  # the thread is blocked on the pipe; killing the child frees it
        return True


class ProcessBackend:
    """Replicas as worker processes (for models that hold the GIL, hang or crash)."""

    name = "process"

    def __init__(self, **options: Any) -> None:
        reject_options(self.name, options)

    async def start_replica(self, func: Callable[[list[Any]], Any], *, name: str) -> ProcessReplica:
        """Start a worker process that loads `func` (cloudpickled)."""
        replica = ProcessReplica(func, name)
        return await started(replica, replica.start)  # type: ignore[no-any-return]
