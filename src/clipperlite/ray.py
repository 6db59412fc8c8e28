"""Model replicas as Ray actors: `RayBackend`, a `clipperlite.Backend` for `backend="ray"`.

The Clipper stays in the application's process (its queues, cache, policies and
deadlines); only the replicas move: each is a Ray actor holding the model, which was
cloudpickled once when the replica started. After that only batches cross, through
Ray's object store, and the event loop awaits their results without blocking::

    await clipper.deploy_model(
        "resnet", 1, "floats", predict, num_replicas=4,
        backend="ray", backend_options={"num_cpus": 1},
    )

A batch of small numpy arrays of one shape and dtype (the `integers`, `floats` and
`doubles` input types) travels as one stacked array, unstacked in the actor, so its items
are not serialised one by one. Ray itself is used as it is: its scheduler places the actors, its
object store moves the batches; clipperlite adds no RPC and no cluster code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
import numpy as np

import clipperlite

try:
    import ray
    import ray.exceptions as _ray_errors
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "clipperlite.ray needs Ray, which is not installed: pip install 'clipperlite[ray]'"
    ) from _exc

__all__ = ["RayBackend"]

logger = logging.getLogger("clipperlite")

#: The smallest batch sent as one stacked array (one input is sent as it is).
STACK_MIN = 2

#: The largest input (bytes) stacked. Ray serialises each array of a list as a buffer
#: of its own, a fixed cost per row that stacking saves; stacking copies the rows, a
#: cost per byte. `benchmarks/backends.py` measured per batch, stacked against a list:
#: 256 rows of 1.6 kB 0.54x, 64 of 3 kB 0.85x (stacking wins), 16 images of 150 kB
#: 1.22x, 32 rows of 800 kB 1.56x (the copy loses, and it would run on the event loop).
STACK_MAX_ROW_BYTES = 32_768

#: Seconds `stop` waits, after `ray.kill`, for Ray to confirm that the actor is gone.
KILL_CONFIRM_S = 5.0

_INIT_LOCK = threading.Lock()


class _Stacked:
    """A batch of equal-shape arrays sent as one array (unstacked in the actor)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        return _Stacked, (self.array,)


def _pack(inputs: list[Any]) -> Any:
    """The batch as it crosses to the actor: one stacked array when every input is a
    small numpy array of one shape and numeric dtype, else the list itself."""
    if len(inputs) < STACK_MIN:
        return inputs
    first = inputs[0]
    if type(first) is not np.ndarray or first.ndim == 0 or first.dtype.hasobject:
        return inputs  # (rows of a stack of 0-d arrays would come back as numpy scalars)
    if first.nbytes > STACK_MAX_ROW_BYTES:
        return inputs
    shape, dtype = first.shape, first.dtype
    for x in inputs:
        if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype:
            return inputs
    return _Stacked(np.stack(inputs))


class ClipperliteReplica:
    """The Ray actor holding one replica's model; it runs in a Ray worker process.

    Built with the cloudpickled model (resolved by Ray from the object store) and the
    driver's import path; `load` unpickles the model, `run` calls it on one batch.
    """

    def __init__(self, payload: bytes, paths: list[str]) -> None:
        self._payload: bytes | None = payload
        self._paths = paths
        self._func: Callable[[list[Any]], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> int:
        """Unpickle the model; return this worker's process id."""
        # Modules the driver imports from its own directories (a test module, a service's
        # package run from a checkout) resolve here too when this worker runs on the same
        # machine; appended, so the worker's own packages always come first.
        for path in self._paths:
            if path not in sys.path and os.path.isdir(path):
                sys.path.append(path)
        assert self._payload is not None
        self._func = pickle.loads(self._payload)  # cloudpickle's output, made by our driver
        self._payload = None
        return os.getpid()

    def ping(self) -> bool:
        """Answer, to show the actor is alive."""
        return True

    def run(self, batch: Any) -> tuple[Any, float]:
        """Run the model once on a batch; return its outputs and the seconds it took."""
        func = self._func
        assert func is not None
        inputs = list(batch.array) if type(batch) is _Stacked else batch
        started = time.perf_counter()
        try:
            outputs = func(inputs)
            if inspect.isawaitable(outputs):
                outputs = self._wait(outputs)
        except (StopIteration, StopAsyncIteration) as exc:
            # They cannot be raised into a future: report them as what they are.
            raise RuntimeError(f"the model raised {type(exc).__name__}: {exc}") from None
        except Exception:
            raise
        except BaseException as exc:  # SystemExit or KeyboardInterrupt would end the actor
            raise RuntimeError(f"the model raised {type(exc).__name__}: {exc}") from None
        return outputs, time.perf_counter() - started

    def _wait(self, awaitable: Any) -> Any:
        """Run an `async def` model's coroutine on this actor's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

        async def wait() -> Any:
            return await awaitable

        return self._loop.run_until_complete(wait())


def _connect(address: str | None) -> None:
    """Connect to Ray, or start a local runtime, unless this process already is."""
    with _INIT_LOCK:
        if not ray.is_initialized():
            logger.info(
                "clipperlite: %s",
                f"connecting to Ray at {address}" if address else "starting a local Ray runtime",
            )
            ray.init(address=address, ignore_reinit_error=True)


def _keep_connecting(requests: queue.SimpleQueue[Any]) -> None:
    """The thread `ray.init` runs in, for the life of the process: the processes of a
    local runtime die with the thread that started them (Linux's parent-death signal),
    so it must never end, and it must not be the event loop's (init takes seconds)."""
    while True:
        address, done = requests.get()
        if not done.set_running_or_notify_cancel():
            continue  # the caller was cancelled before its turn
        try:
            _connect(address)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)


_requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
_connector: threading.Thread | None = None


async def _ensure_runtime(address: str | None) -> None:
    """Have this process connected to Ray, without blocking the event loop."""
    global _connector
    if ray.is_initialized():
        return
    with _INIT_LOCK:
        if _connector is None:
            _connector = threading.Thread(
                target=_keep_connecting,
                args=(_requests,),
                name="clipperlite:ray-init",
                daemon=True,
            )
            _connector.start()
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    _requests.put((address, done))
    await asyncio.wrap_future(done)


def _model_error(err: _ray_errors.RayTaskError) -> Exception:
    """The model's own exception out of Ray's wrapper (the wrapper, when it cannot be)."""
    cause = err.cause
    return cause if isinstance(cause, Exception) else err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _forget(future: asyncio.Future[Any]) -> None:
    """Cancel a future nobody awaits any more, retrieving its outcome if it has one."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()


class _RayReplica:
    """One replica: a Ray actor, restarted when it dies (see `RayBackend`)."""

    def __init__(self, backend: RayBackend, payload: Any, name: str) -> None:
        self._backend = backend
        self._payload = payload  # an ObjectRef to the cloudpickled model
        self.name = name
        self._actor: Any = None
        self._restart: asyncio.Task[Any] | None = None
        self._running: Any = None  # the ObjectRef of the batch in the actor, if any
        self._stopped = False
        #: Actors started for this replica after the first (deaths replaced).
        self.restarts = 0

    @property
    def actor(self) -> Any:
        """The Ray actor handle serving now (None between a death and its replacement)."""
        return self._actor

    async def start(self) -> None:
        """Start the first actor and wait until it has loaded the model."""
        self._actor = await self._backend._spawn(self._payload, self.name)

    async def run_batch(self, inputs: list[Any]) -> clipperlite.BatchResult:
        """Run the model once on `inputs` in the actor.

        Raises:
            WorkerDiedError: the actor died (it is replaced for the next batch).
            Exception: what the model raised, as it raised it.
        """
        actor = self._actor if self._actor is not None else await self._replacement()
        ref = actor.run.remote(_pack(inputs))
        self._running = ref
        try:
            outputs, seconds = await ref
        except _ray_errors.RayTaskError as err:
            self._running = None
            raise _model_error(err) from err
        except _ray_errors.RayError as err:  # the actor, its worker or its node is gone
            self._running = None
            self._lost(actor)
            raise clipperlite.WorkerDiedError(
                f"the Ray actor of replica {self.name} died: {_first_line(err)}"
            ) from err
        except asyncio.CancelledError:
            raise  # the batch may still run: `stop` waits for it (`_running` kept)
        self._running = None
        return clipperlite.BatchResult(outputs, seconds)

    def _lost(self, actor: Any) -> None:
        """Take a dead actor out and start its replacement in the background."""
        if self._actor is actor:
            self._actor = None
        ray.kill(actor, no_restart=True)  # a zombie (node partitioned) must not come back
        if self._restart is None and not self._stopped:
            self.restarts += 1
            self._restart = asyncio.get_running_loop().create_task(
                self._backend._spawn(self._payload, self.name), name=f"{self.name}:restart"
            )
            self._restart.add_done_callback(_forget)

    async def _replacement(self) -> Any:
        """The actor that replaces a dead one, once it has loaded the model."""
        if self._stopped:
            raise clipperlite.WorkerDiedError(f"replica {self.name} was stopped")
        if self._restart is None:
            self.restarts += 1
            self._restart = asyncio.get_running_loop().create_task(
                self._backend._spawn(self._payload, self.name), name=f"{self.name}:restart"
            )
            self._restart.add_done_callback(_forget)
        restart = self._restart
        try:
            actor = await asyncio.shield(restart)
        except asyncio.CancelledError:
            if restart.cancelled():
                self._restart = None
            raise
        except Exception as exc:
            self._restart = None
            raise clipperlite.WorkerDiedError(
                f"the Ray actor of replica {self.name} died and could not be restarted: {exc}"
            ) from exc
        self._restart = None
        self._actor = actor
        return actor

    async def stop(self, grace_s: float) -> bool:
        """Let a running batch finish within `grace_s` seconds, then kill the actor.

        Returns:
            True once Ray confirms the actor is gone (False if it did not within
            `KILL_CONFIRM_S` of the kill).
        """
        self._stopped = True
        running, self._running = self._running, None
        if running is not None and self._actor is not None:
            batch = asyncio.wrap_future(running.future())
            await asyncio.wait([batch], timeout=max(0.0, grace_s))
            _forget(batch)
        restart, self._restart = self._restart, None
        if restart is not None:
            restart.cancel()
            await asyncio.wait([restart])
            if not restart.cancelled() and restart.exception() is None:
                self._actor = restart.result()
        actor, self._actor = self._actor, None
        if actor is None:
            return True
        return await _kill(actor)


async def _kill(actor: Any) -> bool:
    """Kill an actor and wait (a few seconds at most) for Ray to confirm it is dead.

    `ray.kill` is asynchronous: a call made just after it may still be answered, so the
    actor is probed until a probe fails.
    """
    ray.kill(actor, no_restart=True)
    end = time.monotonic() + KILL_CONFIRM_S
    while True:
        probe = asyncio.wrap_future(actor.ping.remote().future())
        try:
            await asyncio.wait_for(probe, max(0.01, end - time.monotonic()))
        except _ray_errors.RayActorError:
            return True
        except (asyncio.TimeoutError, _ray_errors.RayError):
            return False
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(0.02)


class RayBackend:
    """Replicas as Ray actors: `deploy_model(..., backend="ray", backend_options={...})`.

    Each replica is one actor holding the model, cloudpickled once (put in Ray's object
    store, so restarts and further replicas reuse it). An actor that dies (killed, its
    node lost, out of memory) makes its batch raise `WorkerDiedError` at once; a new
    actor replaces it for the next batch.

    Ray is used as this process finds it: a runtime already initialised (`ray.init`
    called by the application) is used as is; otherwise the first replica connects to
    `address` (`"ray://head:10001"`, `"auto"`), or starts a local runtime when it is
    None. The worker processes need the model's own dependencies and clipperlite itself
    importable (a `runtime_env` can provide them).

    Args:
        address: The Ray cluster to connect to when none is connected yet.
        num_cpus: CPUs each actor reserves (Ray's default for actors when None).
        num_gpus: GPUs each actor reserves.
        resources: Custom Ray resources each actor reserves.
        runtime_env: The actors' Ray runtime environment (pip packages, working dir).
        **actor_options: Further `ray.remote` actor options (`scheduling_strategy`,
            `memory`, `namespace`, ...), passed through.

    Raises:
        ValueError: an option is out of range, or not a Ray actor option.
    """

    #: The name `statistics()` reports for models on this backend.
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: Mapping[str, float] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        **actor_options: Any,
    ) -> None:
        for option, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError(f"RayBackend: {option} must be a number >= 0, not {value!r}")
        for option in ("max_concurrency", "max_restarts", "max_task_retries"):
            if option in actor_options:
                raise ValueError(
                    f"RayBackend: {option} is clipperlite's to set (one batch at a time, "
                    "dead actors replaced by clipperlite, batches never retried)"
                )
        for option in ("name", "get_if_exists"):
            if option in actor_options:
                raise ValueError(f"RayBackend: {option} would make replicas share one actor")
        self.address = address
        options: dict[str, Any] = dict(actor_options)
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if num_gpus is not None:
            options["num_gpus"] = num_gpus
        if resources is not None:
            options["resources"] = dict(resources)
        if runtime_env is not None:
            options["runtime_env"] = dict(runtime_env)
        # One batch at a time, no silent restarts or retries: a death must be reported.
        options.update(max_concurrency=1, max_restarts=0, max_task_retries=0)
        self._actor_class: Any = ray.remote(ClipperliteReplica)
        self._actor_class.options(**options)  # Ray checks the options (ValueError) now
        self._options = options
        self._shipped: tuple[Callable[..., Any], Any] | None = None

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._options.items() if not k.startswith("max_")}
        args = ", ".join(f"{k}={v!r}" for k, v in (("address", self.address), *shown.items()))
        return f"RayBackend({args})"

    async def start_replica(
        self, func: Callable[[list[Any]], Any], *, name: str
    ) -> clipperlite.Replica:
        """Start one actor holding `func` and wait until it has loaded it.

        Args:
            func: The model: takes a list of inputs, returns a list of outputs.
            name: The replica's name, for logs.

        Returns:
            The replica, ready to run batches.

        Raises:
            TypeError: `func` cannot be cloudpickled.
            ClipperError: the actor could not start (its traceback in the message).
            Exception: what the model raised while being unpickled in the actor.
        """
        await _ensure_runtime(self.address)
        payload = await self._ship(func)
        replica = _RayReplica(self, payload, name)
        await replica.start()
        return replica

    async def _ship(self, func: Callable[..., Any]) -> Any:
        """The model, cloudpickled and put in the object store once per function."""
        shipped = self._shipped
        if shipped is not None and shipped[0] is func:
            return shipped[1]

        def put() -> Any:
            try:
                payload = cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise TypeError(f"the model cannot be sent to a Ray actor: {exc}") from exc
            return ray.put(payload)

        ref = await asyncio.to_thread(put)
        self._shipped = (func, ref)
        return ref

    async def _spawn(self, payload: Any, name: str) -> Any:
        """Start an actor and wait until it loaded the model; kill it if that fails."""
        actor = self._actor_class.options(**self._options).remote(
            payload, [p for p in sys.path if p]
        )
        try:
            await actor.load.remote()
        except _ray_errors.RayTaskError as err:
            ray.kill(actor, no_restart=True)
            raise _model_error(err) from err
        except _ray_errors.RayError as err:
            ray.kill(actor, no_restart=True)
            raise clipperlite.ClipperError(
                f"the Ray actor for replica {name} could not start: {err}"
            ) from err
        except BaseException:  # cancelled, or anything else: leave no actor behind
            ray.kill(actor, no_restart=True)
            raise
        return actor
