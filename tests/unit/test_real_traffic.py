"""The real-shaped workload of the bench is what it says: analytics.js messages the parser accepts, 200-700
bytes, one event per customer per batch of 100, read back from stored profiles (no timings asserted)."""

from __future__ import annotations

import json

import pytest

from bench import real_traffic
from cdp.core.engine import Engine
from cdp.core.events import parse_record


@pytest.fixture(scope="module")
def workload() -> real_traffic.Workload:
    return real_traffic.batches(customers=200, events_per_customer=2)


def test_each_batch_holds_one_event_of_each_of_100_customers(workload: real_traffic.Workload) -> None:
    assert len(workload.batches) == 4
    for batch in workload.batches:
        events = [parse_record(record.data) for record in batch]
        assert len(batch) == 100 and len({event.customer_id for event in events}) == 100
        assert all(record.partition_key == event.customer_id for record, event in zip(batch, events, strict=True))
    every = [record.data for batch in workload.batches for record in batch]
    assert len({json.loads(data)["messageId"] for data in every}) == len(every)


def test_messages_are_shaped_like_analytics_js_output(workload: real_traffic.Workload) -> None:
    messages = [json.loads(data) for data in workload.messages]
    assert {m["type"] for m in messages} <= {"track", "page", "identify"}
    for message in messages:
        context = message["context"]
        assert context["library"]["name"] == "analytics.js" and context["userAgent"].startswith("Mozilla/5.0 (")
        assert set(context["page"]) == {"path", "referrer", "search", "title", "url"}
        assert {"ip", "locale"} <= set(context) and message["integrations"] == {}
        assert message["anonymousId"] and message["userId"] and message["timestamp"].endswith("Z")
    orders = [m for m in messages if m.get("event") == "Order Completed"]
    assert orders and all(m["properties"]["order_id"] and m["properties"]["revenue"] >= 0 for m in orders)
    assert all(parse_record(data).channel == "web" for data in workload.messages)


def test_message_sizes_are_within_200_to_700_bytes(workload: real_traffic.Workload) -> None:
    sizes = real_traffic.size_distribution(workload)
    assert sizes["all"]["min"] >= 200 and sizes["all"]["max"] <= 700
    assert sizes["share_track_page_600_700"] >= 0.9


def test_stored_profiles_hold_a_history_and_are_read_back_without_a_full_evaluation(
        workload: real_traffic.Workload) -> None:
    engine = Engine(real_traffic.catalogue(16))
    items = real_traffic.stored_items(workload, engine)
    assert len(items) == 200
    assert all(item["cv"] == engine.catalogue.fingerprint and item["v"] >= 1 for item in items)
    assert sum(1 for item in items if item.get("m")) > 100  # most customers are in some segment
    run = real_traffic.core_run(workload, engine, items, repeats=1)
    assert run.quarantined == 0 and run.transitions_per_event > 0


@pytest.mark.parametrize("size", [16, 50, 200])
def test_catalogues_have_the_asked_number_of_segments(size: int) -> None:
    catalogue = real_traffic.catalogue(size)
    assert len(catalogue.segments) == size
    # Every shipped segment but those on computed traits, which this traffic never gets.
    shipped = {path.stem for path in (real_traffic.ROOT / "segments").glob("*.yaml")} - {
        "champions", "at-risk-high-value", "top-spend-cluster"}
    assert len(shipped) == 16 and shipped <= set(catalogue.segments)
    generated = [s for s in catalogue.segments.values() if s.id not in shipped]
    assert len(generated) == size - len(shipped)
    if generated:
        kinds = {next(iter(s.definition["condition"])) for s in generated}
        assert {"count", "recency", "absence", "all", "any", "rfm", "ratio"} <= kinds
        assert any(s.references for s in generated)  # some refer to other segments
