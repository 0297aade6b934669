"""Messages Segment accepts are applied, exactly once, and their missing spec fields counted.

The fold: an order without ``order_id`` (deduplicated by message id only, never matched by a refund),
an order worth 0, products without a price, refunds and cancellations without ``order_id`` or amount,
cart events without a product id, a whole float quantity, Segment's channel names. The ingest: the
``spec_gaps`` tally counts each applied event's gaps once, and never a duplicate's or a refused one's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.core.catalogue import build_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import ENTERED, Engine
from cdp.core.events import Event, normalise
from cdp.core.profile import Profile
from cdp.pipeline.ingest import BatchResult, StreamRecord, ingest_batch
from cdp.ports import QuarantinedRecord
from cdp_dev.memory import MemoryProfileStore

MIN, HOUR, DAY = 60, 3600, 86400
T = 1_767_225_600  # 2026-01-01T00:00:00Z
BUYERS = ("buyers.yaml", {"id": "buyers", "name": "Buyers", "condition": {"rfm": {"metric": "orders", "gte": 1}}})
SPENDERS = ("spenders.yaml", {"id": "spenders", "name": "Spenders",
                              "condition": {"rfm": {"metric": "revenue", "gte": 100}}})

_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message(name: str, at: float, message_id: str | None = None, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": "u1", "messageId": message_id or f"m-{next(_ids)}",
            "timestamp": iso(at), "properties": properties}


def event(name: str, at: float, message_id: str | None = None, **properties: Any) -> Event:
    return normalise(message(name, at, message_id, **properties))


def engine() -> Engine:
    return Engine(build_catalogue([BUYERS, SPENDERS]))


def lifetime(profile: Profile) -> tuple[int, int, int | None, int | None]:
    return profile.orders, profile.revenue, profile.first_order, profile.last_order


# ---- the fold -----------------------------------------------------------------------------------------


def test_an_order_without_order_id_counts_in_the_lifetime_figures_but_is_not_remembered_by_id() -> None:
    profile = Profile("u1")
    outcome = engine().apply(profile, [event("Order Completed", T, "m-1", revenue=120)], now=T + MIN)
    assert (outcome.applied, outcome.rejected) == (1, [])
    assert lifetime(profile) == (1, 12000, T, T)
    assert {(t.segment_id, t.kind) for t in outcome.transitions} == {("buyers", ENTERED), ("spenders", ENTERED)}
    assert profile.recent_orders == []  # nothing a refund could match
    assert "od" not in profile.to_item()  # no completed-order digest either
    assert profile.seen("m-1")


def test_an_order_without_order_id_sent_twice_with_the_same_message_id_counts_once() -> None:
    profile, eng = Profile("u1"), engine()
    first = eng.apply(profile, [event("Order Completed", T, "m-1", revenue=50),
                                event("Order Completed", T, "m-1", revenue=50)], now=T + MIN)
    assert (first.applied, first.duplicates) == (1, 1)
    again = eng.apply(profile, [event("Order Completed", T, "m-1", revenue=50)], now=T + HOUR)  # a redelivery
    assert (again.applied, again.duplicates, again.changed) == (0, 1, False)
    assert lifetime(profile) == (1, 5000, T, T)


def test_orders_without_order_id_and_different_message_ids_count_twice() -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, "m-1", revenue=50)], now=T + MIN)
    outcome = eng.apply(profile, [event("Order Completed", T + HOUR, "m-2", revenue=50)], now=T + HOUR)
    assert outcome.applied == 1
    assert lifetime(profile) == (2, 10000, T, T + HOUR)
    counter = profile.counter("Order Completed")
    assert counter is not None and counter.count == 2


def test_an_order_without_a_value_is_an_order_worth_nothing() -> None:
    profile = Profile("u1")
    outcome = engine().apply(profile, [event("Order Completed", T, order_id="o-1")], now=T + MIN)
    assert outcome.applied == 1
    assert lifetime(profile) == (1, 0, T, T)
    assert [o[0] for o in profile.recent_orders] == ["o-1"] and profile.recent_orders[0][2] == 0
    assert {(t.segment_id, t.kind) for t in outcome.transitions} == {("buyers", ENTERED)}  # not a spender


def test_products_without_a_price_add_nothing_to_the_order() -> None:
    profile = Profile("u1")
    products = [{"product_id": "p1", "price": 30, "quantity": 2}, {"product_id": "p2", "quantity": 5}]
    engine().apply(profile, [event("Order Completed", T, order_id="o-1", products=products)], now=T + MIN)
    assert lifetime(profile) == (1, 6000, T, T)


def test_an_order_with_an_id_completed_again_is_still_refused() -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, order_id="o-1", revenue=10)], now=T + MIN)
    outcome = eng.apply(profile, [event("Order Completed", T + MIN, order_id="o-1", revenue=10)], now=T + HOUR)
    assert outcome.applied == 0
    assert [reason for _, reason in outcome.rejected] == ["properties.order_id: this order was already completed"]
    assert lifetime(profile)[:2] == (1, 1000)


@pytest.mark.parametrize("name", ["Order Refunded", "Order Cancelled"])
def test_a_reversal_without_order_id_or_amount_is_counted_and_changes_no_lifetime_figure(name: str) -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, "m-order", revenue=120)], now=T + MIN)
    before = profile.to_item()
    outcome = eng.apply(profile, [event(name, T + HOUR, "m-rev")], now=T + HOUR)
    assert (outcome.applied, outcome.rejected, outcome.transitions) == (1, [], [])
    assert lifetime(profile) == (1, 12000, T, T)  # the order without an id is never matched
    counter = profile.counter(name)
    assert counter is not None and counter.count == 1
    after = profile.to_item()
    assert {key: after.get(key) for key in ("o", "ro", "od", "m")} == {key: before.get(key) for key in
                                                                        ("o", "ro", "od", "m")}


def test_a_refund_without_order_id_takes_its_amount_off_the_revenue_only() -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, order_id="o-1", revenue=120)], now=T + MIN)
    outcome = eng.apply(profile, [event("Order Refunded", T + HOUR, total=30)], now=T + HOUR)
    assert outcome.applied == 1
    assert lifetime(profile)[:2] == (1, 9000)
    assert profile.recent_orders == [["o-1", T, 12000]]  # the known order is not guessed at
    assert {(t.segment_id, t.kind) for t in outcome.transitions} == {("spenders", "exited")}


def test_a_cancellation_without_order_id_with_an_amount_removes_one_order() -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, revenue=120)], now=T + MIN)
    eng.apply(profile, [event("Order Cancelled", T + HOUR, total=120)], now=T + HOUR)
    assert lifetime(profile)[:2] == (0, 0)


def test_a_refund_of_an_unknown_order_without_amount_changes_nothing_but_its_count() -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Order Completed", T, order_id="o-1", revenue=120)], now=T + MIN)
    outcome = eng.apply(profile, [event("Order Refunded", T + HOUR, order_id="o-elsewhere")], now=T + HOUR)
    assert (outcome.applied, outcome.rejected) == (1, [])
    assert lifetime(profile)[:2] == (1, 12000) and profile.recent_orders == [["o-1", T, 12000]]


@pytest.mark.parametrize("name", ["Product Added", "Product Removed"])
def test_a_cart_event_without_product_id_is_counted_and_leaves_the_cart_as_it_was(name: str) -> None:
    profile, eng = Profile("u1"), engine()
    eng.apply(profile, [event("Product Added", T, product_id="p1", price=10, quantity=2)], now=T + MIN)
    before = (dict(profile.cart), profile.last_add)
    outcome = eng.apply(profile, [event(name, T + MIN, price=5, quantity=1)], now=T + HOUR)
    assert (outcome.applied, outcome.rejected) == (1, [])
    assert (profile.cart, profile.last_add) == before == ({"p1": [2, 1000, T]}, ["p1", T])
    counter = profile.counter(name)
    assert counter is not None and counter.count == (2 if name == "Product Added" else 1)


def test_a_whole_float_quantity_fills_the_cart_as_a_whole_number() -> None:
    profile = Profile("u1")
    engine().apply(profile, [event("Product Added", T, product_id="p1", price=10, quantity=2.0)], now=T + MIN)
    assert profile.cart == {"p1": [2, 1000, T]} and isinstance(profile.cart["p1"][0], int)


def test_segments_browser_channel_is_web() -> None:
    profile = Profile("u1")
    engine().apply(profile, [normalise({**message("Product Viewed", T), "channel": "browser"})], now=T + MIN)
    assert profile.channels == {"web": T}


# ---- the ingest's tally ----------------------------------------------------------------------------------


class Quarantined:
    def __init__(self) -> None:
        self.records: list[QuarantinedRecord] = []

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += records


_sequences = itertools.count(49_630_000_000_000_000_000_001)


def record(body: dict[str, Any], sequence: str | None = None) -> StreamRecord:
    return StreamRecord(sequence or str(next(_sequences)), str(body["userId"]), json.dumps(body).encode(),
                        shard="shardId-000000000000")


def ingest(store: MemoryProfileStore, records: Sequence[StreamRecord], now: float,
           quarantine: Quarantined | None = None) -> BatchResult:
    return ingest_batch(records, engine(), store, quarantine or Quarantined(), FixedClock(now))


def test_the_tally_counts_each_applied_events_gaps_by_field() -> None:
    store = MemoryProfileStore()
    result = ingest(store, [
        record(message("Order Completed", T, "m-1", revenue=10)),
        record(message("Order Completed", T, "m-2")),
        record(message("Product Added", T, "m-3", price=5)),
        record(message("Order Completed", T, "m-4", order_id="o-1",
                       products=[{"product_id": "p1"}, {"product_id": "p2"}])),
        record(message("Product Viewed", T, "m-5", product_id="p1")),
        record({**message("Product Viewed", T, "m-6"), "timestamp": None, "receivedAt": iso(T)}),
    ], T + MIN)
    assert (result.applied, result.failed, sum(result.quarantined.values())) == (6, [], 0)
    assert result.spec_gaps == {"properties.order_id": 2, "properties.revenue": 1, "properties.product_id": 1,
                                "properties.products[].price": 1, "timestamp": 1}
    assert store.load(["u1"])["u1"].orders == 3


def test_a_duplicate_is_not_counted_again_in_the_batch_or_on_redelivery() -> None:
    store = MemoryProfileStore()
    order = message("Order Completed", T, "m-1", revenue=10)
    first = ingest(store, [record(order), record(order)], T + MIN)  # a producer duplicate
    assert (first.applied, first.duplicates, first.spec_gaps) == (1, 1, {"properties.order_id": 1})
    redrive = ingest(store, [record(order)], T + HOUR)  # put back on the stream: a new sequence number
    assert (redrive.applied, redrive.duplicates, redrive.spec_gaps) == (0, 1, {})
    other = ingest(store, [record(message("Order Completed", T + HOUR, "m-2", revenue=10))], T + HOUR)
    assert (other.applied, other.spec_gaps) == (1, {"properties.order_id": 1})
    assert store.load(["u1"])["u1"].orders == 2


def test_refused_and_quarantined_events_add_no_gap() -> None:
    store, quarantine = MemoryProfileStore(), Quarantined()
    ingest(store, [record(message("Order Completed", T, "m-0", order_id="o-1", revenue=10))], T + MIN)
    result = ingest(store, [
        record(message("Order Completed", T + 10 * MIN, "m-ahead")),  # stamped ahead of the clock: refused
        record(message("Order Completed", T, "m-again", order_id="o-1")),  # the same order again: refused
        record(message("Product Added", T, "m-neg", price=-1)),  # invalid: quarantined
    ], T + MIN, quarantine)
    assert (result.applied, len(quarantine.records)) == (0, 3)
    assert result.spec_gaps == {}


def test_after_a_refused_event_a_later_one_with_its_message_id_is_counted_by_its_own_gaps() -> None:
    """A refused event is not remembered, so another with its message id still applies (as the fold does)."""
    store = MemoryProfileStore()
    ingest(store, [record(message("Order Completed", T - HOUR, "m-0", order_id="o-1", revenue=10))], T)
    refused = message("Order Completed", T, "m-1", order_id="o-1")  # without revenue; the order again
    applies = message("Order Completed", T + 1, "m-1", revenue=10)  # without order_id
    result = ingest(store, [record(applies), record(refused), record(applies)], T + MIN)
    assert (result.applied, result.duplicates, sum(result.quarantined.values())) == (1, 1, 1)
    assert result.spec_gaps == {"properties.order_id": 1}


def test_a_batch_without_gaps_has_an_empty_tally() -> None:
    store = MemoryProfileStore()
    result = ingest(store, [record(message("Order Completed", T, order_id="o-1", revenue=10)),
                            record(message("Product Added", T, product_id="p1"))], T + MIN)
    assert result.applied == 2 and result.spec_gaps == {}
