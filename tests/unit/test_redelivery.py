"""Re-sending is always safe: a redelivery within the dedupe horizon is a no-op, whatever came after it.

The property test sends random histories of a few customers (views, adds, orders, refunds,
orders and refunds without an order id, identify calls, email opens) through ``ingest_batch``
in random batches over a simulated week, with random redeliveries of earlier messages: the same
record again (a Lambda retry: same shard, same sequence number, possibly after more than
``MAX_MESSAGE_IDS`` newer messages of the customer), the same message under a new sequence
number (a redrive or a producer duplicate, after more than 100 newer messages but fewer than the
id cap). A brute-force oracle that dedupes perfectly applies each distinct message id once,
through the same ``Engine``, to a fresh profile kept in memory. After every batch both must agree
on the whole profile item except the dedupe state itself (lifetime order figures, counters,
traits, cart, memberships, deadlines), and the ingest's spec-gap tally on the applied messages.

The targeted tests pin the documented edges: the horizon, the caps, the order digests, the
shard watermark, and profiles stored with the legacy ``ids`` attribute.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.core.catalogue import load_catalogue
from cdp.core.clock import FixedClock
from cdp.core.engine import Engine
from cdp.core.events import parse_record
from cdp.core.profile import DEDUPE_HORIZON, MAX_MESSAGE_IDS, MIN_MESSAGE_IDS, Profile, message_digest
from cdp.pipeline.ingest import BatchResult, StreamRecord, ingest_batch
from cdp.ports import ConflictError, QuarantinedRecord, TransientError
from cdp_dev.memory import MemoryProfileStore

ENGINE = Engine(load_catalogue(Path(__file__).resolve().parents[2] / "segments"))
MIN, HOUR, DAY = 60, 3600, 86400
B = 1_767_225_600  # 2026-01-01T00:00:00Z
SPAN = 7 * DAY  # the stream's retention: every redelivery in the simulation lands within it
SHARDS = ("shardId-000000000000", "shardId-000000000001")
DEDUPE_ATTRIBUTES = {"mi", "od", "sq", "ids"}  # the dedupe state: the oracle's differs by design
BOOKKEEPING = {"v", "tx"}  # the version counts writes; ``tx`` is what the last write changed


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def track(customer: str, name: str, at: float, message_id: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": customer, "messageId": message_id, "timestamp": iso(at),
            "properties": properties, "context": {"library": {"name": "analytics.js"}}}


def view(customer: str, at: float, message_id: str, product: str = "sku-1") -> dict[str, Any]:
    return track(customer, "Product Viewed", at, message_id, product_id=product, price=25.0)


def order(customer: str, at: float, message_id: str, order_id: str, revenue: float = 50.0) -> dict[str, Any]:
    return track(customer, "Order Completed", at, message_id, order_id=order_id, revenue=revenue)


def refund(customer: str, at: float, message_id: str, order_id: str, revenue: float | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"order_id": order_id}
    if revenue is not None:
        properties["revenue"] = revenue
    return track(customer, "Order Refunded", at, message_id, **properties)


class Quarantined:
    def __init__(self) -> None:
        self.records: list[QuarantinedRecord] = []

    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        self.records += records


class NoQuarantine:
    def put(self, records: Sequence[QuarantinedRecord]) -> None:
        pytest.fail(f"quarantined: {[r.reason for r in records]}")


class Stream:
    """Puts records on a simulated shard: sequence numbers are decimal and grow within the shard."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)

    def record(self, message: dict[str, Any], shard: str = SHARDS[0], sequence: str | None = None) -> StreamRecord:
        if sequence is None:
            sequence = f"{49_630_000_000_000_000_000_000 + next(self._numbers)}"
        return StreamRecord(sequence, str(message["userId"]), json.dumps(message).encode(), shard=shard)


@dataclass
class World:
    store: MemoryProfileStore
    clock: FixedClock
    stream: Stream

    def ingest(self, records: Sequence[StreamRecord], now: float, quarantine: Any = None) -> BatchResult:
        self.clock.set(now)
        return ingest_batch(records, ENGINE, self.store, quarantine or NoQuarantine(), self.clock)

    def profile(self, customer: str) -> Profile:
        return self.store.load([customer])[customer]

    def puts(self) -> int:
        return self.store.requests["PutItem"]


def world() -> World:
    return World(MemoryProfileStore(), FixedClock(B), Stream())


def views(profile: Profile) -> int:
    counter = profile.counter("Product Viewed")
    return counter.count if counter else 0


def figures(profile: Profile) -> tuple[Any, ...]:
    return (profile.orders, profile.revenue, profile.first_order, profile.last_order, views(profile),
            dict(profile.memberships))


def comparable(item: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in DEDUPE_ATTRIBUTES | BOOKKEEPING}


# ---- the property ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    message: int  # index into the history
    shard: str
    sequence: str
    at: float  # when the stream delivers it (the ingest's clock)


def history(rng: random.Random, volumes: Sequence[int]) -> list[dict[str, Any]]:
    """Each customer's messages, interleaved at random and spread over the week in order."""
    queue = [c for c, volume in enumerate(volumes) for _ in range(volume)]
    rng.shuffle(queue)
    orders: dict[int, list[str]] = {c: [] for c in range(len(volumes))}
    messages: list[dict[str, Any]] = []
    for position, c in enumerate(queue):
        customer, slot = f"cust-{c}", B + position * SPAN // len(queue)
        at = slot - rng.choice((0, 0, 0, rng.randrange(60), rng.randrange(2 * DAY)))  # some arrive late
        message_id = f"{customer}-m{position}"
        kind = rng.choices(("view", "add", "order", "refund", "identify", "email", "no-id order", "no-id refund"),
                           (40, 12, 10, 5, 5, 8, 4, 2))[0]
        if kind == "refund" and not orders[c]:
            kind = "order"
        if kind == "view":
            message = view(customer, at, message_id, f"sku-{rng.randrange(5)}")
        elif kind == "add":
            message = track(customer, "Product Added", at, message_id, product_id=f"sku-{rng.randrange(5)}",
                            price=rng.choice((5.0, 25.0, 80.0)), quantity=rng.randint(1, 3))
        elif kind == "order":
            order_id = f"{customer}-o{position}"
            orders[c].append(order_id)
            message = order(customer, at, message_id, order_id, rng.choice((10.0, 49.99, 120.0, 400.0)))
        elif kind == "refund":  # always with its amount: valid whichever orders are remembered
            message = refund(customer, at, message_id, rng.choice(orders[c]), rng.choice((5.0, 10.0, 500.0)))
        elif kind == "no-id order":  # as Segment accepts it: deduplicated by its message id alone
            message = track(customer, "Order Completed", at, message_id, revenue=rng.choice((15.0, 99.5)))
        elif kind == "no-id refund":  # matches no order: only its amount comes off the revenue
            message = track(customer, "Order Refunded", at, message_id, total=rng.choice((5.0, 20.0)))
        elif kind == "identify":
            message = {"type": "identify", "userId": customer, "messageId": message_id, "timestamp": iso(at),
                       "traits": {"plan": rng.choice(("free", "pro", "gold")), "email": f"{customer}@example.com"}}
        else:
            message = {"type": "track", "event": "Email Opened", "userId": customer, "messageId": message_id,
                       "timestamp": iso(at), "properties": {"email_id": f"e-{rng.randrange(3)}"}}
        message["_slot"] = slot
        messages.append(message)
    return messages


def deliveries(rng: random.Random, messages: list[dict[str, Any]], rate: float) -> list[Delivery]:
    """The originals in order, and after some of them a redelivery of an earlier message."""
    numbers = itertools.count(1)
    out: list[Delivery] = []
    first: dict[int, Delivery] = {}
    applied_before: dict[int, int] = {}  # message -> its customer's messages applied before it
    earlier: dict[str, list[int]] = {}  # customer -> its messages so far
    for index, message in enumerate(messages):
        customer = str(message["userId"])
        shard = SHARDS[int(customer.rsplit("-", 1)[1]) % len(SHARDS)]  # the partition key's shard
        original = Delivery(index, shard, str(49_630_000_000_000_000_000 + next(numbers)), message["_slot"])
        out.append(original)
        first[index] = original
        own = earlier.setdefault(customer, [])
        applied_before[index] = len(own)
        own.append(index)
        if rng.random() >= rate:
            continue
        pool = own if rng.random() < 0.8 else [m for m in first if m not in own] or own
        # uniform over the whole past, or one of the last few: both far back and just-delivered messages
        target = rng.choice(pool) if rng.random() < 0.7 else pool[-min(len(pool), rng.randint(1, 5))]
        again = first[target]
        newer = len(earlier[str(messages[target]["userId"])]) - 1 - applied_before[target]
        if rng.random() < 0.5 or newer >= MAX_MESSAGE_IDS - 110:  # margin: a batch applies up to 100 first
            # a Lambda retry (or bisected batch): the very record again, whatever its age
            out.append(Delivery(target, again.shard, again.sequence, message["_slot"]))
        else:
            # a redrive or a producer duplicate: the same message under a new sequence number
            out.append(Delivery(target, again.shard, str(49_630_000_000_000_000_000 + next(numbers)),
                                message["_slot"]))
    return out


def batches(rng: random.Random, items: list[Delivery], largest: int) -> list[list[Delivery]]:
    out: list[list[Delivery]] = []
    start = 0
    while start < len(items):
        size = rng.randint(1, largest)
        out.append(items[start:start + size])
        start += size
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1),
       volumes=st.lists(st.sampled_from((5, 40, 160, 400, 1_150)), min_size=1, max_size=3),
       rate=st.sampled_from((0.05, 0.2, 0.5)),
       largest=st.sampled_from((1, 10, 100)))
def test_redelivery_never_changes_what_a_perfect_dedupe_computes(seed: int, volumes: list[int], rate: float,
                                                                 largest: int) -> None:
    if sum(volumes) > 1_500:  # keeps an example under a second; one customer still reaches 1,150
        heaviest = volumes.index(max(volumes))
        volumes = [v if c == heaviest else min(v, 160) for c, v in enumerate(volumes)]
    rng = random.Random(seed)
    messages = history(rng, volumes)
    data = [json.dumps({k: v for k, v in m.items() if k != "_slot"}).encode() for m in messages]
    store, clock = MemoryProfileStore(), FixedClock(B)
    oracle: dict[str, Profile] = {}
    applied: set[str] = set()
    for batch in batches(rng, deliveries(rng, messages, rate), largest):
        now = max(d.at for d in batch)
        records = [StreamRecord(d.sequence, str(messages[d.message]["userId"]), data[d.message], shard=d.shard)
                   for d in batch]
        clock.set(now)
        result = ingest_batch(records, ENGINE, store, NoQuarantine(), clock)
        assert result.failed == [], result.failure_reasons

        fresh: dict[str, list[Any]] = {}
        for d in batch:
            event = parse_record(data[d.message])
            new = fresh.setdefault(event.customer_id, [])
            if event.message_id not in applied and all(e.message_id != event.message_id for e in new):
                new.append(event)
        for customer, events in fresh.items():
            outcome = ENGINE.apply(oracle.setdefault(customer, Profile(customer)), events, now)
            assert outcome.rejected == []
            applied.update(e.message_id for e in events)
        assert result.applied == sum(len(events) for events in fresh.values())
        assert result.duplicates == len(batch) - result.applied
        # each applied message's spec gaps, once: a redelivered order without an id is not counted again
        assert result.spec_gaps == Counter(gap for events in fresh.values() for e in events for gap in e.gaps)

        for customer in fresh:
            stored, expected = store.load([customer])[customer], oracle[customer]
            assert figures(stored) == figures(expected), customer
            assert comparable(stored.to_item()) == comparable(expected.to_item()), customer


# ---- targeted: message ids -----------------------------------------------------------------------


def test_a_message_redelivered_after_150_newer_ones_changes_nothing() -> None:
    w = world()
    w.ingest([w.stream.record(order("ana", B, "m-order", "o-1", 100.0)),
              w.stream.record(view("ana", B, "m-view"))], B + MIN)
    for n in range(150):
        w.ingest([w.stream.record(view("ana", B + n * MIN, f"m-{n}"))], B + (n + 2) * MIN)
    before, puts = w.store.item("ana"), w.puts()

    # put back on the stream by a redrive: new sequence numbers
    result = w.ingest([w.stream.record(order("ana", B, "m-order", "o-1", 100.0)),
                       w.stream.record(view("ana", B, "m-view"))], B + 151 * MIN)

    assert (result.applied, result.duplicates) == (0, 2)
    assert w.puts() == puts and w.store.item("ana") == before  # nothing written
    profile = w.profile("ana")
    assert (profile.orders, profile.revenue) == (1, 10000)
    assert views(profile) == 151


def test_a_redelivery_within_the_horizon_is_a_duplicate_and_after_it_only_its_order_is_refused() -> None:
    w = world()
    w.ingest([w.stream.record(view("ben", B, "m-view")),
              w.stream.record(order("ben", B, "m-order", "o-1", 100.0))], B)
    w.ingest([w.stream.record(view("ben", B + DEDUPE_HORIZON, "m-later"))], B + DEDUPE_HORIZON)
    assert w.ingest([w.stream.record(view("ben", B, "m-view"))], B + DEDUPE_HORIZON).duplicates == 1

    # More than 8 days after it was applied, a message id is forgotten once a write prunes it and 100
    # newer ones are kept: the view counts again (documented), the order does not (kept by its id).
    late = B + DEDUPE_HORIZON + 1
    w.ingest([w.stream.record(view("ben", late, "m-pruning"))], late)
    assert w.profile("ben").seen("m-view")  # the newest 100 ids are kept whatever their age
    w.ingest([w.stream.record(view("ben", late, f"m-{n}")) for n in range(MIN_MESSAGE_IDS - 1)], late)
    assert not w.profile("ben").seen("m-view") and w.profile("ben").seen("m-later")
    quarantine = Quarantined()
    result = w.ingest([w.stream.record(view("ben", B, "m-view")),
                       w.stream.record(order("ben", B, "m-order", "o-1", 100.0))], B + DEDUPE_HORIZON + 2, quarantine)
    assert result.applied == 1
    assert [r.reason for r in quarantine.records] == ["properties.order_id: this order was already completed"]
    profile = w.profile("ben")
    assert (profile.orders, profile.revenue) == (1, 10000)
    assert views(profile) == 3 + MIN_MESSAGE_IDS


def test_the_id_cap_forgets_the_oldest_first() -> None:
    w = world()
    w.ingest([w.stream.record(view("cleo", B, "m-oldest"))], B)
    w.ingest([w.stream.record(view("cleo", B + 1, "m-second"))], B + 1)
    newer = MAX_MESSAGE_IDS - 1  # with these, one id too many: the oldest is pushed out
    for start in range(0, newer, 100):
        w.ingest([w.stream.record(view("cleo", B + 2 + n, f"m-{n}")) for n in range(start, min(start + 100, newer))],
                 B + HOUR + start)
    count = views(w.profile("cleo"))

    result = w.ingest([w.stream.record(view("cleo", B + 1, "m-second")),
                       w.stream.record(view("cleo", B, "m-oldest"))], B + DAY)

    assert (result.applied, result.duplicates) == (1, 1)  # the oldest counts again: documented
    assert views(w.profile("cleo")) == count + 1
    assert w.profile("cleo").message_ids == MAX_MESSAGE_IDS


def test_a_profile_stored_with_the_legacy_ids_attribute_keeps_its_dedupe() -> None:
    w = world()
    w.store.put({"customer_id": "dora", "v": 4, "ca": B, "ua": B, "ids": message_digest("m-1") + message_digest("m-2"),
                 "ro": [["o-1", B, 5000]], "o": [1, 5000, B, B]})
    result = w.ingest([w.stream.record(view("dora", B, "m-1")),
                       w.stream.record(order("dora", B, "m-3", "o-1", 50.0)),  # a new id, an order it knows
                       w.stream.record(view("dora", B + MIN, "m-4"))], B + HOUR, Quarantined())
    assert (result.applied, result.duplicates) == (1, 1)
    item = w.store.item("dora")
    assert item is not None and "ids" not in item and len(item["mi"]) == 3 * 12
    profile = Profile.from_item(item)
    assert profile.seen("m-1") and profile.seen("m-2") and profile.seen("m-4")
    assert (profile.orders, profile.revenue) == (1, 5000) and profile.order_completed("o-1")


# ---- targeted: orders ------------------------------------------------------------------------------


def test_an_order_resent_with_a_new_message_id_after_20_newer_orders_is_refused() -> None:
    w = world()
    for n in range(21):
        w.ingest([w.stream.record(order("eva", B + n * HOUR, f"m-{n}", f"o-{n}", 10.0))], B + n * HOUR)
    quarantine = Quarantined()

    result = w.ingest([w.stream.record(order("eva", B, "m-again", "o-0", 10.0))], B + DAY, quarantine)

    assert result.applied == 0 and [r.field for r in quarantine.records] == ["properties.order_id"]
    assert quarantine.records[0].reason == "properties.order_id: this order was already completed"
    profile = w.profile("eva")
    assert (profile.orders, profile.revenue, profile.first_order) == (21, 21000, B)


def test_a_refunded_order_completed_again_is_refused() -> None:
    w = world()
    w.ingest([w.stream.record(order("finn", B, "m-1", "o-1", 80.0))], B)
    w.ingest([w.stream.record(refund("finn", B + HOUR, "m-2", "o-1"))], B + HOUR)  # whole: no amount
    assert (w.profile("finn").orders, w.profile("finn").revenue) == (0, 0)
    quarantine = Quarantined()

    result = w.ingest([w.stream.record(order("finn", B, "m-1b", "o-1", 80.0))], B + 2 * HOUR, quarantine)

    assert result.applied == 0 and len(quarantine.records) == 1
    assert (w.profile("finn").orders, w.profile("finn").revenue) == (0, 0)


# ---- targeted: the shard watermark ----------------------------------------------------------------


def test_the_same_record_again_is_a_duplicate_without_folding() -> None:
    w = world()
    record = w.stream.record(view("gil", B, "m-1"))
    w.ingest([record], B)
    # The watermark judges by position, not content: nothing at or below it is folded, even an id
    # the profile has never seen.
    fake = StreamRecord(record.sequence, "gil", json.dumps(view("gil", B, "m-unseen")).encode(), shard=record.shard)
    result = w.ingest([record, fake], B + MIN)
    assert (result.applied, result.duplicates) == (0, 2)
    assert not w.profile("gil").seen("m-unseen")


def test_a_lower_sequence_of_the_same_shard_is_a_duplicate_and_other_shards_are_judged_by_id() -> None:
    w = world()
    low = w.stream.record(view("hal", B, "m-low"))
    w.ingest([w.stream.record(view("hal", B, "m-1"), sequence="500")], B)
    puts = w.puts()
    below = StreamRecord("499", "hal", json.dumps(view("hal", B, "m-2")).encode(), shard=SHARDS[0])
    assert w.ingest([below], B + MIN).duplicates == 1 and w.puts() == puts

    other = SHARDS[1]
    result = w.ingest([StreamRecord("3", "hal", json.dumps(view("hal", B, "m-1")).encode(), shard=other),
                       StreamRecord("4", "hal", json.dumps(view("hal", B, "m-3")).encode(), shard=other),
                       StreamRecord("x-5", "hal", json.dumps(view("hal", B, "m-4")).encode(), shard=SHARDS[0]),
                       StreamRecord("6", "hal", low.data)], B + 2 * MIN)  # no shard: judged by id
    assert (result.applied, result.duplicates) == (3, 1)
    profile = w.profile("hal")
    assert profile.seen("m-3") and profile.seen("m-4") and profile.seen("m-low")
    assert {shard: mark[0] for shard, mark in profile.shard_marks.items()} == {SHARDS[0]: "500", other: "4"}


def test_records_keyed_by_something_else_neither_use_nor_move_the_watermark() -> None:
    # Lambda orders records per partition key only; keyed otherwise, a customer's records can arrive out of order
    # (a parallelization factor above 1), so they are judged by id alone.
    w = world()
    w.ingest([StreamRecord("500", "device-9", json.dumps(view("kim", B, "m-late")).encode(), shard=SHARDS[0])], B)
    assert w.profile("kim").shard_marks == {}
    w.ingest([w.stream.record(view("kim", B, "m-1"), sequence="600")], B + MIN)
    earlier = StreamRecord("550", "device-9", json.dumps(view("kim", B, "m-2")).encode(), shard=SHARDS[0])
    result = w.ingest([earlier], B + 2 * MIN)
    assert (result.applied, result.duplicates) == (1, 0)
    assert w.profile("kim").seen("m-2")


def test_a_lambda_retry_after_more_newer_messages_than_the_id_cap_is_a_duplicate() -> None:
    w = world()
    first = w.stream.record(order("ida", B, "m-first", "o-1", 10.0))
    second = w.stream.record(view("ida", B, "m-second"))
    w.ingest([first, second], B)
    for start in range(0, MAX_MESSAGE_IDS + 100, 100):
        w.ingest([w.stream.record(view("ida", B + n, f"m-{n}")) for n in range(start, start + 100)], B + HOUR + start)
    last = B + HOUR + MAX_MESSAGE_IDS
    assert not w.profile("ida").seen("m-second")  # the id is out of the cap; the watermark still knows
    puts = w.puts()

    result = w.ingest([first, second], last)

    assert (result.applied, result.duplicates) == (0, 2) and w.puts() == puts
    assert w.profile("ida").orders == 1


def test_a_fully_duplicate_batch_writes_nothing() -> None:
    w = world()
    records = [w.stream.record(view("jo", B + n, f"m-{n}")) for n in range(5)]
    w.ingest(records, B + MIN)
    puts = w.puts()
    assert w.ingest(records, B + MIN).duplicates == 5  # a Lambda retry
    assert w.ingest([w.stream.record(view("jo", B + n, f"m-{n}")) for n in range(5)], B + MIN).duplicates == 5
    assert w.puts() == puts


@pytest.mark.parametrize("error", [TransientError("throttled"), ConflictError("kai")])
def test_the_watermark_does_not_advance_when_the_write_fails(error: Exception) -> None:
    class Failing(MemoryProfileStore):
        failing = False

        def save(self, profile: Profile, expected_version: int) -> None:
            if self.failing:
                raise error
            super().save(profile, expected_version)

    w = world()
    w.store = store = Failing()
    w.ingest([w.stream.record(view("kai", B, "m-0"))], B)
    records = [w.stream.record(view("kai", B + 1, "m-1")), w.stream.record(view("kai", B + 2, "m-2"))]
    store.failing = True
    assert w.ingest(records, B + MIN).failed == [r.sequence for r in records]

    store.failing = False
    result = w.ingest(records, B + MIN)  # the retry
    assert (result.applied, result.duplicates) == (2, 0)
    assert views(w.profile("kai")) == 3


def test_the_watermark_stops_below_a_rejected_record_so_a_failed_quarantine_is_retried() -> None:
    w = world()
    assert w.ingest([w.stream.record(order("lea", B - HOUR, "m-first", "o-1"))], B).applied == 1
    records = [w.stream.record(order("lea", B, "m-bad", "o-1")),  # the same order again: refused
               w.stream.record(view("lea", B + 1, "m-good"))]

    class Down:
        def put(self, records: Sequence[QuarantinedRecord]) -> None:
            raise TransientError("quarantine unavailable")

    result = w.ingest(records, B + MIN, Down())
    assert result.failed == [records[0].sequence] and w.profile("lea").seen("m-good")

    quarantine = Quarantined()
    retry = w.ingest(records, B + 2 * MIN, quarantine)  # from the first failed record on
    assert retry.failed == [] and [r.sequence for r in quarantine.records] == [records[0].sequence]
    assert (retry.applied, retry.duplicates) == (0, 1)
    assert views(w.profile("lea")) == 1
