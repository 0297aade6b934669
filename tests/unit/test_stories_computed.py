"""Stories with computed traits: steps that write a model's traits as the traits job does, and stored models the
ingest assigns clusters with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp.core.catalogue import load_catalogue
from cdp_dev.stories import run_story, story_stats

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
CATALOGUE = load_catalogue(SEGMENTS)
STORIES = SEGMENTS / "stories"


def shipped(name: str, **changes: Any) -> dict[str, Any]:
    story = yaml.safe_load((STORIES / f"{name}.yaml").read_text(encoding="utf-8"))
    return {**story, **changes}


@pytest.mark.parametrize("name", ["carla-becomes-a-champion", "hugo-a-big-spender-at-risk",
                                  "nina-lands-in-the-top-spend-cluster"])
def test_the_computed_traits_stories_pass(name: str) -> None:
    assert run_story(shipped(name), CATALOGUE).problems == []


def test_each_new_segment_has_a_story_that_enters_it() -> None:
    entered = set()
    for path in STORIES.glob("*.yaml"):
        story = yaml.safe_load(path.read_text(encoding="utf-8"))
        entered |= {e["segment"] for e in story["expect"] if e["change"] == "entered"}
    assert {"champions", "at-risk-high-value", "top-spend-cluster"} <= entered


def test_without_the_computed_steps_nobody_enters() -> None:
    story = shipped("carla-becomes-a-champion")
    story["events"] = [step for step in story["events"] if "computed" not in step]
    assert run_story(story, CATALOGUE).problems == [
        "carla / champions: expected entered at +1d, exited at +31d; got nothing"]


def test_a_step_that_changes_no_trait_makes_no_transition() -> None:
    story = shipped("carla-becomes-a-champion")
    rerun = {"at": "2d", "customer": "carla", "computed": {"model": "rfm", "version": 1, "traits": {
        "rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 4, "rfm_code": "554", "rfm_segment": "Champions"}}}
    story["events"] = [*story["events"], rerun]
    assert run_story(story, CATALOGUE).problems == []


def test_a_later_run_leaving_a_trait_out_removes_it() -> None:
    story = shipped("hugo-a-big-spender-at-risk")
    dropped = {"at": "65d", "customer": "hugo", "computed": {"model": "rfm", "version": 2, "traits": {}}}
    story["events"] = [*story["events"], dropped]
    story["expect"] = [{"at": "60d", "customer": "hugo", "segment": "at-risk-high-value", "change": "entered"},
                       {"at": "65d", "customer": "hugo", "segment": "at-risk-high-value", "change": "exited"}]
    assert run_story(story, CATALOGUE).problems == []


def test_without_the_stored_model_the_ingest_assigns_no_cluster() -> None:
    story = shipped("nina-lands-in-the-top-spend-cluster")
    del story["models"]
    assert run_story(story, CATALOGUE).problems == [
        "nina / top-spend-cluster: expected entered at +0s, exited at +20d; got nothing"]


def test_a_none_expectation_fails_when_the_customer_moves() -> None:
    story = shipped("carla-becomes-a-champion")
    story["expect"] = [{"customer": "carla", "segment": "champions", "change": "none"}]
    assert run_story(story, CATALOGUE).problems == [
        "carla / champions: expected nothing; got entered at +1d, exited at +31d"]


def test_stored_models_travel_with_the_statistics() -> None:
    stats = story_stats(shipped("nina-lands-in-the-top-spend-cluster"), 100)
    assert stats is not None and stats.percentiles == {}
    assert stats.models["clusters"]["version"] == 1 and stats.models["clusters"]["trained_at"] == 100
    assert story_stats({}, 0) is None


@pytest.mark.parametrize(("step", "problem"), [
    ({"model": "weather", "traits": {}}, "events[0].computed.model: not one of rfm, clusters, predictions"),
    ({"model": "rfm", "traits": {"cluster": 1}}, "events[0].computed.traits: cluster not computed by the rfm model"),
    ({"model": "rfm", "version": 0, "traits": {}}, "events[0].computed.version: must be a whole number >= 1"),
    ({"model": "rfm"}, "events[0].computed: must be {model: M, version: N, traits: {name: value}}"),
])
def test_an_invalid_computed_step_is_named(step: dict[str, Any], problem: str) -> None:
    story = {"name": "bad", "start": "2026-10-01T09:00:00Z",
             "events": [{"at": "0m", "customer": "x", "computed": step}], "expect": []}
    assert run_story(story, CATALOGUE).problems == [f"invalid story: {problem}"]


@pytest.mark.parametrize(("models", "problem"), [
    ({"rfm": {}}, "models.rfm: only a clusters model is used at ingest"),
    ({"clusters": {"version": 1}}, "models.clusters: not a cluster model document ('mean')"),
    ([], "models: must map model names to their documents"),
])
def test_invalid_stored_models_are_named(models: Any, problem: str) -> None:
    story = {"name": "bad", "start": "2026-10-01T09:00:00Z", "models": models, "events": [], "expect": []}
    assert run_story(story, CATALOGUE).problems == [f"invalid story: {problem}"]
