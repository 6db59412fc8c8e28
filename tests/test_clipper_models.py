"""Apps, links, model versions, endpoints, replicas and stopping models, via the public API."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from clipperlite import (
    AlreadyExistsError,
    Clipper,
    ClipperError,
    UnknownApplicationError,
    UnknownModelError,
)
from clipperlite import testing as fake
from helpers import app_stats, wait_until

pytestmark = pytest.mark.anyio


# -- applications and links --------------------------------------------------------------


async def test_registering_a_taken_app_name_raises(clipper: Clipper) -> None:
    """A second register_application under one name raises AlreadyExistsError."""
    clipper.register_application("app", "doubles", -1.0, 100_000)
    with pytest.raises(AlreadyExistsError, match="app"):
        clipper.register_application("app", "strings", "x", 50_000)
    assert clipper.get_app_info("app")["input_type"] == "doubles"


@pytest.mark.parametrize(
    ("args", "options"),
    [
        (("app", "doubles", 0.0, 0), {}),
        (("app", "doubles", 0.0, -5), {}),
        (("app", "doubles", 0.0, True), {}),
        (("app", "doubles", 0.0, "fast"), {}),
        (("app", "doubles", 0.0, float("inf")), {}),
        (("app", "doubles", 0.0, 1_000), {"min_confidence": 1.5}),
        (("app", "doubles", 0.0, 1_000), {"min_confidence": -0.1}),
        (("app", "doubles", 0.0, 1_000), {"policy": 42}),
        (("", "doubles", 0.0, 1_000), {}),
    ],
)
def test_nonsense_registrations_raise_clipper_error(
    args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """register_application refuses nonsense with a ClipperError and registers nothing."""
    c = Clipper()
    with pytest.raises(ClipperError):
        c.register_application(*args, **options)
    assert c.get_all_apps() == []


async def test_nonsense_per_query_slo_raises(clipper: Clipper) -> None:
    """predict with a zero, negative or non-numeric slo_micros raises ClipperError."""
    model = fake.counting()
    await clipper.create_endpoint("ep", "doubles", model)
    for slo in (0, -1, "soon", True):
        with pytest.raises(ClipperError):
            await clipper.predict("ep", [1.0], slo_micros=slo)  # type: ignore[arg-type]
    assert model.calls == 0


async def test_unknown_application_is_a_key_error(clipper: Clipper) -> None:
    """Naming an unknown app raises UnknownApplicationError, a KeyError, naming it."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    calls: list[Any] = [
        lambda: clipper.delete_application("ghost"),
        lambda: clipper.get_app_info("ghost"),
        lambda: clipper.get_linked_models("ghost"),
        lambda: clipper.link_model_to_app("ghost", "m"),
    ]
    for call in calls:
        with pytest.raises(UnknownApplicationError, match="ghost") as info:
            call()
        assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError):
        await clipper.predict("ghost", [1.0])
    with pytest.raises(UnknownApplicationError):
        await clipper.predict_batch("ghost", [[1.0]])


async def test_unknown_model_is_a_key_error(clipper: Clipper) -> None:
    """Naming an unknown model raises UnknownModelError, a KeyError, naming it."""
    clipper.register_application("app", "doubles", -1.0, 100_000)
    with pytest.raises(UnknownModelError, match="ghost") as info:
        clipper.link_model_to_app("app", "ghost")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownModelError):
        clipper.get_model_info("ghost")
    with pytest.raises(UnknownModelError):
        clipper.set_model_version("ghost", 1)
    with pytest.raises(UnknownModelError):
        await clipper.set_num_replicas("ghost", 2)
    with pytest.raises(UnknownModelError):
        await clipper.stop_model("ghost")


async def test_link_across_input_types_names_both(clipper: Clipper) -> None:
    """Linking a model of another input type raises ClipperError naming app, model and types."""
    clipper.register_application("text-app", "strings", "", 100_000)
    await clipper.deploy_model("num-model", 1, "doubles", fake.echo)
    with pytest.raises(ClipperError) as info:
        clipper.link_model_to_app("text-app", "num-model")
    message = str(info.value)
    for word in ("text-app", "num-model", "strings", "doubles"):
        assert word in message
    assert clipper.get_linked_models("text-app") == []


async def test_aliases_of_an_input_type_link(clipper: Clipper) -> None:
    """Clipper's aliases name the same input type: an "ints" app links an "integers" model."""
    clipper.register_application("app", "ints", -1, 100_000)
    await clipper.deploy_model("m", 1, "integers", lambda xs: [int(x.sum()) for x in xs])
    clipper.link_model_to_app("app", "m")
    assert (await clipper.predict("app", [1, 2, 3])).output == 6


async def test_unknown_input_type_raises(clipper: Clipper) -> None:
    """An unknown input type is a ClipperError at registration and at deploy time."""
    with pytest.raises(ClipperError, match="tensors"):
        clipper.register_application("app", "tensors", None, 100_000)
    with pytest.raises(ClipperError, match="tensors"):
        await clipper.deploy_model("m", 1, "tensors", fake.echo)
    assert clipper.get_all_apps() == []
    assert clipper.get_all_models() == []


async def test_unknown_policy_name_raises(clipper: Clipper) -> None:
    """An unknown policy name raises ClipperError naming it; the app is not registered."""
    with pytest.raises(ClipperError, match="exp9"):
        clipper.register_application("app", "doubles", -1.0, 100_000, policy="exp9")
    assert clipper.get_all_apps() == []


async def test_unlink_stops_an_app_from_querying_a_model(clipper: Clipper) -> None:
    """After unlink_model_from_app the app answers its default and the model is not called."""
    model = fake.counting(fake.constant(1.0))
    clipper.register_application("app", "doubles", -1.0, 100_000)
    await clipper.deploy_model("m", 1, "doubles", model)
    clipper.link_model_to_app("app", "m")
    assert (await clipper.predict("app", [1.0])).output == 1.0
    clipper.unlink_model_from_app("app", "m")
    assert clipper.get_linked_models("app") == []
    p = await clipper.predict("app", [2.0])
    assert p.default
    assert "app" in (p.default_explanation or "")
    assert model.calls == 1
    with pytest.raises(ClipperError):
        clipper.unlink_model_from_app("app", "m")


async def test_delete_application_frees_its_name(clipper: Clipper) -> None:
    """A deleted app no longer answers, and its name can be registered again."""
    await clipper.create_endpoint("app", "doubles", fake.constant(1.0))
    clipper.delete_application("app")
    assert clipper.get_all_apps() == []
    with pytest.raises(UnknownApplicationError):
        await clipper.predict("app", [1.0])
    clipper.register_application("app", "doubles", -2.0, 100_000)
    clipper.link_model_to_app("app", "app")
    assert (await clipper.predict("app", [1.0])).output == 1.0


# -- versions ---------------------------------------------------------------------------


async def test_int_and_str_versions_are_one_version(clipper: Clipper) -> None:
    """1 and "1" are the same version: the second deploy raises AlreadyExistsError."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    with pytest.raises(AlreadyExistsError):
        await clipper.deploy_model("m", "1", "doubles", fake.echo)
    assert clipper.get_model_info("m", "1")["version"] == 1
    assert clipper.get_num_replicas("m", "1") == 1


async def test_versions_are_reported_as_first_given(clipper: Clipper) -> None:
    """An int version is reported as that int, a str version as that str."""
    await clipper.deploy_model("m", 7, "doubles", fake.echo)
    current = clipper.get_current_model_version("m")
    assert current == 7
    assert isinstance(current, int)
    await clipper.deploy_model("m", "canary", "doubles", fake.echo)
    assert clipper.get_current_model_version("m") == "canary"
    assert clipper.get_model_info("m", "7")["version"] == 7


async def test_a_bool_is_not_a_version(clipper: Clipper) -> None:
    """A bool version raises ClipperError at deploy time and in set_model_version."""
    with pytest.raises(ClipperError):
        await clipper.deploy_model("m", True, "doubles", fake.echo)
    assert clipper.get_all_models() == []
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    with pytest.raises(ClipperError):
        clipper.set_model_version("m", True)
    with pytest.raises(ClipperError):
        await clipper.deploy_model("m", 1.5, "doubles", fake.echo)  # type: ignore[arg-type]


async def test_rollback_is_instant_and_answers_from_the_old_version(clipper: Clipper) -> None:
    """set_model_version makes an older version current at once; answers come from it."""
    v1 = fake.counting(fake.constant("one"))
    v2 = fake.counting(fake.constant("two"))
    clipper.register_application("app", "doubles", "default", 1_000_000)
    await clipper.deploy_model("m", 1, "doubles", v1)
    clipper.link_model_to_app("app", "m")
    assert (await clipper.predict("app", [1.0])).output == "one"
    await clipper.deploy_model("m", 2, "doubles", v2)
    assert clipper.get_current_model_version("m") == 2
    assert (await clipper.predict("app", [1.0])).output == "two"
    clipper.set_model_version("m", 1)
    assert clipper.get_current_model_version("m") == 1
    assert (await clipper.predict("app", [1.0])).output == "one"
    clipper.set_model_version("m", "2")
    assert (await clipper.predict("app", [1.0])).output == "two"
    assert (v1.calls, v2.calls) == (1, 1)  # each version's answer was cached per version


async def test_set_model_version_to_an_unknown_version_raises(clipper: Clipper) -> None:
    """set_model_version to a version never deployed raises a ClipperError naming it."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    with pytest.raises(ClipperError, match="3"):
        clipper.set_model_version("m", 3)
    assert clipper.get_current_model_version("m") == 1


async def test_stopping_the_current_version_falls_back(clipper: Clipper) -> None:
    """Stopping the current version hands queries to another deployed version."""
    v1 = fake.counting(fake.constant("one"))
    v2 = fake.counting(fake.constant("two"))
    clipper.register_application("app", "doubles", "default", 1_000_000)
    await clipper.deploy_model("m", 1, "doubles", v1)
    await clipper.deploy_model("m", 2, "doubles", v2)
    clipper.link_model_to_app("app", "m")
    assert (await clipper.predict("app", [1.0])).output == "two"
    await clipper.stop_model("m", 2)
    with pytest.raises(UnknownModelError):
        clipper.get_model_info("m", 2)
    assert clipper.get_current_model_version("m") == 1
    assert (await clipper.predict("app", [2.0])).output == "one"
    assert v2.calls == 1


async def test_a_new_version_must_keep_the_input_type(clipper: Clipper) -> None:
    """Deploying a version of a model with another input type raises ClipperError."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    with pytest.raises(ClipperError):
        await clipper.deploy_model("m", 2, "strings", fake.echo)
    assert clipper.get_current_model_version("m") == 1


async def test_a_missing_backend_is_an_error_at_deploy_time(clipper: Clipper) -> None:
    """A backend this build lacks raises ClipperError at deploy time and deploys nothing."""
    with pytest.raises(ClipperError, match="no-such-engine"):
        await clipper.deploy_model("m", 1, "doubles", fake.echo, backend="no-such-engine")
    assert clipper.get_all_models() == []


async def test_concurrent_deploys_of_one_version_raise_already_exists() -> None:
    """Concurrent deploys of one version: one raises AlreadyExistsError, no thread leaks."""
    before = set(threading.enumerate())
    async with Clipper() as c:
        results = await asyncio.gather(
            c.deploy_model("m", 1, "doubles", fake.constant("first")),
            c.deploy_model("m", "1", "doubles", fake.constant("second")),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], AlreadyExistsError)
        assert c.get_num_replicas("m") == 1
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []


# -- create_endpoint --------------------------------------------------------------------


async def test_create_endpoint_registers_deploys_and_links(clipper: Clipper) -> None:
    """create_endpoint makes an app and a model under one name, linked, that answers."""
    await clipper.create_endpoint(
        "ep", "doubles", lambda xs: [float(x.sum()) for x in xs], default_output=0.0
    )
    assert clipper.get_all_apps() == ["ep"]
    assert clipper.get_all_models() == ["ep"]
    assert clipper.get_linked_models("ep") == ["ep"]
    assert clipper.get_current_model_version("ep") == 1
    info = clipper.get_app_info("ep")
    assert info["default_output"] == 0.0
    assert info["slo_micros"] == 3_000_000
    assert (await clipper.predict("ep", [1.0, 2.0])).output == 3.0


@pytest.mark.parametrize(
    "options",
    [{"backend": "no-such-engine"}, {"batch_size": 0}, {"num_replicas": -1}, {"bogus": 1}],
)
async def test_failed_create_endpoint_leaves_nothing(
    clipper: Clipper, options: dict[str, Any]
) -> None:
    """A create_endpoint whose deployment fails registers no app and no model."""
    with pytest.raises((ClipperError, TypeError)):
        await clipper.create_endpoint("ep", "doubles", fake.echo, **options)
    assert clipper.get_all_apps() == []
    assert clipper.get_all_models() == []
    await clipper.create_endpoint("ep", "doubles", fake.constant(5.0))
    assert (await clipper.predict("ep", [1.0])).output == 5.0


async def test_create_endpoint_over_an_existing_app_leaves_it_alone(clipper: Clipper) -> None:
    """create_endpoint under a taken app name raises AlreadyExistsError; the app is intact."""
    clipper.register_application("ep", "strings", "keep", 100_000)
    with pytest.raises(AlreadyExistsError):
        await clipper.create_endpoint("ep", "doubles", fake.echo)
    assert clipper.get_app_info("ep")["default_output"] == "keep"
    assert clipper.get_all_models() == []


# -- replicas ---------------------------------------------------------------------------


async def test_replicas_run_batches_in_parallel(clipper: Clipper) -> None:
    """Two replicas run two batches at the same time (a 2-party barrier is passed)."""
    barrier = threading.Barrier(2, timeout=5)

    def model(xs: list[Any]) -> list[Any]:
        barrier.wait()
        return [1.0] * len(xs)

    await clipper.create_endpoint(
        "ep", "doubles", model, default_output=-1.0, num_replicas=2, batch_size=1
    )
    assert clipper.get_num_replicas("ep") == 2
    a, b = await asyncio.gather(clipper.predict("ep", [1.0]), clipper.predict("ep", [2.0]))
    assert (a.output, b.output) == (1.0, 1.0)


async def test_zero_replicas_answer_queued_and_new_queries_at_once(clipper: Clipper) -> None:
    """With 0 replicas queued and new queries get the no-replica default at once."""
    model = fake.counting(fake.slow(0.3))
    clipper.register_application("app", "doubles", -1.0, 10_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", model, batch_size=1)
    clipper.link_model_to_app("app", "model-x")
    running = asyncio.ensure_future(clipper.predict("app", [1.0]))
    await wait_until(lambda: model.calls == 1)
    queued = asyncio.ensure_future(clipper.predict("app", [2.0]))
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    scaling = asyncio.ensure_future(clipper.set_num_replicas("model-x", 0))
    p = await asyncio.wait_for(queued, 1.0)
    assert time.monotonic() - t0 < 1.0
    assert p.default
    text = p.default_explanation or ""
    assert "app" in text
    assert "model-x" in text
    assert "replica" in text
    await scaling
    assert clipper.get_num_replicas("model-x") == 0
    t0 = time.monotonic()
    p = await clipper.predict("app", [3.0])
    assert time.monotonic() - t0 < 1.0
    assert p.default
    assert "replica" in (p.default_explanation or "")
    first = await running
    assert not first.default
    assert model.inputs[0].tolist() == [1.0]
    assert model.calls == 1


async def test_zero_replicas_still_serve_cached_answers(clipper: Clipper) -> None:
    """With 0 replicas a cached answer is still served, without a default."""
    model = fake.counting(fake.constant(4.0))
    await clipper.create_endpoint("ep", "doubles", model, default_output=-1.0)
    assert (await clipper.predict("ep", [1.0])).output == 4.0
    await clipper.set_num_replicas("ep", 0)
    p = await clipper.predict("ep", [1.0])
    assert (p.output, p.default) == (4.0, False)
    assert (await clipper.predict("ep", [2.0])).default
    assert model.calls == 1


async def test_scaling_back_up_serves_again(clipper: Clipper) -> None:
    """After set_num_replicas(0), scaling back up answers new queries from the model."""
    await clipper.create_endpoint("ep", "doubles", fake.constant(4.0), default_output=-1.0)
    await clipper.set_num_replicas("ep", 0)
    assert (await clipper.predict("ep", [1.0])).default
    await clipper.set_num_replicas("ep", 3)
    assert clipper.get_num_replicas("ep") == 3
    p = await clipper.predict("ep", [2.0])
    assert (p.output, p.default) == (4.0, False)
    await clipper.set_num_replicas("ep", 1)
    assert clipper.get_num_replicas("ep") == 1
    assert (await clipper.predict("ep", [3.0])).output == 4.0


async def test_set_num_replicas_of_one_version(clipper: Clipper) -> None:
    """set_num_replicas with a version scales that version only."""
    await clipper.deploy_model("m", 1, "doubles", fake.echo)
    await clipper.deploy_model("m", 2, "doubles", fake.echo)
    await clipper.set_num_replicas("m", 2, version=1)
    assert clipper.get_num_replicas("m", 1) == 2
    assert clipper.get_num_replicas("m") == 1
    with pytest.raises(ClipperError):
        await clipper.set_num_replicas("m", 1, version=9)


# -- stop_model -------------------------------------------------------------------------


async def test_stopped_model_gives_linked_apps_explained_defaults(clipper: Clipper) -> None:
    """After stop_model, a linked app answers its default, naming the app and the model."""
    model = fake.counting(fake.constant(1.0))
    clipper.register_application("app", "doubles", -1.0, 1_000_000)
    await clipper.deploy_model("model-x", 1, "doubles", model)
    clipper.link_model_to_app("app", "model-x")
    assert not (await clipper.predict("app", [1.0])).default
    await clipper.stop_model("model-x")
    assert "model-x" not in clipper.get_all_models()
    t0 = time.monotonic()
    p = await clipper.predict("app", [2.0])
    assert time.monotonic() - t0 < 0.5
    assert (p.output, p.default) == (-1.0, True)
    text = p.default_explanation or ""
    assert "'app'" in text
    assert "model-x" in text
    assert model.calls == 1


async def test_stop_model_version_keeps_the_others(clipper: Clipper) -> None:
    """stop_model with a version stops only that version."""
    await clipper.deploy_model("m", 1, "doubles", fake.constant(1.0))
    await clipper.deploy_model("m", 2, "doubles", fake.constant(2.0))
    await clipper.stop_model("m", 1)
    with pytest.raises(UnknownModelError):
        clipper.get_num_replicas("m", 1)
    assert clipper.get_current_model_version("m") == 2
    assert clipper.get_all_models() == ["m"]


async def test_numeric_inputs_reach_models_as_1d_arrays(clipper: Clipper) -> None:
    """integers, floats and doubles reach a model as 1-D int32, float32, float64 arrays."""
    seen: dict[str, Any] = {}
    for itype, dtype in (("integers", np.int32), ("floats", np.float32), ("doubles", np.float64)):

        def model(xs: list[Any], itype: str = itype) -> list[Any]:
            seen[itype] = xs[0]
            return [0] * len(xs)

        await clipper.create_endpoint(itype, itype, model)
        await clipper.predict(itype, [1, 2, 3])
        x = seen[itype]
        assert isinstance(x, np.ndarray)
        assert x.ndim == 1
        assert x.dtype == dtype
        assert x.tolist() == [1, 2, 3]


async def test_predict_counts_in_app_metrics(clipper: Clipper) -> None:
    """metrics() counts an app's queries, answered ones and defaults."""
    await clipper.create_endpoint("ep", "doubles", fake.flaky(fail_every=2), default_output=0.0)
    results = [await clipper.predict("ep", [float(i)]) for i in range(6)]
    stats = app_stats(clipper, "ep")
    assert stats["queries"] == 6
    assert stats["answered"] == sum(not r.default for r in results) == 3
    assert sum(stats["defaults"].values()) == 3
