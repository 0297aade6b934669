"""Bad input never crashes a batch (issue 13), at the handlers under moto: each bad record is quarantined
with a specific reason while the rest of the batch is applied; malformed envelopes fail the invocation
with a named error; a foreign table item fails only its own stream record; reasons never echo values;
quarantine objects are unique across shards."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cdp.core.catalogue import build_catalogue
from cdp.core.clock import EventClock, FixedClock
from cdp.core.engine import Engine
from cdp.core.fold import MAX_LIFETIME_REVENUE
from cdp.core.profile import Profile
from cdp.envelopes import MalformedEnvelope

from .support import (
    PROFILES_TABLE,
    Stack,
    failures,
    identify,
    iso,
    kinesis_envelope,
    track,
)

DAY = 86400
MARKER = "leak.me@example.com"
YEAR_2999 = 32_503_680_000.0  # 2999-12-31T00:00:00Z, about
DEEP = "message: is nested more than 32 levels deep; the limit is 32"
FUTURE = "timestamp: is more than 300 s in the future"
BEFORE_2000 = "timestamp: is before 2000-01-01T00:00:00Z, the earliest accepted"


def quarantined_by_message_id(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each quarantined line by the messageId of its payload (or its sequence number, if unreadable)."""
    lines = {}
    for line in stack.quarantined():
        data = base64.b64decode(line["data"])
        try:
            key = json.loads(data)["messageId"]
        except (ValueError, KeyError, TypeError, RecursionError):
            key = line["sequence"]
        lines[str(key)] = line
    return lines


def views(stack: Stack, customer_id: str) -> int:
    counter = stack.profile(customer_id).counter("Product Viewed")
    return counter.count if counter is not None else 0


def deep_message(levels: int, now: float, array: bool = False) -> bytes:
    body = json.dumps(track("deep", "Product Viewed", now - 30, "deep-1", x="HERE"))
    inner = "[" * levels + "]" * levels if array else '{"a":' * levels + "1" + "}" * levels
    return body.replace('"HERE"', inner).encode()


# ---- 1. nesting ---------------------------------------------------------------------------------------


def test_json_nested_a_thousand_levels_deep_is_quarantined_and_the_batch_applied(stack: Stack) -> None:
    now = stack.clock.now()
    deep = deep_message(1000, now)
    assert 5_000 < len(deep) < 7_000
    envelope = kinesis_envelope([track("ana", "Product Viewed", now - 60, "ana-1"), deep,
                                 deep_message(15_000, now, array=True),  # past the recursion limit, < 32 KB
                                 track("ana", "Product Viewed", now - 50, "ana-2")])
    envelope["Records"][2]["kinesis"]["partitionKey"] = "deep"

    response = stack.ingest(envelope)

    assert failures(response) == []
    lines = stack.quarantined()
    assert [(line["field"], line["reason"]) for line in lines] == [("message", DEEP)] * 2
    assert base64.b64decode(lines[0]["data"]) == deep  # kept whole for a redrive
    assert views(stack, "ana") == 2
    assert stack.profile_item("deep") is None


# ---- 2. amounts, quantities, stored numbers ------------------------------------------------------------


def test_numbers_that_dynamodb_cannot_store_are_quarantined_with_the_field_named(stack: Stack) -> None:
    now = stack.clock.now()
    at = now - 60
    # A stored profile whose lifetime revenue is one cent short of 38 digits (in hundredths).
    rich = Profile("rich")
    rich.orders, rich.revenue, rich.first_order, rich.last_order = 1, MAX_LIFETIME_REVENUE - 1, int(at), int(at)
    stack.store().save(rich, 0)
    envelope = kinesis_envelope([
        track("bo", "Order Completed", at, "revenue-1e40", order_id="o-1", revenue=1e40),
        track("bo", "Order Completed", at, "total-40-digits", order_id="o-2", total=10**40),
        track("bo", "Product Added", at, "price-1e40", product_id="p-1", price=1e40),
        track("bo", "Product Added", at, "quantity-1e40", product_id="p-1", price=1, quantity=10**40),
        track("bo", "Order Completed", at, "products-1e40", order_id="o-3", products=[{"price": 1e12, "quantity": 2}]),
        identify("bo", at, "trait-40-digits", score=10**40),
        identify("bo", at, "trait-1e200", ratio=[1, {"x": 1e200}]),
        track("rich", "Order Completed", at, "past-38-digits", order_id="o-4", revenue=1),
        track("bo", "Order Completed", at, "fine-order", order_id="o-5", revenue=12.5),
        track("bo", "Product Added", at, "fine-add", product_id="p-2", price=3, quantity=2),
        identify("bo", at, "fine-traits", score=10**37, ratio=0.5),
    ])

    response = stack.ingest(envelope)

    assert failures(response) == []
    amount = "must be at most 1,000,000,000,000"
    stored = ("holds a number DynamoDB cannot store: whole numbers have at most 38 digits, and numbers are finite"
              " and zero or from 1e-130 to below 1e+126 in magnitude")
    assert {key: line["reason"] for key, line in quarantined_by_message_id(stack).items()} == {
        "revenue-1e40": f"properties.revenue: {amount}",
        "total-40-digits": f"properties.total: {amount}",
        "price-1e40": f"properties.price: {amount}",
        "quantity-1e40": "properties.quantity: must be a whole number from 1 to 10,000",
        "products-1e40": "properties.products: the order's value (price times quantity, summed) must be at most"
                         " 1,000,000,000,000",
        "trait-40-digits": f"traits.score: {stored}",
        "trait-1e200": f"traits.ratio: {stored}",
        "past-38-digits": "properties.revenue: would take lifetime revenue past 38 digits, DynamoDB's limit",
    }
    bo = stack.profile("bo")
    assert (bo.orders, bo.revenue) == (1, 1250)
    assert bo.cart["p-2"][:2] == [2, 300]
    assert bo.traits == {"score": 10**37, "ratio": 0.5}
    rich_now = stack.profile("rich")
    assert (rich_now.orders, rich_now.revenue) == (1, MAX_LIFETIME_REVENUE - 1)


# ---- 3. timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wall", "event"])
def test_far_future_and_pre_2000_timestamps_are_quarantined_before_any_clock_sees_them(stack: Stack,
                                                                                        mode: str) -> None:
    wall = stack.clock.now()
    clock = stack.clock if mode == "wall" else EventClock(wall - 7 * DAY, wall=FixedClock(wall))
    envelope = kinesis_envelope([
        track("cy", "Product Viewed", wall - 120, "cy-1"),
        track("cy", "Product Viewed", YEAR_2999, "year-2999"),
        track("cy", "Product Viewed", wall + 301, "five-minutes-and-a-second"),
        {**track("cy", "Product Viewed", 0, "before-2000"), "timestamp": "1999-12-31T23:59:59Z"},
        track("cy", "Product Viewed", wall + 299, "slightly-ahead"),  # within the skew: applied
        track("cy", "Product Viewed", wall - 60, "cy-2"),
    ])

    response = stack.ingest(envelope, clock=clock)

    assert failures(response) == []
    reasons = {key: (line["field"], line["reason"]) for key, line in quarantined_by_message_id(stack).items()}
    assert reasons == {"year-2999": ("timestamp", FUTURE), "five-minutes-and-a-second": ("timestamp", FUTURE),
                       "before-2000": ("timestamp", BEFORE_2000)}
    assert views(stack, "cy") == 3
    if mode == "event":
        assert clock.now() == wall + 299  # the latest accepted event, not 2999
    profile = stack.profile("cy")
    assert profile.updated_at <= wall + 300 and all(at <= wall + 300 for at in profile.deadlines.values())

    # The next batch in event time is evaluated as of its own time, not 2999.
    later = kinesis_envelope([track("cy", "Product Viewed", wall - 30, "cy-3")])
    assert failures(stack.ingest(later, clock=clock)) == []
    assert views(stack, "cy") == 4


def test_the_allowed_skew_is_the_engines_configured_one(stack: Stack) -> None:
    wall = stack.clock.now()
    engine = Engine(stack.catalogue, max_future_skew=60)
    envelope = kinesis_envelope([track("di", "Product Viewed", wall + 61, "ahead"),
                                 track("di", "Product Viewed", wall + 59, "fine")])

    assert failures(stack.ingest(envelope, engine=engine)) == []

    assert [line["reason"] for line in stack.quarantined()] == ["timestamp: is more than 60 s in the future"]
    assert views(stack, "di") == 1


# ---- 4. malformed envelopes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "message"), [
    ({}, "Records: is missing; this is not a Kinesis batch"),
    ({"Records": None}, "Records: must be an array, not null; this is not a Kinesis batch"),
    ({"Records": [{"eventID": "shardId-000000000000:1", "eventSource": "aws:kinesis"}]},
     "Records[0].kinesis: is missing; this is not a Kinesis record"),
], ids=["empty object", "Records null", "record without kinesis"])
def test_a_malformed_kinesis_envelope_fails_the_invocation_with_a_named_error(
        stack: Stack, caplog: pytest.LogCaptureFixture, event: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        stack.ingest(event)

    assert str(caught.value) == message
    assert any(entry.levelname == "ERROR" and getattr(entry, "reason", None) == message
               for entry in caplog.records), caplog.records
    assert stack.counter.of("dynamodb") == {} and stack.counter.of("s3") == {}


def test_a_malformed_kinesis_envelope_mid_batch_fails_it_before_anything_is_written(stack: Stack) -> None:
    envelope = kinesis_envelope([track("ed", "Product Viewed", stack.clock.now() - 60, "ed-1")])
    envelope["Records"].append({"eventID": "shardId-000000000000:2"})
    with pytest.raises(MalformedEnvelope, match=r"Records\[1\]\.kinesis: is missing"):
        stack.ingest(envelope)
    assert stack.scan(PROFILES_TABLE) == []


def test_an_empty_batch_is_nothing_to_do(stack: Stack) -> None:
    assert stack.ingest({"Records": []}) == {"batchItemFailures": []}
    assert stack.changes({"Records": []}) == {"batchItemFailures": []}


@pytest.mark.parametrize(("event", "message"), [
    ({}, "Records: is missing; this is not a DynamoDB stream batch"),
    ({"Records": None}, "Records: must be an array, not null; this is not a DynamoDB stream batch"),
    ({"Records": [{"eventID": "1", "eventName": "MODIFY"}]},
     "Records[0].dynamodb: is missing; this is not a DynamoDB stream record"),
], ids=["empty object", "Records null", "record without dynamodb"])
def test_a_malformed_table_stream_envelope_fails_the_invocation_with_a_named_error(
        stack: Stack, caplog: pytest.LogCaptureFixture, event: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        stack.changes(event)

    assert str(caught.value) == message
    assert any(entry.levelname == "ERROR" and getattr(entry, "reason", None) == message
               for entry in caplog.records), caplog.records


def hand_edit(stack: Stack, customer_id: str, **attributes: Any) -> None:
    """Overwrite a stored profile item's attributes as someone with console access might."""
    item = stack.dynamodb.get_item(TableName=PROFILES_TABLE, Key={"customer_id": {"S": customer_id}})["Item"]
    stack.dynamodb.put_item(TableName=PROFILES_TABLE, Item={**item, **attributes})


def test_a_hand_edited_item_fails_only_its_own_stream_record(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    now = stack.clock.now()
    customers = ("fay", "gus", "hal", "ivy", "jon")
    added = [track(c, "Product Added", now - 3 * DAY, f"{c}-1", product_id="sku-1", price=5) for c in customers]
    assert failures(stack.ingest(kinesis_envelope(added))) == []
    stack.changes(stack.stream_envelope())
    stack.drain_events()
    assert failures(stack.ingest(kinesis_envelope(
        [track(c, "Order Completed", now - 60, f"{c}-2", order_id=f"o-{c}", revenue=5) for c in customers]))) == []
    hand_edit(stack, "gus", m={"S": MARKER})  # a string instead of a map
    hand_edit(stack, "hal", m={"M": {"recent-buyers": {"S": "soon"}}})  # a time that is not a number
    hand_edit(stack, "ivy", tx={"S": "edited"})
    envelope = stack.stream_envelope()
    # A hand edit keeps the version; every write of the ingest function bumps it.
    edits = [r for r in envelope["Records"] if r["dynamodb"]["OldImage"]["v"] == r["dynamodb"]["NewImage"]["v"]]
    assert len(edits) == 3 and len(envelope["Records"]) == 8
    # One whose image Lambda could not have produced from DynamoDB at all: an unknown type.
    broken = json.loads(json.dumps(edits[0]))
    broken["dynamodb"]["SequenceNumber"] = "9" + broken["dynamodb"]["SequenceNumber"]
    broken["dynamodb"]["NewImage"]["m"] = {"X": MARKER}
    envelope["Records"].append(broken)

    response = stack.changes(envelope)

    failed = failures(response)
    assert failed == [r["dynamodb"]["SequenceNumber"] for r in edits] + [broken["dynamodb"]["SequenceNumber"]]
    published = {(e["detail"]["customer_id"], e["detail"]["change"]) for e in stack.drain_events()}
    assert {c for c, _ in published} == set(customers)  # every good record's changes; the v2 writes of all five
    [warning] = [entry for entry in caplog.records if entry.levelname == "WARNING"]
    out = json.dumps(getattr(warning, "reasons", None))
    assert "not a profile item: new image: m must be a map of segment id to member-since time" in out
    assert "not a profile item: new image: m must map each segment id to a time (member since)" in out
    assert "not a profile item: new image: tx must be a list of [segment, kind, time, clause, reason]" in out
    assert "not a profile item: NewImage is not a DynamoDB item image (TypeError)" in out
    assert MARKER not in out


# ---- 5. no reason echoes a value ------------------------------------------------------------------------


def test_no_quarantine_reason_echoes_a_field_value(stack: Stack) -> None:
    at = stack.clock.now() - 60

    def bad(message_id: str, **fields: Any) -> dict[str, Any]:
        return {**track("kai", "Product Added", at, message_id, product_id="p"), **fields}

    messages: list[dict[str, Any] | bytes] = [
        bad("type", type=MARKER),
        bad("timestamp", timestamp=MARKER),
        bad("original", timestamp=None, originalTimestamp=MARKER),
        bad("received", timestamp=None, receivedAt=MARKER),
        bad("quantity", properties={"product_id": "p", "quantity": MARKER}),
        bad("price", properties={"product_id": "p", "price": MARKER}),
        bad("product", properties={"product_id": [MARKER]}),
        bad("event", event=MARKER * 10),
        bad("context", context=MARKER),
        bad("traits", type="identify", traits={"bio": MARKER * 100}),
        track("kai", "Order Completed", at, "order", order_id={"id": MARKER}, revenue=1),
        track("kai", "Order Completed", at, "revenue", order_id="o", revenue=MARKER),
        track("kai", "Order Completed", at, "first", order_id=MARKER, revenue=1),
        track("kai", "Order Completed", at, "again", order_id=MARKER, revenue=1),  # already completed
        f'{{"type": "track", "userId": "kai", "messageId": "{MARKER}", oops'.encode(),
    ]
    accepted = [  # as Segment accepts them: applied, and the value is not kept in a reason either
        bad("channel", channel=MARKER),  # a channel we do not name: decided from the context
        track("kai", "Order Refunded", at, "refund", order_id=MARKER + "-unknown"),  # unknown, no amount: counted
    ]
    envelope = kinesis_envelope([*messages, *accepted])

    assert failures(stack.ingest(envelope)) == []

    lines = stack.quarantined()
    assert len(lines) == len(messages) - 1  # all but the first order
    for line in lines:
        assert MARKER in base64.b64decode(line["data"]).decode()  # the payload is kept whole
        assert MARKER not in line["reason"] and MARKER not in line["field"], line["reason"]
        assert line["reason"].startswith(line["field"] + ": ")
    kai = stack.profile("kai")
    assert kai.seen("first") and kai.seen("channel") and kai.seen("refund") and kai.orders == 1


# ---- 6. quarantine keys -------------------------------------------------------------------------------


def test_two_shards_batches_with_the_same_first_sequence_number_give_two_objects(stack: Stack) -> None:
    at = stack.clock.now() - 60
    shard_0 = kinesis_envelope([{**track("lu", "Product Viewed", at, "lu-1"), "type": "purchase"}])
    shard_1 = json.loads(json.dumps(shard_0))
    record = shard_1["Records"][0]
    record["eventID"] = "shardId-000000000001:" + record["kinesis"]["sequenceNumber"]
    record["kinesis"]["data"] = base64.b64encode(json.dumps(
        {**track("mo", "Product Viewed", at, "mo-1"), "type": "purchase"}).encode()).decode()

    assert failures(stack.ingest(shard_0)) == []
    assert failures(stack.ingest(shard_1)) == []

    sequence = shard_0["Records"][0]["kinesis"]["sequenceNumber"]
    keys = sorted(stack.quarantine_keys())
    day = iso(stack.clock.now())[:10].replace("-", "/")
    assert keys == [f"quarantine/{day}/cdp-events-shardId-00000000000{n}-{sequence}.jsonl" for n in (0, 1)]
    assert sorted(line["shard"] for line in stack.quarantined()) == ["shardId-000000000000", "shardId-000000000001"]


def test_a_catalogue_free_engine_still_applies_good_events(stack: Stack) -> None:
    """The guards need no segment to act on: an empty catalogue quarantines the same records."""
    now = stack.clock.now()
    envelope = kinesis_envelope([track("ny", "Product Viewed", now - 60, "ny-1"),
                                 track("ny", "Product Viewed", YEAR_2999, "ny-2")])
    assert failures(stack.ingest(envelope, engine=Engine(build_catalogue([])))) == []
    assert [line["reason"] for line in stack.quarantined()] == [FUTURE]
    assert views(stack, "ny") == 1
