"""A real `clipperlite serve` process on loopback, driven by Clipper's own clients."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the http extra is not installed")
pytest.importorskip("uvicorn", reason="the http extra is not installed")
requests = pytest.importorskip("requests", reason="requests (a test need) is not installed")

TESTS = Path(__file__).parent
IN_FLIGHT = 6


def free_port() -> int:
    """A port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command() -> list[str]:
    """The `clipperlite` console script of this environment, or `python -m clipperlite`."""
    script = Path(sys.executable).parent / "clipperlite"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clipperlite"]


class Server:
    """A `clipperlite serve http_service:make` subprocess on a free loopback port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.entered, self.release = tmp / "entered", tmp / "release"
        env = {
            **os.environ,
            "CLIPPERLITE_TEST_ENTERED": str(self.entered),
            "CLIPPERLITE_TEST_RELEASE": str(self.release),
        }
        self.process = subprocess.Popen(
            [*command(), "serve", "http_service:make", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /health until it is 200 (fail if the process ends or time runs out)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                pytest.fail(f"clipperlite serve exited: {self.output()}")
            try:
                if requests.get(f"http://{self.addr}/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        pytest.fail("clipperlite serve did not become healthy in time")

    def output(self) -> str:
        """What the process printed (once it has ended)."""
        assert self.process.stdout is not None
        return self.process.stdout.read().decode(errors="replace")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A running server; killed at teardown if the test did not stop it."""
    s = Server(tmp_path)
    try:
        s.wait_ready()
        yield s
    finally:
        if s.process.poll() is None:
            s.process.kill()
        s.process.wait(10)
        assert s.process.stdout is not None
        s.process.stdout.close()


def example_client_predict(addr: str, x: Any, batch: bool = False) -> str:
    """Clipper's example_client.py `predict`, unchanged but for returning the answer."""
    url = "http://%s/simple-example/predict" % addr  # noqa: UP031 (Clipper's own line)
    if batch:
        req_json = json.dumps({"input_batch": x})
    else:
        req_json = json.dumps({"input": list(x)})
    headers = {"Content-type": "application/json"}
    r = requests.post(url, headers=headers, data=req_json)
    return str(r.text)


def test_clippers_clients_work_and_sigterm_answers_every_query(server: Server) -> None:
    """curl and example_client.py's loop are answered; SIGTERM waits for queries in flight."""
    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run(
            [curl, "-s", "-X", "POST", "--header", "Content-Type:application/json",
             "-d", '{"input": [1.1, 2.2, 3.3]}', f"{server.addr}/hello-world/predict"],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        assert out.stdout == b'{"query_id":0,"output":6.6,"default":false}'

    for i in range(20):  # example_client.py's loop, with batches of 1 to 5 inputs
        batch = [[float(i), float(j)] for j in range(i % 5 + 1)]
        answer = json.loads(example_client_predict(server.addr, batch, batch=True))
        outputs = [p["output"] for p in answer["batch_predictions"]]
        assert outputs == [float(i + j) for j in range(i % 5 + 1)]
        assert not any(p["default"] for p in answer["batch_predictions"])
    assert json.loads(example_client_predict(server.addr, [1.0, 2.0]))["output"] == 3.0

    # Queries held in flight: one in the model, the others queued behind it.
    answers: list[Any] = []

    def send(i: int) -> None:
        r = requests.post(f"http://{server.addr}/slow/predict", json={"input": [float(i)]})
        answers.append((r.status_code, r.json()))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    wait_for(lambda: server.entered.exists())
    wait_for(lambda: queued(server) == IN_FLIGHT - first_batch(server))
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the server is now shutting down, the queries still held
    assert server.process.poll() is None
    server.release.touch()
    for t in threads:
        t.join(30)
    assert server.process.wait(30) == 0, server.output()
    assert len(answers) == IN_FLIGHT
    assert all(status == 200 for status, _ in answers), answers
    assert sorted(a["output"] for _, a in answers if not a["default"]) == [
        float(i) for i in range(IN_FLIGHT)
    ]


def first_batch(server: Server) -> int:
    """The size of the first batch the held model took."""
    return int(server.entered.read_text().split()[0])


def queued(server: Server) -> int:
    """The held model's queue length, from /metrics."""
    text = requests.get(f"http://{server.addr}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('clipperlite_queue_length{model="slow"'):
            return int(float(line.split()[-1]))
    return -1


def wait_for(check: Any, timeout: float = 20.0) -> None:
    """Poll `check` until it is true (fail after `timeout` seconds)."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


def test_ctrl_c_stops_the_server_with_status_0(server: Server) -> None:
    """SIGINT (Ctrl-C) stops the server gracefully, with no traceback."""
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 0
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("target", "message"),
    [("nomodule_here:make", "no module named"), ("http_service:nothing", "no attribute"),
     ("http_service", "module:attribute"), ("http_service:time", "serve takes")],
)  # fmt: skip
def test_a_bad_target_is_a_message_not_a_traceback(target: str, message: str) -> None:
    """A target that names nothing servable prints what is wrong and exits non-zero."""
    out = subprocess.run(
        [*command(), "serve", target], cwd=TESTS, capture_output=True, timeout=60, text=True
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


#: A module of targets that are not servable, and a factory that never returns.
TARGETS = """
import asyncio, os
from pathlib import Path

from clipperlite import Clipper


def sync_make():
    return Clipper()


async def needs_arg(config):
    return Clipper()


async def hang():
    Path(os.environ["CLIPPERLITE_TEST_ENTERED"]).touch()
    await asyncio.Event().wait()
"""


@pytest.mark.parametrize(
    ("attribute", "what"),
    [("sync_make", "the function sync_make, a plain def"),
     ("needs_arg", "needs_arg(config), which needs arguments"), ("Clipper", "the class Clipper")],
)  # fmt: skip
def test_an_unservable_callable_is_refused_before_uvicorn_starts(
    tmp_path: Path, attribute: str, what: str
) -> None:
    """A plain def factory, an async def needing arguments or a class is one line, status 2."""
    (tmp_path / "targets.py").write_text(TARGETS)
    out = subprocess.run(
        [*command(), "serve", f"targets:{attribute}", "--port", str(free_port())],
        cwd=tmp_path, capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert what in out.stderr
    assert "serve takes a Clipper" in out.stderr


#: A factory that receives SIGTERM as it returns, while uvicorn is still to bind (slowed).
SIGNALLED_AS_IT_RETURNS = """
import asyncio, os, signal
import asyncio.base_events

from clipperlite import Clipper

_create_server = asyncio.base_events.BaseEventLoop.create_server


async def _slow_create_server(self, *args, **kwargs):
    await asyncio.sleep(0.5)  # a slow bind
    return await _create_server(self, *args, **kwargs)


asyncio.base_events.BaseEventLoop.create_server = _slow_create_server


async def make():
    clipper = await Clipper().start()
    await clipper.create_endpoint("a", "doubles", lambda xs: xs)
    os.kill(os.getpid(), signal.SIGTERM)
    return clipper
"""


def test_a_signal_after_the_factory_returned_is_a_graceful_stop(tmp_path: Path) -> None:
    """Once the app's startup is complete, a SIGTERM before uvicorn has bound is a graceful
    shutdown (status 0), not an abandoned startup."""
    (tmp_path / "late.py").write_text(SIGNALLED_AS_IT_RETURNS)
    out = subprocess.run(
        [*command(), "serve", "late:make", "--port", str(free_port())],
        cwd=tmp_path, capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "abandoned" not in out.stderr
    assert "Application shutdown complete" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_abandons_a_factory_that_hangs_at_startup(tmp_path: Path, sig: int) -> None:
    """SIGTERM or Ctrl-C while the factory still runs cancels it: one line, status 3."""
    (tmp_path / "targets.py").write_text(TARGETS)
    entered = tmp_path / "entered"
    process = subprocess.Popen(
        [*command(), "serve", "targets:hang", "--port", str(free_port()),
         "--log-level", "warning"],
        cwd=tmp_path, env={**os.environ, "CLIPPERLITE_TEST_ENTERED": str(entered)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: entered.exists() or process.poll() is not None, timeout=60)
        process.send_signal(sig)
        assert process.wait(20) == 3
    finally:
        if process.poll() is None:
            process.kill()
        output, _ = process.communicate(timeout=10)
    assert output.count("\n") == 1, output
    assert "startup was abandoned" in output
    assert "Traceback" not in output


def test_without_the_extra_serve_prints_the_install_line(tmp_path: Path) -> None:
    """With starlette unimportable, `clipperlite serve` prints the pip line and exits non-zero."""
    (tmp_path / "starlette.py").write_text("raise ImportError('starlette is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "clipperlite", "serve", "http_service:make"],
        cwd=TESTS, env=env, capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert "pip install 'clipperlite[http]'" in out.stderr
    assert "Traceback" not in out.stderr


# -- in-process: what the command does before uvicorn runs -------------------------------


def test_as_asgi_takes_a_clipper_a_factory_or_an_app() -> None:
    """A Clipper and a factory become create_app apps; an ASGI app passes through."""
    from starlette.applications import Starlette

    from clipperlite import Clipper
    from clipperlite.http import create_app
    from clipperlite.http._serve import as_asgi

    async def factory() -> Clipper:
        return await Clipper().start()

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        return None

    class App:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            return None

    app, instance = create_app(Clipper()), App()
    assert isinstance(as_asgi(Clipper()), Starlette)
    assert isinstance(as_asgi(factory), Starlette)
    assert isinstance(as_asgi(functools.partial(factory)), Starlette)
    assert as_asgi(app) is app
    assert as_asgi(asgi) is asgi
    assert as_asgi(instance) is instance
    with pytest.raises(TypeError, match="serve takes"):
        as_asgi(42)


def test_as_asgi_says_what_it_cannot_serve() -> None:
    """A callable that is neither a factory nor an ASGI app is a TypeError saying what it is."""
    from clipperlite import Clipper
    from clipperlite.http._serve import as_asgi

    def sync_make() -> Clipper:
        return Clipper()

    async def needs_two(a: Any, b: Any) -> None:
        return None

    class SyncApp:
        def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            return None

    for target, what in [
        (sync_make, "sync_make, a plain def"),
        (needs_two, "the async callable needs_two(a, b), which needs arguments"),
        (Clipper, "the class Clipper"),
        (SyncApp(), "a SyncApp, callable but not async"),
    ]:
        with pytest.raises(TypeError, match="serve takes a Clipper") as info:
            as_asgi(target)
        assert what in str(info.value)


def test_serve_refuses_an_unknown_log_level() -> None:
    """A log level uvicorn does not know is a ValueError before anything binds."""
    from clipperlite import Clipper
    from clipperlite.http import serve

    with pytest.raises(ValueError, match="log_level"):
        serve(Clipper(), log_level="loud")


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_serve_refuses_a_port_out_of_range(port: int) -> None:
    """A port outside 0 to 65535 is a ValueError before anything binds."""
    from clipperlite import Clipper
    from clipperlite.http import serve

    with pytest.raises(ValueError, match="port must be an int from 0 to 65535"):
        serve(Clipper(), port=port)


def test_the_command_reports_a_bad_target_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """`main(["serve", ...])` with a target that is not servable prints why, status 2."""
    from clipperlite import __main__ as cli

    assert cli.main(["serve", "json:dumps.__name__"]) == 2
    assert "serve takes" in capsys.readouterr().err


def test_the_command_without_the_extra_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With clipperlite.http unimportable, `main(["serve", ...])` prints the pip line."""
    import clipperlite
    from clipperlite import __main__ as cli

    monkeypatch.setitem(sys.modules, "clipperlite.http", None)
    monkeypatch.delattr(clipperlite, "http", raising=False)
    assert cli.main(["serve", "http_service:make"]) == 1
    assert "pip install 'clipperlite[http]'" in capsys.readouterr().err
