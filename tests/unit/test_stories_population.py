"""Stories with a population: percentile conditions tested under a simulated clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdp.core.catalogue import load_catalogue
from cdp_dev.stories import population_stats, run_story

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
CATALOGUE = load_catalogue(SEGMENTS)
PREMIUM_STORY = SEGMENTS / "stories" / "pat-joins-the-top-fifth.yaml"


def premium_story(**changes: Any) -> dict[str, Any]:
    story = yaml.safe_load(PREMIUM_STORY.read_text(encoding="utf-8"))
    return {**story, **changes}


def test_the_premium_story_passes_with_its_population() -> None:
    assert run_story(premium_story(), CATALOGUE).problems == []


def test_without_a_population_nobody_is_premium() -> None:
    story = premium_story()
    del story["population"]
    assert run_story(story, CATALOGUE).problems == [
        "pat / premium-customers: expected entered at +3d, exited at +5d; got nothing",
        "quinn / premium-customers: expected entered at +1d; got nothing"]


def test_a_population_given_as_percentiles_sets_the_threshold() -> None:
    # 80th percentile 100: Pat's first order of 90 is below it, her second takes her to 190.
    story = premium_story(population={"revenue": {"percentiles": {50: 40, 80: 100}}},
                          expect=[{"at": "3d", "customer": "pat", "segment": "premium-customers",
                                   "change": "entered"},
                                  {"at": "5d", "customer": "pat", "segment": "premium-customers",
                                   "change": "exited"},
                                  {"at": "0m", "customer": "quinn", "segment": "premium-customers",
                                   "change": "entered"}])
    assert run_story(story, CATALOGUE).problems == []


def test_percentiles_not_given_take_the_next_one_given_above() -> None:
    stats = population_stats({"orders": {"percentiles": {"50": 1, 80: 3}}, "revenue": [10, 20, 30, 40]}, 7)
    assert stats is not None and stats.computed_at == 7 and stats.population == 4
    assert [stats.threshold("orders", top) for top in (90, 50, 30, 20, 10, 1)] == [1, 1, 3, 3, 3, 3]
    assert stats.threshold("revenue", 25) == 30
    assert stats.threshold("average_order_value", 20) is None
    assert population_stats(None, 0) is None


@pytest.mark.parametrize(("population", "problem"), [
    ({"lifetime_value": [1]}, "population.lifetime_value: not one of orders, revenue, average_order_value"),
    ({"revenue": []}, "population.revenue: must be a non-empty list of values, or {percentiles: {80: 150}}"),
    ({"revenue": [1, "a lot"]}, "population.revenue[1]: must be a number, not 'a lot'"),
    ({"revenue": {"percentiles": {100: 5}}}, "population.revenue.percentiles.100: must be a whole percentile"
                                             " from 1 to 99"),
    ({"revenue": {"percentiles": {50: 9, 80: 3}}}, "population.revenue.percentiles: values must not fall as"
                                                   " the percentile rises"),
    ([1, 2], "population: must map metrics to values or percentiles"),
])
def test_an_invalid_population_is_named(population: Any, problem: str) -> None:
    assert run_story(premium_story(population=population), CATALOGUE).problems == [f"invalid story: {problem}"]
