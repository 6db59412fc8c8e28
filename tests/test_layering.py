"""Imports go down the layers of DESIGN.md only, and the core needs no optional dependency."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import clipperlite

PACKAGE = "clipperlite"
SRC = Path(clipperlite.__file__).parent

#: The core's layers (DESIGN.md, "Layers"): a module may import only from lower layers.
LAYERS = {
    "_types": 1,
    "_errors": 1,
    "_clock": 1,
    "_defaults": 1,
    "_queue": 2,
    "_aimd": 2,
    "_selection": 2,
    "_cache": 2,
    "_inputs": 2,
    "_stats": 2,
    "_timers": 2,
    "_batching": 3,
    "_backends": 3,
    "_model": 4,
    "_registry": 5,
    "_query_processor": 6,
    "_clipper": 7,
}
#: Extras, above the core: built on the public API only (they may import `clipperlite`).
EXTRAS = {"testing", "http", "prometheus", "ray", "plotting", "demo", "__main__"}
#: The public modules of other extras an extra may import (the command line serves the
#: HTTP frontend and runs the demo; the frontend serves the Prometheus collector).
EXTRA_IMPORTS = {"__main__": {"http", "demo"}, "http": {"prometheus"}}
#: The only third-party packages `import clipperlite` may need.
CORE_DEPENDENCIES = {"numpy", "cachetools", "cloudpickle", "anyio"}


def unit_of(path: Path) -> str:
    """The top-level module or subpackage of clipperlite a file belongs to."""
    first = path.relative_to(SRC).parts[0]
    return first.removesuffix(".py")


def module_name(path: Path) -> tuple[str, bool]:
    """The dotted name of a file under SRC, and whether it is a package's __init__."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join([PACKAGE, *parts]), is_package


def is_module(dotted: str) -> bool:
    """Whether a dotted clipperlite name is a module or package (not an attribute)."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def import_targets(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module a source imports (absolute dotted names), with line numbers."""
    targets: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            if target_unit(base) is None:
                targets.append((node.lineno, base))
                continue
            # `from . import _types` imports the module _types, not the package's namespace.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append((node.lineno, sub if is_module(sub) else base))
    return targets


def target_unit(target: str) -> str | None:
    """The clipperlite unit a dotted name is in: its top-level module, PACKAGE, or None."""
    parts = target.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else PACKAGE


def layering_violations(unit: str, targets: list[tuple[int, str]]) -> list[str]:
    """What is wrong with `unit` importing `targets` (empty when the imports go down only)."""
    problems = []
    for line, target in targets:
        other = target_unit(target)
        if other is None:
            top = target.split(".")[0]
            if (
                unit in LAYERS
                and top not in sys.stdlib_module_names
                and top not in CORE_DEPENDENCIES
            ):
                problems.append(
                    f"line {line}: core module {unit} imports third-party {target!r}; "
                    f"`import clipperlite` may need only {sorted(CORE_DEPENDENCIES)}"
                )
            continue
        if unit == "__init__" or other == unit:
            continue
        if unit in EXTRAS:
            if target in {f"{PACKAGE}.{e}" for e in EXTRA_IMPORTS.get(unit, ())}:
                continue
            if other != PACKAGE:
                problems.append(
                    f"line {line}: {unit} is an extra (above the core) and imports {target!r}; "
                    f"extras import only the public package `{PACKAGE}`"
                )
            continue
        mine = LAYERS[unit]
        if other == PACKAGE:
            problems.append(
                f"line {line}: core module {unit} imports the package `{PACKAGE}` itself; "
                "import the private module below instead"
            )
        elif other in EXTRAS:
            problems.append(f"line {line}: core module {unit} imports the extra {target!r}")
        elif other not in LAYERS:
            problems.append(f"line {line}: {unit} imports {target!r}, which has no layer")
        elif LAYERS[other] == mine:
            problems.append(
                f"line {line}: {unit} and {other} are both in layer {mine}; "
                "siblings must not import each other (let a higher layer join them)"
            )
        elif LAYERS[other] > mine:
            problems.append(
                f"line {line}: {unit} (layer {mine}) imports {other} (layer {LAYERS[other]}): "
                "imports must go down the layers"
            )
    return problems


SOURCES = sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_has_sources() -> None:
    """The checker sees the core modules (a wrong path would make every other test vacuous)."""
    units = {unit_of(p) for p in SOURCES}
    assert {"_clipper", "_types", "_batching", "__init__"} <= units


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_has_a_layer(path: Path) -> None:
    """Each private module or subpackage is placed in a layer (new ones must be added here)."""
    unit = unit_of(path)
    assert unit == "__init__" or unit in LAYERS or unit in EXTRAS, (
        f"{path.relative_to(SRC)} is in no layer: place {unit!r} in LAYERS (core) or EXTRAS "
        "(above the core) in tests/test_layering.py, following the layers of DESIGN.md"
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers(path: Path) -> None:
    """A module imports only from lower layers, never a sibling; extras only the public package."""
    unit = unit_of(path)
    if unit != "__init__" and unit not in LAYERS and unit not in EXTRAS:
        pytest.fail(f"{unit!r} has no layer: place it in a layer in tests/test_layering.py")
    name, is_package = module_name(path)
    targets = import_targets(path.read_text(encoding="utf-8"), name, is_package)
    problems = layering_violations(unit, targets)
    assert not problems, f"{path.relative_to(SRC)}:\n" + "\n".join(problems)


# -- the checker catches what it should --------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("clipperlite._selection", "from ._cache import PredictionCache", "siblings"),
        ("clipperlite._aimd", "from ._batching import Query", "go down"),
        ("clipperlite._types", "import clipperlite._clipper", "go down"),
        ("clipperlite._model", "from . import Clipper", "package"),
        ("clipperlite._cache", "import requests", "third-party"),
        ("clipperlite._batching", "def f():\n    import scipy.stats", "third-party"),
        ("clipperlite.testing._fakes", "from .._types import Prediction", "extras import only"),
        ("clipperlite.http", "from clipperlite._clipper import Clipper", "extras import only"),
        ("clipperlite.demo", "import clipperlite.testing", "extras import only"),
        ("clipperlite.http._app", "import clipperlite.demo", "extras import only"),
        ("clipperlite.prometheus", "import clipperlite.http", "extras import only"),
    ],
)
def test_the_checker_reports_violations(module: str, source: str, complaint: str) -> None:
    """Upward, sibling, private-from-extra and third-party imports are all reported."""
    unit = module.split(".")[1]
    problems = layering_violations(unit, import_targets(source, module, False))
    assert problems
    assert complaint in problems[0]


@pytest.mark.parametrize(
    ("module", "is_package", "source"),
    [
        ("clipperlite._batching", False, "from ._aimd import BatchSizer\nimport numpy as np"),
        ("clipperlite._clipper", False, "from . import _types, _errors"),
        ("clipperlite._clipper", False, "from ._model import ModelVersion\nimport asyncio"),
        ("clipperlite.testing._fakes", False, "from .. import Clipper\nimport pytest"),
        ("clipperlite.testing", True, "from ._fakes import echo\nfrom clipperlite import Clipper"),
        ("clipperlite.http", True, "import starlette\nfrom clipperlite import Prediction"),
        ("clipperlite.http._app", False, "from clipperlite.prometheus import ClipperCollector"),
        ("clipperlite.__main__", False, "from clipperlite import http, demo"),
    ],
)
def test_the_checker_allows_downward_imports(module: str, is_package: bool, source: str) -> None:
    """Downward imports, stdlib and core dependencies, and extras using the public API pass."""
    unit = module.split(".")[1]
    assert layering_violations(unit, import_targets(source, module, is_package)) == []


def test_the_layers_are_the_files() -> None:
    """Every module of the layer table exists (the table is DESIGN.md's, not a wish list)."""
    units = {unit_of(p) for p in SOURCES}
    assert set(LAYERS) <= units, f"missing: {sorted(set(LAYERS) - units)}"
