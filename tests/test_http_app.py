"""The ASGI app through httpx's ASGI transport: every route, every error status, fuzzed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the http extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (a test need) is not installed")

import anyio.from_thread  # noqa: E402
import anyio.to_thread  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from clipperlite import Clipper, ClipperError  # noqa: E402
from clipperlite.http import create_app  # noqa: E402

BASE = "http://clipper"


async def deploy_models(clipper: Clipper) -> None:
    """One app per input type, a str-output model, a numpy one and an app with no model."""
    clipper.register_application("hello-world", "doubles", -1.0, 2_000_000)
    await clipper.deploy_model("sum", 1, "doubles", lambda xs: [float(x.sum()) for x in xs])
    clipper.link_model_to_app("hello-world", "sum")
    await clipper.create_endpoint("ints", "integers", lambda xs: [x * 2 for x in xs])
    await clipper.create_endpoint("floats", "floats", lambda xs: [np.float32(x[0]) for x in xs])
    await clipper.create_endpoint("bytes", "bytes", lambda xs: [len(x) for x in xs])
    await clipper.create_endpoint("strings", "strings", lambda xs: [str(len(x)) for x in xs])
    await clipper.create_endpoint("any", "any", lambda xs: list(xs))
    clipper.register_application("secret-unlinked", "doubles", "none", 100_000)


@pytest.fixture
async def clipper() -> AsyncIterator[Clipper]:
    """A started Clipper with the test models deployed."""
    async with Clipper() as c:
        await deploy_models(c)
        yield c


@pytest.fixture
async def client(clipper: Clipper) -> AsyncIterator[Any]:
    """An httpx client talking to create_app(clipper) in-process."""
    transport = httpx.ASGITransport(app=create_app(clipper, max_body_bytes=1000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as h:
        yield h


# -- predict -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_quickstart_query_answers_like_clipper(client: Any) -> None:
    """Clipper's quickstart body gets Clipper's answer, byte for byte."""
    r = await client.post("/hello-world/predict", json={"input": [1.1, 2.2, 3.3]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == b'{"query_id":0,"output":6.6,"default":false}'


@pytest.mark.anyio
async def test_input_batch_answers_one_prediction_per_input_in_order(client: Any) -> None:
    """input_batch gives batch_predictions, in order, each with its own query_id."""
    r = await client.post("/hello-world/predict", json={"input_batch": [[1.0], [2.0, 3.0], [4.0]]})
    assert r.status_code == 200
    answers = r.json()["batch_predictions"]
    assert [a["output"] for a in answers] == [1.0, 5.0, 4.0]
    assert len({a["query_id"] for a in answers}) == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("app", "x", "output"),
    [
        ("ints", [1, 2], [2, 4]),
        ("floats", [0.5], 0.5),
        ("bytes", "aGVsbG8=", 5),
        ("strings", "four", 4),
        ("any", {"a": [1, None]}, {"a": [1, None]}),
    ],
)
async def test_every_input_type_travels(client: Any, app: str, x: Any, output: Any) -> None:
    """Each input type's JSON form reaches its model; numpy and str outputs come back as JSON."""
    r = await client.post(f"/{app}/predict", json={"input": x})
    assert r.status_code == 200, r.text
    assert r.json()["output"] == output


@pytest.mark.anyio
async def test_a_default_says_why(client: Any) -> None:
    """A default answer carries its explanation and its cause."""
    r = await client.post("/secret-unlinked/predict", json={"input": [1.0]})
    body = r.json()
    assert (r.status_code, body["default"], body["output"]) == (200, True, "none")
    assert body["default_cause"] == "no_model"
    assert "secret-unlinked" in body["default_explanation"]


@pytest.mark.anyio
async def test_slo_micros_is_passed_through(client: Any) -> None:
    """A query's own slo_micros is used (a valid one is answered)."""
    r = await client.post("/hello-world/predict", json={"input": [1.0], "slo_micros": 500_000})
    assert r.status_code == 200
    assert r.json()["output"] == 1.0


@pytest.mark.anyio
async def test_context_is_passed_through(client: Any, clipper: Clipper) -> None:
    """A "context" in predict, input_batch and update bodies reaches the Clipper: that
    context gets a policy state of its own."""
    assert clipper.get_policy_state("hello-world", "user-1") is None
    r = await client.post("/hello-world/predict", json={"input": [1.0], "context": "user-1"})
    assert r.status_code == 200
    assert clipper.get_policy_state("hello-world", "user-1") is not None
    r = await client.post(
        "/hello-world/predict", json={"input_batch": [[1.0], [2.0]], "context": "user-2"}
    )
    assert r.status_code == 200
    assert clipper.get_policy_state("hello-world", "user-2") is not None
    r = await client.post(
        "/hello-world/update", json={"input": [1.0], "label": 1.0, "context": "user-3"}
    )
    assert r.status_code == 200
    assert clipper.get_policy_state("hello-world", "user-3") is not None


# -- update ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_answers_ok_and_ignores_uid(client: Any) -> None:
    """Clipper's update body (with its uid) is feedback, answered {"ok": true}."""
    r = await client.post("/hello-world/update", json={"uid": 0, "input": [1.0], "label": 1.0})
    assert (r.status_code, r.json()) == (200, {"ok": True})


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/hello-world/predict", b"{not json", "malformed JSON"),
        ("/hello-world/predict", b'{"input": [NaN]}', "malformed JSON"),
        ("/hello-world/predict", b"[1, 2]", "malformed request"),
        ("/hello-world/predict", b'{"inputs": [1]}', "malformed request"),
        ("/hello-world/predict", b'{"input": [1], "slo_micros": -1}', "malformed request"),
        ("/hello-world/update", b'{"input": [1.0]}', "malformed request"),
        ("/hello-world/predict", b'{"input": "abc"}', "invalid input"),
        ("/hello-world/predict", b'{"input_batch": [[1.0], ["x"]]}', "invalid input"),
        ("/bytes/predict", b'{"input": "***"}', "invalid input"),
        ("/strings/predict", b'{"input": ""}', "invalid input"),
    ],
)
async def test_bad_requests_are_400_with_a_cause(
    client: Any, path: str, body: bytes, error: str
) -> None:
    """Malformed JSON, a missing field or an invalid input is a 400 saying what was wrong."""
    r = await client.post(path, content=body)
    assert r.status_code == 400
    answer = r.json()
    assert answer["error"] == error
    assert answer["cause"]


@pytest.mark.anyio
async def test_an_invalid_input_400_carries_the_clippers_message(client: Any) -> None:
    """The cause of an invalid input is the InvalidInputError message, naming app and type."""
    r = await client.post("/hello-world/predict", json={"input": [1.0, "abc"]})
    assert "hello-world" in r.json()["cause"]
    assert "doubles" in r.json()["cause"]


@pytest.mark.anyio
@pytest.mark.parametrize("route", ["predict", "update"])
async def test_an_unknown_app_is_404_without_listing_the_apps(client: Any, route: str) -> None:
    """A 404 for an unknown app names it and none of the apps that exist."""
    r = await client.post(f"/nope/{route}", json={"input": [1.0], "label": 1.0})
    assert r.status_code == 404
    assert "nope" in r.json()["cause"]
    assert "secret-unlinked" not in r.text
    assert "hello-world" not in r.text


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/hello-world", "/a/b/c/predict", "/hello-world/train"])
async def test_an_unknown_route_is_404(client: Any, path: str) -> None:
    """A path that is no route is a JSON 404."""
    r = await client.post(path, json={})
    assert r.status_code == 404
    assert r.json()["error"] == "not found"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/hello-world/predict"), ("PUT", "/hello-world/update"), ("POST", "/metrics"),
     ("DELETE", "/health")],
)  # fmt: skip
async def test_a_wrong_method_is_405(client: Any, method: str, path: str) -> None:
    """A route called with the wrong method is a 405 saying which are allowed."""
    r = await client.request(method, path)
    assert r.status_code == 405
    assert "allow" in r.headers


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_413_by_its_length(client: Any) -> None:
    """A body whose Content-Length is over max_body_bytes is refused before it is read."""
    r = await client.post("/hello-world/predict", content=b"{" + b" " * 2000 + b"}")
    assert r.status_code == 413


@pytest.mark.anyio
async def test_a_streamed_body_over_the_limit_is_413(client: Any) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"input": ['
        for _ in range(500):
            yield b"1.0, "
        yield b"1.0]}"

    r = await client.post("/hello-world/predict", content=chunks())
    assert r.status_code == 413


@pytest.mark.anyio
async def test_a_stopped_clipper_is_503(clipper: Clipper, client: Any) -> None:
    """After the Clipper stopped, queries and health are 503."""
    await clipper.stop()
    r = await client.post("/hello-world/predict", json={"input": [1.0]})
    assert r.status_code == 503
    assert (await client.get("/health")).status_code == 503


# -- health, metrics, lifespan -------------------------------------------------------------------


@pytest.mark.anyio
async def test_health_is_ok_while_running(client: Any) -> None:
    """GET /health is 200 {"status": "ok"} while the Clipper runs."""
    r = await client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


@pytest.mark.anyio
async def test_metrics_is_prometheus_text(client: Any) -> None:
    """GET /metrics serves the collector's metrics in Prometheus' text format."""
    await client.post("/hello-world/predict", json={"input": [1.0]})
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'clipperlite_queries_total{app="hello-world"} 1.0' in r.text


@pytest.mark.anyio
async def test_the_lifespan_starts_and_stops_a_clipper_it_was_given_stopped() -> None:
    """A Clipper not yet running is started at startup and stopped at shutdown."""
    clipper = Clipper()
    app = create_app(clipper)
    async with app.router.lifespan_context(app):
        assert clipper.running
    assert not clipper.running


@pytest.mark.anyio
async def test_the_lifespan_leaves_a_running_clipper_alone(clipper: Clipper) -> None:
    """A Clipper already running belongs to its caller: the lifespan does not stop it."""
    app = create_app(clipper)
    async with app.router.lifespan_context(app):
        pass
    assert clipper.running


@pytest.mark.anyio
async def test_a_factory_is_run_at_startup_and_its_clipper_stopped_at_shutdown() -> None:
    """An async factory's Clipper serves between startup and shutdown; 503 before."""
    made: list[Clipper] = []

    async def make() -> Clipper:
        c = await Clipper().start()
        await deploy_models(c)
        made.append(c)
        return c

    app = create_app(make)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as h:
        assert (await h.get("/health")).status_code == 503
        assert (await h.get("/metrics")).status_code == 503
        async with app.router.lifespan_context(app):
            r = await h.post("/hello-world/predict", json={"input": [2.0]})
            assert r.json()["output"] == 2.0
            assert (await h.get("/metrics")).status_code == 200
        assert not made[0].running


@pytest.fixture
def clipper_on_another_loop() -> Iterator[Clipper]:
    """A Clipper started on an event loop in another thread (docs/sync.md's setup)."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        clipper = portal.call(lambda: Clipper(shutdown_grace_s=0.5).start())
        portal.call(deploy_models, clipper)
        yield clipper
        portal.call(clipper.stop)


@pytest.mark.anyio
async def test_a_clipper_on_another_loop_is_a_500_never_a_4xx(
    clipper_on_another_loop: Clipper,
) -> None:
    """Valid queries to a Clipper running on another event loop are 500s naming the
    misconfiguration, and /health is 503 (the lifespan would have refused to start)."""
    transport = httpx.ASGITransport(app=create_app(clipper_on_another_loop))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as h:
        for route, body in [
            ("/hello-world/predict", {"input": [1.0]}),
            ("/hello-world/predict", {"input_batch": [[1.0]]}),
            ("/hello-world/update", {"input": [1.0], "label": 1.0}),
        ]:
            r = await h.post(route, json=body)
            assert r.status_code == 500, r.text
            assert r.json()["error"] == "server misconfigured"
            assert "another event loop" in r.json()["cause"]
            assert "async factory" in r.json()["cause"]
        assert (await h.get("/health")).status_code == 503


@pytest.mark.anyio
async def test_the_lifespan_refuses_a_clipper_on_another_loop(
    clipper_on_another_loop: Clipper,
) -> None:
    """Startup fails, saying what to do, for a Clipper already running on another loop."""
    app = create_app(clipper_on_another_loop)
    with pytest.raises(ClipperError, match=r"another event loop.*async factory"):
        async with app.router.lifespan_context(app):
            pass
    assert clipper_on_another_loop.running  # its owner's to stop


@pytest.mark.anyio
async def test_the_lifespan_refuses_a_clipper_whose_loop_has_ended() -> None:
    """A Clipper left running by an asyncio.run that returned cannot be served either."""
    clipper = await anyio.to_thread.run_sync(lambda: asyncio.run(Clipper().start()))
    app = create_app(clipper)
    with pytest.raises(ClipperError, match="another event loop"):
        async with app.router.lifespan_context(app):
            pass


def test_create_app_checks_its_arguments() -> None:
    """A target that is not a Clipper or a factory, or a bad limit, is refused at once."""
    with pytest.raises(TypeError):
        create_app(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(Clipper(), max_body_bytes=0)


# -- fuzz ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
#: Any character a client can percent-encode (lone surrogates have no UTF-8 form).
chars = st.characters(blacklist_categories=("Cs",))
apps = st.sampled_from(
    ["hello-world", "ints", "floats", "bytes", "strings", "any", "secret-unlinked", "nope"]
) | st.text(chars.filter(lambda c: c not in "/?#"), min_size=1, max_size=8)
paths = st.one_of(
    st.builds(lambda a, r: f"/{quote(a)}/{r}", apps, st.sampled_from(["predict", "update"])),
    st.sampled_from(["/metrics", "/health", "/", "//predict", "/a/b/predict"]),
    st.text(chars, max_size=12).map(lambda s: "/" + quote(s, safe="/")),  # percent-encoded
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "input": json_values,
            "input_batch": st.lists(json_values, max_size=3) | json_values,
            "label": json_values,
            "slo_micros": json_values,
            "context": json_values,
            "uid": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(min_size=1001, max_size=1100),  # over the limit
)
methods = st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


@pytest.fixture(scope="module")
def portal_client() -> Iterator[tuple[Any, Any]]:
    """A Clipper and an httpx client on an event loop in another thread (for hypothesis)."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        clipper = portal.call(lambda: Clipper(shutdown_grace_s=0.5).start())
        portal.call(deploy_models, clipper)
        transport = httpx.ASGITransport(app=create_app(clipper, max_body_bytes=1000))
        h = httpx.AsyncClient(transport=transport, base_url=BASE)
        yield portal, h
        portal.call(h.aclose)
        portal.call(clipper.stop)


@pytest.mark.timeout(300)
@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(method=methods, path=paths, body=bodies)
def test_fuzzed_requests_are_never_a_5xx(
    portal_client: tuple[Any, Any], method: str, path: str, body: bytes
) -> None:
    """Thousands of generated methods, paths and bodies each answer a 2xx or a 4xx."""
    portal, h = portal_client
    r = portal.call(lambda: h.request(method, path, content=body))
    assert 200 <= r.status_code < 500, (method, path, body, r.status_code, r.text)
    if method != "HEAD":
        json.loads(r.content) if r.headers.get("content-type") == "application/json" else None
