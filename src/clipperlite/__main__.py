"""The `clipperlite` command: `clipperlite serve module:attribute` and `clipperlite demo`.

Also `python -m clipperlite ...`. `serve` needs the `http` extra and says how to
install it when it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

INSTALL_HTTP = "clipperlite serve needs the http extra: pip install 'clipperlite[http]'"


class TargetError(Exception):
    """A `module:attribute` that does not name anything to serve."""


def load_target(spec: str) -> Any:
    """The object named by `module:attribute` (the attribute may be dotted), imported
    with the current directory on the path, as uvicorn does.

    Raises:
        TargetError: The spec has no colon, the module does not exist, or it has no
            such attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise TargetError(f"expected module:attribute (e.g. myservice:make), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # the module exists and one of its own imports is missing
        raise TargetError(f"no module named {module_name!r}") from None
    for part in attribute.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            raise TargetError(f"module {module_name!r} has no attribute {attribute!r}")
    return obj


_MISSING = object()


def tcp_port(text: str) -> int:
    """A TCP port from the command line: an integer from 0 (any free port) to 65535.

    Raises:
        argparse.ArgumentTypeError: It is not one (argparse prints it, exit status 2).
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 65535, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipperlite", description="Clipper's prediction serving, as a library."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    serve = commands.add_parser(
        "serve",
        help="serve a Clipper over Clipper's REST API (needs clipperlite[http])",
        description="Serve a Clipper, an async factory returning a started Clipper, or an "
        "app from clipperlite.http.create_app, with uvicorn. SIGTERM or Ctrl-C stops it "
        "gracefully: every waiting query is answered.",
    )
    serve.add_argument("target", help="module:attribute, e.g. myservice:make")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument(
        "--port", type=tcp_port, default=1337, help="port (default: 1337, Clipper's)"
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="log level (default: info)",
    )
    commands.add_parser("demo", help="run the demo: real models, live traffic, what happened")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from clipperlite import demo

        demo.main()
        return 0
    try:
        from clipperlite import http
    except ImportError:
        print(INSTALL_HTTP, file=sys.stderr)
        return 1
    try:
        target = load_target(args.target)
        return http.serve(target, host=args.host, port=args.port, log_level=args.log_level)
    except (TargetError, TypeError) as exc:
        print(f"clipperlite serve: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
