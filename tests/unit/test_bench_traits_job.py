"""The traits job's bench runs the real job on a tiny population and its counts add up (no timings asserted)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import traits_job

PROFILES = 150


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return traits_job.measure(PROFILES, fit_sizes=(300,))


def test_the_first_run_gives_every_profile_its_traits_and_trains_on_the_whole_small_population(
        figures: dict[str, Any]) -> None:
    first = figures["runs"]["first"]
    assert first["written"] == PROFILES and first["conflicts"] == 0
    assert first["training_sample"] == PROFILES  # the default sample is larger than the population
    assert set(first["models"]) == {"rfm", "clusters", "predictions"}


def test_each_run_scans_the_table_twice_in_pages_of_a_hundred(figures: dict[str, Any]) -> None:
    for run in figures["runs"].values():
        # two scans over 4 segments: at least one page per segment and phase, and a page per 100 profiles
        assert run["scan_requests_per_profile"] * PROFILES >= 2 * traits_job.SCAN_SEGMENTS
        assert run["scan_requests_per_profile"] * PROFILES <= 2 * (traits_job.SCAN_SEGMENTS + PROFILES // 100)
        assert run["read_units_per_profile"] > 0
        assert run["works"] == 2 * traits_job.SCAN_SEGMENTS  # one invocation per segment and phase here
        assert run["step_functions_transitions"] == run["works"] * 3 + 2 * 4


def test_the_results_are_a_features_part_per_invocation_and_the_prediction_model(figures: dict[str, Any]) -> None:
    results = figures["runs"]["first"]["results"]
    assert results["puts"] == traits_job.SCAN_SEGMENTS + 1
    # the finish reads the parts once; each score invocation reads the model's bytes
    assert results["gets"] == traits_job.SCAN_SEGMENTS + traits_job.SCAN_SEGMENTS
    assert results["put_bytes"] > 0 and results["get_bytes"] > 0


def test_later_runs_write_no_more_than_the_population_and_the_cost_adds_up(figures: dict[str, Any]) -> None:
    for name in ("rerun_same_day", "next_day"):
        assert 0 <= figures["runs"][name]["written"] <= PROFILES
    assert [fit["rows"] for fit in figures["training"]["fits"]] == [300]
    small, large = figures["cost"]["1,000,000"], figures["cost"]["10,000,000"]
    for cost in (small, large):
        assert cost["usd_per_run"] == pytest.approx(sum(cost["lines"].values()))
        assert cost["usd_per_month"] == pytest.approx(cost["usd_per_run"] * traits_job.RUNS_PER_MONTH)
    assert large["training_s"] == small["training_s"]  # the sample is bounded, whatever the population
    assert large["lines"]["scan_read_units (two scans)"] == pytest.approx(
        10 * small["lines"]["scan_read_units (two scans)"])
    assert figures["training"]["finish_memory_mb"]
