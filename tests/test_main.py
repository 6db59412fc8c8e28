"""The `clipperlite` command line: its subcommands, without the HTTP extra's server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clipperlite import __main__ as cli
from clipperlite import demo


def test_demo_runs_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`clipperlite demo` runs clipperlite.demo's main."""
    ran: list[bool] = []
    monkeypatch.setattr(demo, "main", lambda: ran.append(True))
    assert cli.main(["demo"]) == 0
    assert ran == [True]


def test_python_dash_m_clipperlite_shows_its_commands() -> None:
    """`python -m clipperlite --help` lists serve and demo."""
    out = subprocess.run(
        [sys.executable, "-m", "clipperlite", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "serve" in out.stdout
    assert "demo" in out.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nocolon", "module:attribute"), (":x", "module:attribute"), ("json:nothing", "no attribute"),
     ("no_such_module_anywhere:x", "no module named")],
)  # fmt: skip
def test_load_target_says_what_is_wrong(spec: str, message: str) -> None:
    """A spec that names nothing is a TargetError saying why."""
    with pytest.raises(cli.TargetError, match=message):
        cli.load_target(spec)


def test_load_target_follows_dotted_attributes() -> None:
    """`module:a.b` is the attribute b of the attribute a."""
    assert cli.load_target("os:path.join") is __import__("os").path.join


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "abc"])
def test_a_port_out_of_range_is_an_argparse_error(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--port` outside 0 to 65535 is refused by argparse (status 2), before the target loads."""
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "no_such_module_anywhere:x", "--port", port])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: expected an integer from 0 to 65535, got {port!r}" in err
    assert "Traceback" not in err


def test_tcp_port_takes_every_port() -> None:
    """0 (any free port) to 65535 are ports."""
    assert [cli.tcp_port(p) for p in ("0", "1337", "65535")] == [0, 1337, 65535]
