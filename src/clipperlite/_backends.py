"""Where a model's `func` runs: a worker thread, a worker process, or the event loop.

Each replica object exposes `run_batch(xs)`; the batcher awaits it and never knows
which kind it is.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import cloudpickle

from ._types import Timed, WorkerDied

logger = logging.getLogger("clipperlite")

BACKENDS = ("thread", "process", "async")

#: Task.cancelling() (Python 3.11+) tells our cancellation from a model's own CancelledError.
_CAN_TELL_CANCELLING = hasattr(asyncio.Task, "cancelling")


class Replica(Protocol):
    """One running copy of a model."""

    name: str

    async def start(self) -> None:
        """Become ready to run batches (raise if that is impossible)."""

    async def run_batch(self, xs: list[Any]) -> Any:
        """Run the model on a batch of inputs and return its outputs."""

    async def stop(self, grace: float) -> bool:
        """Stop within `grace` seconds; return False if the replica had to be abandoned."""


def is_async_func(func: Callable[..., Any]) -> bool:
    """Whether `func` is an `async def` (also behind a callable object)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _as_model_error(exc: BaseException) -> Exception:
    """An exception the batcher can report; BaseExceptions a model raised are wrapped."""
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the model raised {type(exc).__name__}: {exc}")


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ThreadReplica:
    """Runs a plain function on a worker thread of its own.

    A dedicated thread fed through a `SimpleQueue` hands a batch over for a few µs
    where an executor costs ~100 µs, and caps the model at one thread per replica.
    """

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func: Callable[[list[Any]], Any] = func
        self.name = name
        self._inbox: queue.SimpleQueue[tuple[asyncio.Future[Any], list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        ready: asyncio.Future[Any] = loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name=self.name, daemon=True
        )
        self._thread.start()
        await ready

    def _setup(self) -> None:
        """Runs first on the worker thread (a subclass may load its model here)."""

    def _teardown(self) -> None:
        """Runs last on the worker thread."""

    def _force_stop(self) -> bool:
        """Free a worker stuck in its model call, if this kind of replica can."""
        return False

    def _work(self, ready: asyncio.Future[Any]) -> None:
        loop = self._loop
        assert loop is not None and self._exited is not None
        try:
            try:
                self._setup()
            except Exception as exc:
                loop.call_soon_threadsafe(_deliver, ready, False, exc)
                return
            loop.call_soon_threadsafe(_deliver, ready, True, None)
            self._serve(loop)
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            pass
        finally:
            self._teardown()
            try:
                loop.call_soon_threadsafe(_deliver, self._exited, True, None)
            except RuntimeError:
                pass

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        func = self.func
        inbox = self._inbox
        while True:
            item = inbox.get()
            if item is None:
                return
            fut, xs = item
            try:
                started = time.perf_counter()
                result: Any = Timed(func(xs), time.perf_counter() - started)
                ok = True
            except BaseException as exc:  # a model's SystemExit must not end its replica
                result, ok = _as_model_error(exc), False
            loop.call_soon_threadsafe(_deliver, fut, ok, result)
            del item, fut, xs, result

    async def run_batch(self, xs: list[Any]) -> Any:
        assert self._loop is not None
        fut = self._loop.create_future()
        self._inbox.put((fut, xs))
        return await fut

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def stop(self, grace: float) -> bool:
        thread = self._thread
        if thread is None:
            return True
        self._inbox.put(None)
        assert self._exited is not None
        await asyncio.wait([self._exited], timeout=grace)
        if not self._exited.done() and self._force_stop():
            await asyncio.wait([self._exited], timeout=1.0)
        if self._exited.done():
            # It has said goodbye and is returning; wait for that without blocking the loop.
            for _ in range(200):
                if not thread.is_alive():
                    break
                await asyncio.sleep(0.005)
        if thread.is_alive():
            logger.warning(
                "clipperlite: replica thread %r is stuck in its model call; abandoning it",
                self.name,
            )
            return False
        return True


class AsyncReplica:
    """Runs an `async def` model on the event loop."""

    def __init__(self, func: Callable[[list[Any]], Any], name: str) -> None:
        self.func = func
        self.name = name

    async def start(self) -> None:
        return None

    async def run_batch(self, xs: list[Any]) -> Any:
        if not _CAN_TELL_CANCELLING:
            return await self._run_apart(xs)
        try:
            result = self.func(xs)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            raise
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # we are being cancelled
            raise _as_model_error(exc) from exc  # the model raised it on its own
        except BaseException as exc:  # a model's SystemExit must not end the loop
            raise _as_model_error(exc) from exc
        return result

    async def _run_apart(self, xs: list[Any]) -> Any:
        """Before Python 3.11 a task cannot tell its own cancellation from a model's stray
        CancelledError, so the model runs in a task of its own (one per batch)."""

        async def call() -> Any:
            try:
                result = self.func(xs)
                return await result if inspect.isawaitable(result) else result
            except (Exception, asyncio.CancelledError):
                raise
            except BaseException as exc:  # a task would let SystemExit out of the loop
                raise _as_model_error(exc) from exc

        inner = asyncio.ensure_future(call())
        try:
            await asyncio.wait([inner])
        except asyncio.CancelledError:
            inner.cancel()  # we are being cancelled: so is the model
            raise
        if inner.cancelled():
            raise RuntimeError("the model raised CancelledError")
        exc = inner.exception()
        if exc is not None:
            raise _as_model_error(exc) from exc
        return inner.result()

    async def stop(self, grace: float) -> bool:
        return True


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

    def start(self) -> None:
        """Start the process and wait until it has loaded the model."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = "from clipperlite._backends import child_main; child_main()"
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
        ok, value = self._receive()
        if not ok:
            self.close()
            raise value

    def _receive(self) -> tuple[bool, Any]:
        assert self._conn_in is not None and self._proc is not None
        try:
            data = self._conn_in.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self._proc.wait(timeout=5)
            raise WorkerDied(f"worker process {self._name} exited with code {code}") from exc
        result: tuple[bool, Any] = pickle.loads(data)  # from our own child only
        return result

    def __call__(self, xs: list[Any]) -> Any:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self.restarts += 1
            self.start()  # replace a worker that died while idle
        assert self._conn_out is not None
        try:
            self._conn_out.send_bytes(cloudpickle.dumps(xs, protocol=pickle.HIGHEST_PROTOCOL))
            ok, value = self._receive()
        except WorkerDied:
            self._replace()
            raise
        except (BrokenPipeError, OSError) as exc:
            self._replace()
            raise WorkerDied(f"worker process {self._name} is gone: {exc}") from exc
        if ok:
            return value
        raise value

    def _replace(self) -> None:
        """Start a new worker now, so the next batch does not pay for it."""
        self.close()
        self.restarts += 1
        try:
            self.start()
        except Exception:  # tried again before the next batch
            logger.exception("clipperlite: could not restart worker process %s", self._name)
            self.close()

    def kill(self) -> None:
        """Kill the process now (safe from any thread)."""
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
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def child_main() -> None:
    """Entry point of a worker process: load the model, then answer batches until EOF."""
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn_out = Connection(int(sys.argv[2]), readable=False)
    try:
        paths, payload = pickle.loads(conn_in.recv_bytes())
        sys.path[:0] = [p for p in paths if p not in sys.path]
        func = pickle.loads(payload)
    except Exception as exc:  # the model cannot be loaded here
        conn_out.send_bytes(pickle.dumps((False, _portable_error(exc))))
        return
    conn_out.send_bytes(pickle.dumps((True, None)))
    while True:
        try:
            xs = pickle.loads(conn_in.recv_bytes())
        except EOFError:
            return
        try:
            reply = (True, func(xs))
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            data = pickle.dumps((False, _portable_error(exc)))
        conn_out.send_bytes(data)


class ProcessReplica(ThreadReplica):
    """Runs a model in a worker process of its own (fed by a thread of the replica's own).

    A process that dies is replaced before the next batch; the batch it was running
    gets the "worker died" default.
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

    @property
    def restarts(self) -> int:
        return self._child.restarts

    def _force_stop(self) -> bool:
        self._child.kill()  # the thread is blocked on the pipe; killing the child frees it
        return True


def make_replica(backend: str, func: Callable[[list[Any]], Any], name: str) -> Replica:
    """A replica of the given backend kind."""
    if backend == "thread":
        return ThreadReplica(func, name)
    if backend == "async":
        return AsyncReplica(func, name)
    if backend == "process":
        return ProcessReplica(func, name)
    raise ValueError(backend)
