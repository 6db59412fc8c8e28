"""The Registry's configuration rules, without an event loop: names, input types across
versions and pending deploys, links and policy re-initialisation, SLO -> batch budget,
version resolution, stopped versions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from clipperlite import (
    AlreadyExistsError,
    ClipperError,
    UnknownApplicationError,
    UnknownModelError,
)
from clipperlite._backends import ThreadBackend
from clipperlite._clock import FakeClock
from clipperlite._model import ModelVersion, budget_for
from clipperlite._registry import DeploySpec, Registry


def _f(xs: list[Any]) -> list[Any]:
    return xs


def spec(name: str = "m", version: int | str = 1, input_type: str = "doubles") -> DeploySpec:
    return DeploySpec.check(
        name, version, input_type, _f, num_replicas=1, batch_size=None,
        batch_wait_micros=0, max_queue=100,
    )  # fmt: skip


def version(s: DeploySpec) -> ModelVersion:
    return ModelVersion(
        s.name, s.version, s.input_type, s.func, backend=ThreadBackend(), backend_name="thread",
        batch_size=s.batch_size, batch_wait=s.batch_wait, max_queue=s.max_queue,
        clock=FakeClock(),
    )  # fmt: skip


def deploy(r: Registry, s: DeploySpec) -> ModelVersion:
    r.begin_deploy(s)
    mv = version(s)
    r.end_deploy(s)
    r.add_version(mv)
    return mv


@pytest.fixture
def registry() -> Registry:
    return Registry(np.random.default_rng(0))


def test_app_names_are_unique_and_errors_name_the_fix(registry: Registry) -> None:
    """A second app of one name is AlreadyExistsError saying what to do."""
    registry.register_application("a", "doubles", 0.0, 1000, "exp3", None)
    with pytest.raises(AlreadyExistsError, match="delete_application"):
        registry.register_application("a", "doubles", 0.0, 1000, "exp3", None)
    with pytest.raises(UnknownApplicationError):
        registry.app("b")


def test_links_need_the_same_input_type(registry: Registry) -> None:
    """A model taking another input type cannot be linked."""
    registry.register_application("a", "doubles", 0.0, 1000, "exp3", None)
    deploy(registry, spec("s", input_type="strings"))
    with pytest.raises(ClipperError, match="same input type"):
        registry.link("a", "s")
    assert registry.app("a").links == ()


def test_versions_of_a_model_share_its_input_type_also_while_pending(registry: Registry) -> None:
    """A version (deployed or still starting) fixes the input type of the others."""
    registry.begin_deploy(spec("m", 1))
    with pytest.raises(AlreadyExistsError, match="being deployed"):
        registry.begin_deploy(spec("m", 1))
    with pytest.raises(ClipperError, match="being deployed taking doubles"):
        registry.begin_deploy(spec("m", 2, "strings"))
    registry.end_deploy(spec("m", 1))
    deploy(registry, spec("m", 1))
    with pytest.raises(AlreadyExistsError, match="stop_model"):
        registry.begin_deploy(spec("m", "1"))  # "1" and 1 are one version
    with pytest.raises(ClipperError, match="takes doubles"):
        registry.begin_deploy(spec("m", 2, "strings"))


def test_a_linked_model_cannot_change_type(registry: Registry) -> None:
    """A model linked to an app cannot be redeployed taking another type."""
    registry.register_application("a", "doubles", 0.0, 1000, "exp3", None)
    deploy(registry, spec("m"))
    registry.link("a", "m")
    registry.take_out_of_service("m", None)
    with pytest.raises(ClipperError, match="unlink it first"):
        registry.begin_deploy(spec("m", 2, "strings"))


def test_the_budget_follows_the_tightest_linked_slo(registry: Registry) -> None:
    """B = SLO/2 of the tightest app linking the model, re-derived as links change."""
    registry.register_application("fast", "doubles", 0.0, 20_000, "exp3", None)
    registry.register_application("slow", "doubles", 0.0, 200_000, "exp3", None)
    mv = deploy(registry, spec("m"))
    registry.link("slow", "m")
    assert mv.sizer.budget == pytest.approx(budget_for(0.2, 0.0)) == pytest.approx(0.1)  # type: ignore[union-attr]
    registry.link("fast", "m")
    assert mv.sizer.budget == pytest.approx(0.01)  # type: ignore[union-attr]
    registry.delete_application("fast")
    assert mv.sizer.budget == pytest.approx(0.1)  # type: ignore[union-attr]


def test_versions_resolve_and_roll_back(registry: Registry) -> None:
    """The newest deploy is current; set_current rolls back; taking the current one out
    makes the newest remaining current, and its figures are kept as stopped."""
    v1 = deploy(registry, spec("m", 1))
    v2 = deploy(registry, spec("m", "two"))
    assert registry.version("m", None) is v2 and registry.is_current(v2)
    registry.set_current("m", 1)
    assert registry.version("m", None) is v1
    with pytest.raises(UnknownModelError, match="no deployed version 3"):
        registry.version("m", 3)
    with pytest.raises(ClipperError, match=r"int or a str"):
        registry.version("m", True)
    assert registry.take_out_of_service("m", 1) == [v1]
    assert registry.version("m", None) is v2
    assert registry.any_version("m", 1) is v1
    registry.take_out_of_service("m", None)
    assert "m" not in registry.models
    assert registry.any_version("m", None) is v2
    fresh = deploy(registry, spec("m", 1))
    assert registry.any_version("m", 1) is fresh


def test_relinking_reinitialises_policy_state_or_keeps_the_links(registry: Registry) -> None:
    """A policy whose init_state raises on new links leaves the links as they were."""

    class Picky:
        def init_state(self, models: list[str], previous: Any = None) -> Any:
            if len(models) > 1:
                raise ValueError("one model only")
            return {"models": models}

        def select(self, state: Any, x: Any) -> list[str]:
            return list(state["models"])

        def combine(self, state: Any, x: Any, outputs: dict[str, Any]) -> tuple[Any, float]:
            return next(iter(outputs.values())), 1.0

        def observe(self, state: Any, x: Any, y: Any, outputs: dict[str, Any]) -> Any:
            return state

    registry.register_application("a", "doubles", 0.0, 1000, Picky(), None)
    deploy(registry, spec("m1"))
    deploy(registry, spec("m2"))
    registry.link("a", "m1")
    app = registry.app("a")
    assert app.policy_state() == {"models": ["m1"]}
    with pytest.raises(ClipperError, match=r"init_state raised ValueError.*not changed"):
        registry.link("a", "m2")
    assert app.links == ("m1",)
