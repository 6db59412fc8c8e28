"""The package namespace: `__all__` lists exactly what clipperlite exposes, under its own name."""

from __future__ import annotations

import types

import clipperlite


def public_names() -> set[str]:
    """Names the package exposes: not private, not a submodule, not `from __future__` features."""
    return {
        name
        for name, value in vars(clipperlite).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }


def test_all_is_sorted() -> None:
    """`__all__` is kept in sorted order, with no duplicates."""
    assert clipperlite.__all__ == sorted(clipperlite.__all__)
    assert len(set(clipperlite.__all__)) == len(clipperlite.__all__)


def test_all_equals_the_public_names() -> None:
    """Everything public is in `__all__`, and everything in `__all__` exists."""
    assert set(clipperlite.__all__) == public_names()


def test_exported_objects_claim_the_public_module() -> None:
    """Each exported object's `__module__` is "clipperlite", so no private path leaks out."""
    for name in clipperlite.__all__:
        member = getattr(clipperlite, name)
        assert member.__module__ == "clipperlite", name


def test_star_import_gives_exactly_all() -> None:
    """`from clipperlite import *` binds exactly the names of `__all__`."""
    namespace: dict[str, object] = {}
    exec("from clipperlite import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(clipperlite.__all__)


def test_design_api_is_exported() -> None:
    """The names DESIGN.md promises are importable from the package."""
    promised = {
        "Clipper",
        "Prediction",
        "SelectionPolicy",
        "Exp3",
        "Exp4",
        "ClipperError",
        "InvalidInputError",
        "UnknownApplicationError",
        "UnknownModelError",
        "AlreadyExistsError",
        "ClipperClosedError",
        "WorkerDiedError",
        "DefaultCause",
        "Backend",
        "Replica",
        "BatchResult",
    }
    assert promised <= set(clipperlite.__all__)
