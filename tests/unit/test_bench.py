"""The benchmark harness keeps working: its workload, synthetic catalogues and cost model (no timings asserted)."""

from __future__ import annotations

import pytest

from bench import core_speed, timers_sweep
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


def test_the_identity_bench_counts_requests_of_merges_and_of_events_after_them() -> None:
    from bench import identity

    figures = identity.measure(visitors=40, batch=20)
    assert figures["merges"] == 40
    assert figures["requests_per_merge"]["profile_puts"] == 2 and figures["requests_per_merge"]["map_puts"] == 2
    after, never = figures["requests_per_event_after_merge"], figures["requests_per_event_never_merged"]
    assert after["profile_puts"] == never["profile_puts"] and after["map_puts"] == 0
    assert after["map_reads"] <= 2 * never["map_reads"]  # a chain round per batch, never a read per event
    many = figures["profile_bytes_after_100_merges"]
    assert many["merged_ids"] == 100 and many["refused_after"] == 1 and many["bytes"] > many["bytes_of_merged_ids"]


def test_the_pseudonyms_bench_measures_hmac_against_a_plain_id_and_scales_with_transitions() -> None:
    from bench import pseudonyms

    figures = pseudonyms.measure(True)
    assert figures["hmac_us_per_id"] > figures["plain_us_per_id"] > 0 and figures["hmac_to_plain"] > 1
    low = pseudonyms.per_event(figures["usd_per_million_ids"], 0.1)
    high = pseudonyms.per_event(figures["usd_per_million_ids"], 1.0)
    assert high["per_event"]["ids"] == 10 * low["per_event"]["ids"]
    assert high["usd_per_million_events"] > low["usd_per_million_events"] > 0


def test_the_backfill_bench_enters_the_new_segment_and_a_rerun_writes_nothing() -> None:
    from bench import backfill

    figures = backfill.measure(300)
    counts = figures["counts"]
    assert figures["phases"] == ["evaluate", "collect", "reevaluate"]  # the shipped catalogue reads statistics
    assert counts["scanned"] == 3 * 300 and counts["entered"] > 0 and counts["failed"] == 0
    assert counts["written"] < counts["scanned"]  # only profiles whose memberships or deadlines moved
    assert figures["requests"]["PutItem"] == counts["written"]
    # a page of up to 100 profiles per Scan, per scan segment, in each of the three phases
    pages = figures["requests"]["Scan"]
    assert 3 * backfill.SCAN_SEGMENTS <= pages <= 3 * (backfill.SCAN_SEGMENTS + 300 // backfill.PAGE_ITEMS)
    assert figures["rerun"]["written"] == 0 and figures["rerun"]["requests"]["PutItem"] == 0
    assert figures["cost"]["usd_per_million_profiles"] > 0
