"""Plain and HTML reprs: the notebook view of a Clipper and of a Prediction."""

from __future__ import annotations

import html
import re

import pytest

import clipperlite
from clipperlite import Clipper, Prediction

HOSTILE = "<script>alert('x')</script>"


def feature_sum(xs: list) -> list:  # type: ignore[type-arg]
    return [float(x.sum()) for x in xs]


def test_answered_prediction_repr_is_the_readme_text() -> None:
    """An answered query prints exactly as the README shows it."""
    p = Prediction(query_id=0, output=6.6, latency_micros=812.0, confidence=1.0)
    assert repr(p) == "Prediction(query_id=0, output=6.6, default=False, default_explanation=None)"


def test_default_prediction_repr_adds_cause_and_latency() -> None:
    """A default's repr adds its cause (as the plain value) and its latency."""
    p = Prediction(
        query_id=4,
        output=-1.0,
        default=True,
        default_explanation="app 'a': model 'm' did not answer before the deadline",
        latency_micros=100412.3,
        default_cause="deadline",
    )
    text = repr(p)
    assert text.startswith("Prediction(query_id=4, output=-1.0, default=True, default_explanation=")
    assert text.endswith("default_cause='deadline', latency_micros=100412)")


def test_prediction_html_shows_output_status_latency_confidence() -> None:
    """The HTML repr has the output, the default and why, the latency and the confidence."""
    answered = Prediction(0, 6.6, latency_micros=1500.0, confidence=0.75, models_answered=2)
    text = answered._repr_html_()
    assert "<table>" in text and "6.6" in text and "1.5 ms" in text and "0.75" in text
    assert "answered by a model" in text
    default = Prediction(
        1, -1.0, True, "app 'a' has no linked model", latency_micros=40.0, default_cause="no_model"
    )
    text = default._repr_html_()
    assert "no_model" in text and html.escape("app 'a' has no linked model") in text
    assert "40 µs" in text


def test_prediction_html_escapes_outputs_and_explanations() -> None:
    """An output or explanation holding markup is shown as text, never as markup."""
    p = Prediction(2, HOSTILE, True, f"model {HOSTILE} raised", default_cause="model_error")
    text = p._repr_html_()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


def test_prediction_html_cuts_long_outputs() -> None:
    """A huge output is cut, so a notebook cell stays readable."""
    text = Prediction(3, list(range(10_000)))._repr_html_()
    assert len(text) < 5_000 and "…" in text


@pytest.mark.anyio
async def test_clipper_html_has_app_and_model_tables() -> None:
    """The notebook view has a table of apps and one of model versions, with their figures."""
    async with Clipper(seed=0) as clipper:
        clipper.register_application("hello-world", "doubles", -1.0, 100_000)
        clipper.register_application("lonely", "doubles", 0.0, 50_000)
        await clipper.deploy_model("sum-model", 1, "doubles", feature_sum)
        clipper.link_model_to_app("hello-world", "sum-model")
        for i in range(5):
            await clipper.predict("hello-world", [1.0, float(i)])
        await clipper.predict("hello-world", [1.0, 0.0])  # a cache hit
        await clipper.predict("lonely", [1.0])
        text = clipper.statistics()._repr_html_()
        assert clipper._repr_html_() == text
    assert text.count("<table>") == 2
    assert "Applications" in text and "Model versions" in text
    rows = re.findall(r"<tr>(.*?)</tr>", text)
    hello = next(r for r in rows if "<td>hello-world</td>" in r)
    assert "100 ms" in hello and "exp3" in hello and "sum-model" in hello
    assert '<td class="num">6</td>' in hello  # queries
    lonely = next(r for r in rows if "<td>lonely</td>" in r)
    assert "no_model: 1" in lonely
    model = next(r for r in rows if r.startswith("<td>sum-model</td>"))
    assert "✓" in model and "thread" in model and "running" in model
    assert '<td class="num">1</td>' in model  # a replica, a cache hit


@pytest.mark.anyio
async def test_clipper_html_escapes_app_and_model_names() -> None:
    """A hostile app or model name is escaped in every table."""
    async with Clipper() as clipper:
        clipper.register_application(HOSTILE, "doubles", -1.0, 100_000)
        await clipper.deploy_model(HOSTILE, 1, "doubles", feature_sum)
        clipper.link_model_to_app(HOSTILE, HOSTILE)
        await clipper.predict(HOSTILE, [1.0])
        text = clipper.statistics()._repr_html_()
    assert "<script>" not in text
    assert text.count(html.escape(HOSTILE)) >= 3  # app, its link, the model


@pytest.mark.anyio
async def test_stopped_versions_and_closed_clipper_render() -> None:
    """A closed Clipper still renders, its stopped versions marked as such."""
    clipper = Clipper()
    assert "not started" in clipper.statistics()._repr_html_()
    async with clipper:
        await clipper.deploy_model("m", 1, "doubles", feature_sum)
        await clipper.deploy_model("m", 2, "doubles", feature_sum)
        await clipper.stop_model("m", 1)
        text = clipper.statistics()._repr_html_()
    rows = re.findall(r"<tr>(.*?)</tr>", text)
    assert any("stopped" in r and "<td>1</td>" in r for r in rows)
    assert "closed" in clipper.statistics()._repr_html_()


@pytest.mark.anyio
async def test_each_statistics_record_renders_alone() -> None:
    """An app's and a model version's record each render as their own one-row table."""
    async with Clipper() as clipper:
        clipper.register_application("a", "doubles", -1.0, 100_000)
        await clipper.deploy_model("m", 1, "doubles", feature_sum)
        stats = clipper.statistics()
    (app,), (model,) = stats.apps, stats.models
    assert isinstance(app, clipperlite.AppStatistics)
    assert app._repr_html_().count("<tr>") == 2 and "Application" in app._repr_html_()
    assert model._repr_html_().count("<tr>") == 2 and "Model version" in model._repr_html_()
