"""clipperlite's HTTP frontend against the endpoint a user would otherwise write by hand.

Two servers, each one uvicorn worker on loopback in a process of its own, serve the
same model under the same SLO:

- **frontend**: `clipperlite.http.create_app` over a Clipper (adaptive batching);
- **baseline**: a hand-written Starlette endpoint that parses the JSON, calls the
  model once per request in Starlette's thread pool (as a sync endpoint would) and
  answers Clipper's JSON: what a user writes in ~20 lines without clipperlite.

The model costs a fixed ~7 ms per call (a 400x400 matrix product on one BLAS thread,
which releases the GIL as native models do) whatever the batch size: the case
batching is for. The load comes from a third
process: an open-loop Poisson client (httpx.AsyncClient), latency measured from each
request's scheduled arrival, so a client or server that falls behind is charged for
it. For each server it reports the highest offered rate whose p99 stays within the
SLO with no error and no default, and, at a low rate, sequential round trips: the
frontend's added latency per request over the same query awaited in-process.

    python benchmarks/http_frontend.py            # ~2-3 minutes
    python benchmarks/http_frontend.py --quick    # smoke run, well under a minute

Every figure is measured in the same run; the summary gives the ratios.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `http`: keep its directory off the
# path, or `import http.client` (httpx, uvicorn) would import this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

# One BLAS thread: the model's matrix product is predictable on two shared cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

SLO_MICROS = 200_000
#: The servers: clipperlite's frontend, and two hand-written endpoints (the model in
#: Starlette's thread pool, or called on the loop); the better of the two is the baseline.
KINDS = ("threadpool", "inline", "frontend")
FEATURES = 10
#: Client connections (kept alive); more only adds connection churn on two cores.
CONNECTIONS = 16
#: The model's fixed cost per call: a matrix product of this size (~7 ms here), large
#: enough that the model, not the HTTP stack, is what a server runs out of.
MATRIX = int(os.environ.get("BENCH_MATRIX", "400"))
_W = np.random.default_rng(0).random((MATRIX, MATRIX))


def model(xs: list[Any]) -> list[float]:
    """A fixed cost per call (a 400x400 matrix product in BLAS, which releases the GIL
    as a native model does), then the sum of each input."""
    _W @ _W
    return [float(np.sum(x)) for x in xs]


def model_cost_us(n: int = 50) -> float:
    """The model's median time per call of one input, here and now (µs)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        model([np.ones(FEATURES)])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


# -- the two servers ----------------------------------------------------------------------


async def make_clipper() -> Any:
    """The frontend's Clipper: one app, the model behind it."""
    from clipperlite import Clipper

    clipper = await Clipper().start()
    await clipper.create_endpoint("bench", "doubles", model, default_output=-1.0,
                                  slo_micros=SLO_MICROS)  # fmt: skip
    return clipper


def baseline_app(threadpool: bool) -> Any:
    """The hand-written endpoint: parse, call the model once, answer Clipper's JSON; the
    model runs in Starlette's thread pool (a sync endpoint) or on the loop itself."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    ids = iter(range(1 << 62))

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        x = np.asarray(body["input"], dtype=np.float64)
        (output,) = await run_in_threadpool(model, [x]) if threadpool else model([x])
        return JSONResponse({"query_id": next(ids), "output": output, "default": False})

    return Starlette(routes=[Route("/bench/predict", predict, methods=["POST"])])


def serve(kind: str, port: int) -> None:
    """Run one server until SIGTERM."""
    import uvicorn

    if kind == "frontend":
        from clipperlite.http import create_app

        app = create_app(make_clipper)
    else:
        app = baseline_app(threadpool=kind == "threadpool")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on" if kind == "frontend" else "off")  # fmt: skip
    asyncio.run(uvicorn.Server(config).serve())


# -- the client ------------------------------------------------------------------------------


async def open_loop(port: int, rate: float, duration: float, seed: int) -> dict[str, Any]:
    """Poisson arrivals at `rate` for `duration` s (plus an unmeasured warm-up)."""
    import httpx

    rng = np.random.default_rng(seed)
    warmup = min(1.0, duration / 2)
    n = int(rate * (duration + warmup))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
    inputs = [rng.random(FEATURES).tolist() for _ in range(64)]
    latencies = np.full(n, np.nan)
    failures = 0
    url = f"http://127.0.0.1:{port}/bench/predict"
    # One client per connection, handed out FIFO: httpx's own pool scans every waiting
    # request on each release, which turns an overload into a quadratic collapse of the
    # client itself (the load generator would then measure itself).
    clients = [
        httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60)
        for _ in range(CONNECTIONS)
    ]
    idle: asyncio.Queue[Any] = asyncio.Queue()
    for c in clients:
        idle.put_nowait(c)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    done = asyncio.Event()
    pending = n

    async def one(i: int) -> None:
        nonlocal failures, pending
        c = await idle.get()
        try:
            r = await c.post(url, json={"input": inputs[i % len(inputs)]})
            if r.status_code != 200 or r.json()["default"]:
                failures += arrivals[i] >= warmup
            latencies[i] = loop.time() - (start + arrivals[i])
        except httpx.HTTPError:
            failures += arrivals[i] >= warmup
        finally:
            idle.put_nowait(c)
            pending -= 1
            if not pending:
                done.set()

    tasks = set()
    for i, t in enumerate(arrivals):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await done.wait()
    for c in clients:
        await c.aclose()
    measured = latencies[arrivals >= warmup]
    ok = measured[~np.isnan(measured)]
    p99 = float(np.percentile(ok, 99)) * 1e6 if ok.size else float("inf")
    return {
        "rate": rate,
        "p50_us": float(np.percentile(ok, 50)) * 1e6 if ok.size else float("inf"),
        "p99_us": p99,
        "failures": int(failures),
        "throughput": ok.size / duration,
    }


async def sequential(ports: dict[str, int], n: int) -> dict[str, list[float]]:
    """Round-trip times (µs) of requests sent one at a time, in turn to each server and to
    the same query awaited in-process (a Clipper in this process), so that every one of
    them meets the same noise from the neighbours."""
    import httpx

    clipper = await make_clipper()
    rng = np.random.default_rng(1)
    out: dict[str, list[float]] = {k: [] for k in [*ports, "in-process"]}
    clients = {k: httpx.AsyncClient() for k in ports}
    try:
        for i in range(n + 20):
            x = rng.random(FEATURES).tolist()
            for kind, port in ports.items():
                t0 = time.perf_counter()
                r = await clients[kind].post(f"http://127.0.0.1:{port}/bench/predict",
                                             json={"input": x})  # fmt: skip
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                if i >= 20:
                    out[kind].append(dt * 1e6)
            t0 = time.perf_counter()
            p = await clipper.predict("bench", np.asarray(x))
            dt = time.perf_counter() - t0
            if i >= 20 and not p.default:
                out["in-process"].append(dt * 1e6)
    finally:
        for c in clients.values():
            await c.aclose()
        await clipper.stop()
    return out


# -- the orchestrator --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_self(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args])


def client(*args: str) -> Any:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--client", *args],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    import httpx

    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit("a server exited before it was ready")
        try:
            # Any answer (even a 405 from the baseline) means it listens.
            httpx.get(f"http://127.0.0.1:{port}/bench/predict", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit("a server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if args.client:
        what, port, *rest = args.client
        if what == "load":
            rate, duration = float(rest[0]), float(rest[1])
            print(json.dumps(asyncio.run(open_loop(int(port), rate, duration, seed=7))))
        else:
            ports = dict(zip(KINDS, map(int, port.split(",")), strict=True))
            print(json.dumps(asyncio.run(sequential(ports, int(rest[0])))))
        return

    quick = args.quick
    duration = 1.5 if quick else 4.0
    rates = [20, 60, 100] if quick else [10, 20, 40, 60, 80, 100, 150, 200, 300]
    n_seq = 200 if quick else 1000
    print(
        f"model: {MATRIX}x{MATRIX} matrix product per call, {model_cost_us():.0f} µs here "
        f"(GIL released); SLO {SLO_MICROS / 1000:.0f} ms; one uvicorn worker each; "
        f"load {duration} s/rate"
    )
    ports = {kind: free_port() for kind in KINDS}
    servers = [run_self("--serve", kind, "--port", str(port)) for kind, port in ports.items()]
    best = dict.fromkeys(KINDS, 0.0)
    cpu_us: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        for kind, server in zip(KINDS, servers, strict=True):
            wait_healthy(ports[kind], server)
        seq = client("seq", ",".join(str(ports[k]) for k in KINDS), str(n_seq))
        # Rates in turn for each server still within its SLO, so that each rate meets the
        # same neighbours; a miss is retried once (the machine is shared) before it counts.
        alive = list(KINDS)
        for rate in rates:
            for kind in list(alive):
                for _attempt in range(2):
                    cpu0 = cpu_seconds(servers[KINDS.index(kind)].pid)
                    row = client("load", str(ports[kind]), str(rate), str(duration))
                    cpu = cpu_seconds(servers[KINDS.index(kind)].pid) - cpu0
                    sent = rate * (duration + min(1.0, duration / 2))
                    cpu_us[kind].append(cpu / sent * 1e6)
                    ok = row["p99_us"] <= SLO_MICROS and row["failures"] == 0
                    print(f"  {kind:10s} rate {rate:5.0f}/s  p50 {row['p50_us'] / 1000:8.2f} ms  "
                          f"p99 {row['p99_us'] / 1000:8.2f} ms  failures {row['failures']:5d}  "
                          f"server CPU {cpu / sent * 1e6:6.0f} µs/req  "
                          f"{'ok' if ok else 'MISS'}")  # fmt: skip
                    if ok:
                        break
                if ok:
                    best[kind] = rate
                else:
                    alive.remove(kind)
            if not alive:
                break
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(30)

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    baseline = max(("threadpool", "inline"), key=lambda k: best[k])
    base_seq, front_seq, local = seq[baseline], seq["frontend"], seq["in-process"]
    print("sequential round trips, interleaved (µs)   p50      p99")
    for name, values in (
        ("in-process predict", local),
        ("threadpool endpoint", seq["threadpool"]),
        ("inline endpoint", seq["inline"]),
        ("frontend over HTTP", front_seq),
    ):
        print(f"  {name:38s} {p(values, 50):8.0f} {p(values, 99):8.0f}")
    print("server CPU per request (µs, median over the rates run):")
    for kind in KINDS:
        print(f"  {kind:38s} {np.median(cpu_us[kind]):8.0f}")
    cpu_ratio = np.median(cpu_us[baseline]) / np.median(cpu_us["frontend"])
    added = p(front_seq, 50) - p(local, 50)
    best_b, best_f = best[baseline], best["frontend"]
    ratio = best_f / best_b if best_b else float("inf")
    print(
        f"summary: highest rate with p99 <= SLO: frontend {best_f:.0f}/s vs baseline "
        f"({baseline}) {best_b:.0f}/s ({ratio:.2f}x); frontend adds {added:.0f} µs per "
        f"request (p50) over in-process predict; frontend/baseline sequential round trip "
        f"p50 {p(front_seq, 50) / p(base_seq, 50):.2f}x; baseline/frontend server CPU per "
        f"request {cpu_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
