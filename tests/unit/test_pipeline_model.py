"""The cost model's simulation counts what the pipeline does, the timers' transitions included."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import pipeline_model
from bench.cost import one_per_customer
from cdp.core.catalogue import load_catalogue
from cdp.core.engine import Engine

SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
T = 1_790_000_000
DAY = 86400


def order(customer: str, at: float, number: int) -> tuple[str, bytes]:
    message: dict[str, Any] = {
        "type": "track", "event": "Order Completed", "userId": customer, "messageId": f"m-{customer}-{number}",
        "timestamp": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "properties": {"order_id": f"o-{customer}-{number}", "revenue": 80.0},
        "context": {"library": {"name": "analytics.js"}}}
    return customer, json.dumps(message).encode()


def traffic(customers: int = 30) -> list[list[Any]]:
    return one_per_customer(order(f"c{n}", T + n * 60, 0) for n in range(customers))


def test_a_batch_holds_each_customer_once_and_at_most_a_hundred_records() -> None:
    records = [order("a", T, 0), order("b", T + 1, 0), order("a", T + 2, 1)] + [order(f"x{n}", T + 3, 0)
                                                                               for n in range(150)]
    batches = one_per_customer(records)
    assert [len(batch) for batch in batches] == [2, 100, 51]
    for batch in batches:
        customers = [record.partition_key for record in batch]
        assert len(customers) == len(set(customers))


def test_the_timers_transitions_are_counted_beside_the_ingest_ones() -> None:
    counts = pipeline_model.simulate(traffic(), Engine(load_catalogue(SEGMENTS)))
    assert counts.events == 30
    assert counts.transitions["ingest"] > 0
    # recent-buyers and the like are left once their windows pass: only the timers do that here
    assert counts.transitions["timers"] > 0
    assert counts.store.writes["ingest"] == 30
    assert counts.store.writes["timers"] > 0
    assert not any(entries for entries in counts.store._due.values() if entries and entries[0][0] < T + 300 * DAY)


def test_each_transition_is_one_membership_write_and_publishing_fewer_saves_bus_entries_only() -> None:
    every = pipeline_model.simulate(traffic(), Engine(load_catalogue(SEGMENTS)))
    some = pipeline_model.simulate(traffic(), Engine(load_catalogue(SEGMENTS)), published={"recent-buyers"})
    assert every.bus_entries == sum(every.transitions.values())
    assert 0 < some.bus_entries < every.bus_entries
    assert some.transitions == every.transitions
    assert some.size_updates == every.size_updates


def test_the_cost_adds_its_lines_and_grows_with_what_is_published() -> None:
    engine = Engine(load_catalogue(SEGMENTS))
    every = pipeline_model.simulate(traffic(), engine)
    some = pipeline_model.simulate(traffic(), Engine(load_catalogue(SEGMENTS)), published={"recent-buyers"})
    settings: dict[str, Any] = {"ingest_cpu_s_per_event": 50e-6, "client_cpu_s_per_write": 300e-6,
                                "changes_cpu_s_per_record": 80e-6, "timers_cpu_s_per_due": 60e-6,
                                "memory_mb": 512, "concurrency": 16, "integrations_enabled": False}
    high, low = pipeline_model.cost(every, **settings), pipeline_model.cost(some, **settings)
    for model in (high, low):
        assert model["usd_per_million_events"] == pytest.approx(sum(model["lines"].values()))
        assert all(usd >= 0 for usd in model["lines"].values())
        json.dumps(model)
    bus = "eventbridge events (published transitions)"
    assert high["lines"][bus] == pytest.approx(high["per_event"]["bus_entries"] * 1.0)
    assert low["lines"][bus] < high["lines"][bus]
    assert high["usd_per_million_events"] > low["usd_per_million_events"]
    # each record rounded up to 1 KB at $0.08/GB
    assert high["lines"]["kinesis on-demand ingest (each record rounded up to 1 KB)"] == pytest.approx(
        0.08 * 1e6 / 1024 ** 2)


def test_enabled_integrations_add_their_queue_lambda_and_ledger_lines() -> None:
    counts = pipeline_model.simulate(traffic(), Engine(load_catalogue(SEGMENTS)),
                                     integrations={"webhook": {"recent-buyers"}})
    settings: dict[str, Any] = {"ingest_cpu_s_per_event": 50e-6, "client_cpu_s_per_write": 300e-6,
                                "changes_cpu_s_per_record": 80e-6, "timers_cpu_s_per_due": 60e-6,
                                "memory_mb": 512, "concurrency": 16}
    off = pipeline_model.cost(counts, integrations_enabled=False, **settings)
    on = pipeline_model.cost(counts, integrations_enabled=True, **settings)
    assert counts.deliveries["webhook"] > 0
    extra = set(on["lines"]) - set(off["lines"])
    assert len(extra) == 5 and all(on["lines"][line] > 0 for line in extra)  # SQS, Lambda, ledger, its index, consent
