"""The benchmark harness keeps working: its workload, synthetic catalogues and cost model (no timings asserted)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench import core_speed, run, timers_sweep
from cdp.core.events import parse_record


def test_the_workload_is_valid_segment_spec_with_unique_message_ids() -> None:
    batches = core_speed.workload(5, 20, prefix="t")
    events = [parse_record(record) for batch in batches for record in batch]
    assert len(events) == 100 and len({e.message_id for e in events}) == 100
    assert {e.customer_id for e in events} == {f"t-{n:06d}" for n in range(5)}


@pytest.mark.parametrize("size", [10, 50, 200])
def test_synthetic_catalogues_have_the_asked_number_of_segments(size: int) -> None:
    assert len(core_speed.synthetic_catalogue(size).segments) == size


def test_the_timers_simulation_reports_constant_idle_cost() -> None:
    figures = timers_sweep.measure((100, 300))
    assert figures["requests_idle_constant"] and figures["requests_idle"] == 32
    assert [d["put_item"] for d in figures["due"]] == [100, 300]


def figures_for(transitions_per_event: float) -> dict[str, Any]:
    return {"pipeline": {"ingest": {"batch100_customers20_again": {"transitions_per_event": transitions_per_event}},
                         "serialise_us_per_profile": 60.0},
            "profile.bytes_typical": 1231, "core": {"record_bytes_mean": 250.0, "us_per_event_catalogue": 25.0},
            "timers": {"requests_per_due_customer": 1.02}}


def test_the_cost_model_adds_its_lines_and_grows_with_transitions() -> None:
    low, high = run.cost_model(figures_for(0.05)), run.cost_model(copy.deepcopy(figures_for(0.5)))
    for model in (low, high):
        assert model["usd_per_million_events"] == pytest.approx(sum(model["lines"].values()))
        assert all(usd >= 0 for usd in model["lines"].values())
        json.dumps(model)
    assert high["lines"]["eventbridge events"] == pytest.approx(10 * low["lines"]["eventbridge events"])
    assert high["usd_per_million_events"] > low["usd_per_million_events"]
    # 1M events rounded up to 1 KB each at $0.08/GB
    assert low["lines"]["kinesis ingest (records rounded up to 1 KB)"] == pytest.approx(0.08 * 1e6 / 1024 ** 2)
