"""The "process" backend: a model in a worker process of each replica's own, over pipes."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .._errors import WorkerDiedError, describe
from ._common import reject_options, started
from ._thread import ThreadReplica

logger = logging.getLogger("clipperlite")

#: A reply: the number of its request, whether the batch ran, and then the outputs, or
#: the error with the text of its traceback in the worker (None when it could not be told).
_Reply = tuple[int, bool, Any]


class _RemoteTraceback(Exception):
    """The traceback of an error in a worker process, as text: set as the `__cause__` of
    that error in the parent, so its log shows the model's own frames (as
    `concurrent.futures.process` does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _remote_error(value: tuple[BaseException, str | None]) -> BaseException:
    """The error of a failed reply, with its worker-side traceback as its cause."""
    error, text = value
    if text is not None:
        error.__cause__ = _RemoteTraceback(text)
    return error


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
        #: The number of the last request (counted from 1 in each worker process), echoed
        #: by the worker in its reply.
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
        self._seq = 0  # the worker counts the requests it receives, for one it cannot load
        # The parent's import path, so a model defined in any module the parent can import
        # (a test file, a notebook's helper module) loads in the worker too.
        self._conn_out.send_bytes(pickle.dumps((list(sys.path), self._payload)))
        _, ok, value = self._receive()
        if not ok:
            self.close()
            raise _remote_error(value)

    def _receive(self) -> _Reply:
        assert self._conn_in is not None and self._proc is not None
        try:
            data = self._conn_in.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._proc.wait(timeout=5)
            raise WorkerDiedError(f"worker process {self._name} exited with code {code}") from exc
        result: _Reply = pickle.loads(data)  # from our own child only
        return result

    def __call__(self, xs: list[Any]) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            self.restart()  # replace a worker that died while idle
        assert self._conn_out is not None
        seq = self._seq + 1
        try:
            # cloudpickle, not pickle: an instance of a class defined in `__main__` pickles
            # by reference with pickle, and the worker (whose `__main__` is not the
            # parent's) could not load it.
            payload = cloudpickle.dumps((seq, xs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # not sent, so not counted by the worker
            raise RuntimeError(
                f"the inputs could not be sent to worker process {self._name}: {describe(exc)}"
            ) from exc
        self._seq = seq
        try:
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
        raise _remote_error(value)

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


def _dumps(obj: Any) -> bytes:
    """`obj` pickled for the parent: with pickle (fast), else with cloudpickle, which sends
    by value what pickle cannot find by name (a class from the user's `__main__`, rebuilt
    here from the model's payload). Either loads with `pickle.loads`."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def _traceback_text(exc: BaseException) -> str | None:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # reporting a failure must not fail
        return None


def _error_reply(seq: int, error: BaseException, raised: BaseException) -> bytes:
    """The reply saying that request `seq` failed with `error`, carrying the traceback of
    `raised` (the model's own frames). An error that cannot be rebuilt in the parent
    travels as a RuntimeError describing it."""
    text = _traceback_text(raised)
    try:
        data = _dumps((seq, False, (error, text)))
        pickle.loads(data)  # it must load on the other side too
    except Exception:
        data = pickle.dumps((seq, False, (RuntimeError(describe(error)), text)))
    return data


def child_main() -> None:
    """Entry point of a worker process: load the model, then answer batches until EOF.

    Each reply carries the number of its request (for a request that cannot be loaded,
    its count among those received, which is the same). A process the model forks and
    that returns from the model instead of exiting is not the worker: it leaves at once,
    writing nothing. Nothing a request, the model or its outputs do ends the worker.
    """
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn_out = Connection(int(sys.argv[2]), readable=False)
    me = os.getpid()
    try:
        paths, payload = pickle.loads(conn_in.recv_bytes())
        sys.path[:0] = [p for p in paths if p not in sys.path]
        func = pickle.loads(payload)
    except Exception as exc:  # the model cannot be loaded here
        conn_out.send_bytes(_error_reply(0, exc, exc))
        return
    conn_out.send_bytes(pickle.dumps((0, True, None)))
    received = 0
    while True:
        try:
            data = conn_in.recv_bytes()
        except EOFError:
            return
        received += 1
        try:
            seq, xs = pickle.loads(data)
        except BaseException as exc:  # an input that pickled in the parent, not loadable here
            error: BaseException = RuntimeError(
                f"the inputs could not be loaded in the worker process: {describe(exc)}"
            )
            conn_out.send_bytes(_error_reply(received, error, exc))
            continue
        try:
            outputs = func(xs)
            if os.getpid() != me:
                os._exit(0)  # a fork of the model's that did not exit
        except BaseException as exc:  # a model's SystemExit must not end its worker
            if os.getpid() != me:
                os._exit(0)
            error = (
                exc
                if isinstance(exc, Exception)
                else RuntimeError(f"the model raised {describe(exc)}")
            )
            conn_out.send_bytes(_error_reply(seq, error, exc))
            continue
        try:
            data = _dumps((seq, True, outputs))
        except BaseException as exc:
            error = RuntimeError(
                "the model's outputs could not be sent back from the worker process:"
                f" {describe(exc)}"
            )
            data = _error_reply(seq, error, exc)
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
