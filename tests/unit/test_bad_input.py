"""Bad input never crashes a batch (issue 13), in the pure core: the parse-time limits (nesting, amounts,
quantities, stored numbers, timestamps), reasons that never echo a value, the event clock's horizon,
foreign table images, malformed envelopes and quarantine keys."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cdp.aws.dynamo import serialise_item
from cdp.aws.quarantine import object_key
from cdp.config import ConfigError, IngestConfig
from cdp.core.catalogue import build_catalogue
from cdp.core.clock import DEFAULT_MAX_FUTURE_SKEW, EventClock, FixedClock, WallClock, clock_from_env, wall_time
from cdp.core.engine import Engine
from cdp.core.events import (
    EARLIEST_TIMESTAMP,
    MAX_AMOUNT,
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    MAX_QUANTITY,
    InvalidEvent,
    _too_deep,
    normalise,
    parse_record,
)
from cdp.core.fold import MAX_LIFETIME_REVENUE
from cdp.core.profile import Profile
from cdp.envelopes import MalformedEnvelope, kinesis_records, table_stream_records
from cdp.pipeline.changes import TableChange, check_image, publish_changes
from cdp.ports import QuarantinedRecord
from tests.unit.messages import msg, track
from tests.unit.messages import rejected as refused

B = 1_704_844_800
MARKER = "leak.me@example.com"
SEGMENTS = Path(__file__).resolve().parents[2] / "segments"
TOO_DEEP = f"is nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}"
AMOUNT_RULE = "must be at most 1,000,000,000,000"
QUANTITY_RULE = "must be a whole number from 1 to 10,000"


def refused_record(data: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_record(data)
    return caught.value


def nested(levels: int) -> str:
    """``levels`` objects, one inside the other, as JSON text."""
    return '{"a":' * levels + "1" + "}" * levels


def with_property(raw_json: str) -> bytes:
    """A valid track message whose ``properties.x`` is this JSON text (the message adds 2 levels)."""
    return json.dumps(track("Product Viewed", {"x": "HERE"})).replace('"HERE"', raw_json).encode()


# ---- 1. nesting depth ---------------------------------------------------------------------------------


def test_a_thousand_levels_of_nesting_about_6_kb_is_refused_by_its_depth() -> None:
    data = with_property(nested(1000))
    assert 5_000 < len(data) < 7_000

    error = refused_record(data)

    assert (error.field, error.reason) == ("message", TOO_DEEP)


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, 999, 1000, 5000, 15_000])
def test_deep_arrays_are_refused_however_deep_even_past_the_recursion_limit(levels: int) -> None:
    data = with_property("[" * levels + "]" * levels)
    assert len(data) <= MAX_MESSAGE_BYTES

    assert (refused_record(data).field, refused_record(data).reason) == ("message", TOO_DEEP)


def test_exactly_32_levels_are_accepted_and_33_refused() -> None:
    # the message object is level 1, properties level 2, so x may nest 30 more
    assert parse_record(with_property(nested(MAX_DEPTH - 2))).properties["x"]["a"]
    assert refused_record(with_property(nested(MAX_DEPTH - 1))).reason == TOO_DEEP


def test_brackets_inside_strings_do_not_count() -> None:
    text = "[{" * 2000 + '\\"' + "]}" * 10
    event = parse_record(json.dumps(track("Product Viewed", {"x": text, "y": [{"z": "]]]"}] * 40})).encode())
    assert event.properties["x"] == text  # holds a backslash and a quote, escaped in the JSON


def test_many_shallow_brackets_are_fine() -> None:
    products = [{"product_id": f"p{n}", "price": 1, "quantity": 1, "tags": ["a", {"b": []}]} for n in range(200)]
    event = parse_record(json.dumps(track("Order Completed", {"order_id": "o", "products": products})).encode())
    assert event.amount == 200


def test_the_depth_check_does_not_recurse() -> None:
    text = "[" * 20_000 + "]" * 20_000
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(100, len([frame for frame in iter_frames()]) + 50))
    try:
        assert _too_deep(text, MAX_DEPTH)
        assert not _too_deep("[" * MAX_DEPTH + "]" * MAX_DEPTH, MAX_DEPTH)
    finally:
        sys.setrecursionlimit(limit)


def iter_frames() -> Iterator[object]:
    frame = sys._getframe()
    while frame is not None:
        yield frame
        frame = frame.f_back  # type: ignore[assignment]


# ---- 2. amounts, quantities and stored numbers ---------------------------------------------------------

AMOUNTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("revenue 1e40", track("Order Completed", {"order_id": "o", "revenue": 1e40}), "properties.revenue",
     AMOUNT_RULE),
    ("whole revenue of 40 digits", track("Order Completed", {"order_id": "o", "revenue": 10**40}),
     "properties.revenue", AMOUNT_RULE),
    ("revenue past the float range", track("Order Completed", {"order_id": "o", "revenue": 10**400}),
     "properties.revenue", AMOUNT_RULE),
    ("total 1e40", track("Order Refunded", {"order_id": "o", "total": 1e40}), "properties.total", AMOUNT_RULE),
    ("price 1e40", track("Product Added", {"product_id": "p", "price": 1e40}), "properties.price", AMOUNT_RULE),
    ("product price 1e40", track("Order Completed", {"order_id": "o", "products": [{"price": 1e40}]}),
     "properties.products[0].price", AMOUNT_RULE),
    ("products summing past the limit", track("Order Completed", {"order_id": "o", "products": [
        {"price": MAX_AMOUNT, "quantity": 1}, {"price": 1, "quantity": 1}]}), "properties.products",
     "the order's value (price times quantity, summed) must be at most 1,000,000,000,000"),
    ("quantity 1e40", track("Product Added", {"product_id": "p", "quantity": 10**40}), "properties.quantity",
     QUANTITY_RULE),
    ("quantity one over", track("Product Added", {"product_id": "p", "quantity": MAX_QUANTITY + 1}),
     "properties.quantity", QUANTITY_RULE),
    ("float quantity 1e40", track("Product Removed", {"product_id": "p", "quantity": 1e40}),
     "properties.quantity", QUANTITY_RULE),
    ("product quantity 1e40", track("Order Completed", {"order_id": "o", "products": [
        {"price": 1, "quantity": 10**40}]}), "properties.products[0].quantity", QUANTITY_RULE),
]


@pytest.mark.parametrize(("message", "field", "reason"), [case[1:] for case in AMOUNTS],
                         ids=[case[0] for case in AMOUNTS])
def test_amounts_and_quantities_are_bounded_with_the_field_named(message: dict[str, Any], field: str,
                                                                  reason: str) -> None:
    error = refused(message)
    assert (error.field, error.reason) == (field, reason)


def test_the_limits_themselves_are_accepted() -> None:
    assert normalise(track("Order Completed", {"order_id": "o", "revenue": MAX_AMOUNT})).amount == MAX_AMOUNT
    cart = normalise(track("Product Added", {"product_id": "p", "price": MAX_AMOUNT, "quantity": MAX_QUANTITY}))
    assert (cart.amount, cart.quantity) == (MAX_AMOUNT, MAX_QUANTITY)


TRAIT_NUMBERS = [10**38, -(10**38), 10**39 + 1, 1e200, -1e130, 1e-200, 5e-324, [1, {"deep": 10**40}],
                 {"a": [1e127]}]


@pytest.mark.parametrize("value", TRAIT_NUMBERS, ids=[repr(v)[:30] for v in TRAIT_NUMBERS])
def test_trait_numbers_dynamodb_cannot_store_are_refused(value: object) -> None:
    error = refused(msg("identify", traits={"score": value, "plan": "gold"}))
    assert error.field == "traits.score"
    assert error.reason.startswith("holds a number DynamoDB cannot store: whole numbers have at most 38 digits")


def test_trait_numbers_at_dynamodb_limits_are_stored() -> None:
    traits = {"big": 10**38 - 1, "small": -(10**38 - 1), "large": 9.99e125, "tiny": 1e-130, "zero": 0,
              "list": [1.5, {"x": 2}], "flag": True, "none": None}
    event = normalise(msg("identify", traits=traits))
    profile = Profile("u-1")
    engine = Engine(build_catalogue([]))
    assert engine.apply(profile, [event], now=B + 60).applied == 1
    assert serialise_item(profile.to_item())["t"]["M"]["big"] == {"N": str(10**38 - 1)}


def order(order_id: str, revenue: float, at: float = B) -> Any:
    return normalise(track("Order Completed", {"order_id": order_id, "revenue": revenue},
                           messageId=f"m-{order_id}", timestamp=_iso(at)))


def _iso(moment: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def test_lifetime_revenue_past_38_digits_is_refused_with_a_reason() -> None:
    engine = Engine(build_catalogue([]))
    profile = Profile("u-1")
    profile.orders, profile.revenue = 3, MAX_LIFETIME_REVENUE - 99  # hundredths

    outcome = engine.apply(profile, [order("o-last", 1.0)], now=B + 60)

    assert outcome.applied == 0
    [(_, reason)] = outcome.rejected
    assert reason == "properties.revenue: would take lifetime revenue past 38 digits, DynamoDB's limit"
    assert (profile.orders, profile.revenue) == (3, MAX_LIFETIME_REVENUE - 99)
    # one cent less fits, and is stored exactly
    assert engine.apply(profile, [order("o-fits", 0.99)], now=B + 60).applied == 1
    assert profile.revenue == MAX_LIFETIME_REVENUE
    assert serialise_item(profile.to_item())["o"]["L"][1] == {"N": str(MAX_LIFETIME_REVENUE)}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400, 1e40, -1e40],
                         ids=["inf", "-inf", "nan", "10**400", "1e40", "-1e40"])
def test_a_summed_property_out_of_range_adds_nothing_and_crashes_nothing(value: object) -> None:
    engine = Engine(build_catalogue([("tips.yaml", {"id": "tippers", "name": "Tippers", "condition": {
        "sum": {"event": "Tip Given", "property": "amount", "gte": 1}}})]))
    profile = Profile("u-1")
    events = [normalise(track("Tip Given", {"amount": value}, messageId="bad")),
              normalise(track("Tip Given", {"amount": 2.5}, messageId="good"))]

    outcome = engine.apply(profile, events, now=B + 60)

    assert outcome.applied == 2
    counter = profile.counter("Tip Given")
    assert counter is not None and (counter.count, counter.total) == (2, 250)
    serialise_item(profile.to_item())


# ---- 3. timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                                   "2000-01-01T00:30:00+01:00"])
def test_timestamps_before_2000_are_refused_at_parse(value: str) -> None:
    error = refused(msg(timestamp=value))
    assert (error.field, error.reason) == ("timestamp", "is before 2000-01-01T00:00:00Z, the earliest accepted")
    assert refused(msg(timestamp=None, originalTimestamp=value)).field == "originalTimestamp"


def test_2000_itself_is_accepted_and_the_far_future_is_left_to_ingest() -> None:
    assert normalise(msg(timestamp="2000-01-01T00:00:00Z")).timestamp == EARLIEST_TIMESTAMP
    assert normalise(msg(timestamp="2999-01-01T00:00:00Z")).timestamp > 3e10  # refused against the wall clock


def test_the_event_clock_never_moves_past_wall_time_plus_its_skew() -> None:
    wall = FixedClock(B)
    clock = EventClock(B - 3600, max_ahead=300, wall=wall)

    assert clock.observe(B + 301) is False
    assert clock.now() == B - 3600  # 2999 (or 5 minutes and a second) never moves it
    assert clock.observe(32_503_680_000.0) is False
    assert clock.observe(B + 300) is True
    assert clock.now() == B + 300
    wall.advance(60)
    assert clock.observe(B + 360) is True and clock.now() == B + 360


def test_wall_time_is_an_event_clocks_wall_clock_or_the_clock_itself() -> None:
    assert wall_time(EventClock(0.0, wall=FixedClock(B))) == B
    assert wall_time(FixedClock(B + 5)) == B + 5
    assert abs(wall_time(WallClock()) - wall_time(EventClock())) < 5


def test_the_skew_is_a_setting_read_at_cold_start() -> None:
    base = {"PROFILES_TABLE": "t", "QUARANTINE_BUCKET": "b", "CATALOGUE_PATH": str(SEGMENTS), "IDENTITY_TABLE": "i"}
    assert IngestConfig.from_env(base).max_future_skew == DEFAULT_MAX_FUTURE_SKEW == 300
    assert IngestConfig.from_env({**base, "CDP_MAX_FUTURE_SKEW_SECONDS": "60"}).max_future_skew == 60
    for bad in ("soon", "-1", "86401"):
        with pytest.raises(ConfigError, match="CDP_MAX_FUTURE_SKEW_SECONDS"):
            IngestConfig.from_env({**base, "CDP_MAX_FUTURE_SKEW_SECONDS": bad})
    clock = clock_from_env("event", 60)
    assert isinstance(clock, EventClock) and clock.max_ahead == 60


def test_the_engine_uses_its_configured_skew() -> None:
    engine = Engine(build_catalogue([]), max_future_skew=60)
    ahead = normalise(msg(timestamp=_iso(B + 61)))
    outcome = engine.apply(Profile("u-1"), [ahead], now=B)
    assert outcome.rejected == [(ahead, "timestamp: is more than 60 s in the future")]


# ---- 5. reasons never echo a value ---------------------------------------------------------------------

ECHOES: list[tuple[str, object]] = [
    ("type", msg(type=MARKER)),
    ("timestamp", msg(timestamp=MARKER)),
    ("originalTimestamp", msg(timestamp=None, originalTimestamp=MARKER)),
    ("timestamp", msg(timestamp={"at": MARKER})),
    ("receivedAt", msg(timestamp=None, receivedAt=MARKER)),
    ("messageId", msg(messageId=MARKER * 20)),
    ("messageId", msg(messageId=[MARKER])),
    ("userId", msg(userId={"id": MARKER})),
    ("anonymousId", msg(userId=None, anonymousId=[MARKER])),
    ("event", msg(event=MARKER * 10)),
    ("event", msg(event={"name": MARKER})),
    ("message", [MARKER]),
    ("message", MARKER),
    ("properties", msg(properties=MARKER)),
    ("context", msg(context=MARKER)),
    ("context.traits", msg(context={"traits": [MARKER]})),
    ("traits", msg("identify", traits=MARKER)),
    ("traits.bio", msg("identify", traits={"bio": MARKER * 100})),
    ("traits", msg("identify", traits={MARKER: MARKER * 100})),  # a trait named like data is not named
    ("traits", msg("identify", traits={MARKER: 10**40})),
    ("previousId", msg("alias", previousId={"id": MARKER})),
    ("groupId", msg("group", groupId=[MARKER])),
    ("properties.quantity", track("Product Added", {"product_id": "p", "quantity": MARKER})),
    ("properties.quantity", track("Product Added", {"product_id": "p", "quantity": [MARKER]})),
    ("properties.price", track("Product Added", {"product_id": "p", "price": MARKER})),
    ("properties.product_id", track("Product Added", {"product_id": [MARKER]})),
    ("properties.revenue", track("Order Completed", {"order_id": "o", "revenue": MARKER})),
    ("properties.total", track("Order Completed", {"order_id": "o", "total": {"v": MARKER}})),
    ("properties.order_id", track("Order Completed", {"order_id": {"id": MARKER}, "revenue": 1})),
    ("properties.products", track("Order Completed", {"order_id": "o", "products": MARKER})),
    ("properties.products[0]", track("Order Completed", {"order_id": "o", "products": [MARKER]})),
    ("properties.products[0].price", track("Order Completed", {"order_id": "o", "products": [{"price": MARKER}]})),
    ("properties.products[0].quantity", track("Order Completed", {"order_id": "o", "products": [
        {"price": 1, "quantity": MARKER}]})),
]


@pytest.mark.parametrize(("field", "message"), ECHOES, ids=[f"{n}-{case[0]}" for n, case in enumerate(ECHOES)])
def test_a_reason_names_the_field_and_the_rule_never_the_value(field: str, message: object) -> None:
    error = refused(message)
    assert error.field == field
    assert str(error).startswith(f"{field}: ") and len(error.reason) > 5
    assert MARKER not in str(error)


@pytest.mark.parametrize("data", [
    f'{{"type": "track", "event": "{MARKER}", oops}}'.encode(),
    f'{{"type": "track", "event": "{MARKER}\xe9"}}'.encode("latin-1"),
    f'{{"type": "{MARKER}"'.encode(),
    with_property(f'[{{"m": "{MARKER}", "x": ' + "[" * 40 + "]" * 40 + "}]"),
], ids=["not JSON", "not UTF-8", "truncated", "too deep"])
def test_raw_record_reasons_never_echo_the_payload(data: bytes) -> None:
    assert MARKER not in str(refused_record(data))


def test_engine_reasons_never_echo_the_order_id() -> None:
    engine = Engine(build_catalogue([]))
    profile = Profile("u-1")
    engine.apply(profile, [order(MARKER, 10)], now=B + 60)
    again = normalise(track("Order Completed", {"order_id": MARKER, "revenue": 10}, messageId="again"))
    unknown = normalise(track("Order Refunded", {"order_id": MARKER + "-2"}, messageId="refund"))
    outcome = engine.apply(profile, [again, unknown], now=B + 60)
    assert outcome.applied == 1  # the refund of an unknown order is counted; the order again is refused
    [(refused_event, reason)] = outcome.rejected
    assert refused_event is again and MARKER not in reason and reason.startswith("properties.order_id: ")


def test_an_unknown_channel_is_accepted_and_never_kept_as_given() -> None:
    event = normalise(msg(channel=MARKER))
    assert event.channel == "server" and MARKER not in repr(event.gaps)  # inferred; no gap names it


# ---- 4. foreign table images and malformed envelopes ---------------------------------------------------


class Index:
    def __init__(self) -> None:
        self.recorded: list[Any] = []

    def write(self, change: Any) -> int:
        self.recorded.append(change)
        return 0

    def size_counter(self, change: Any) -> str:
        return str(change.segment_id)

    def add_size(self, counter: str, delta: int) -> None:
        raise AssertionError("no write took effect, so there is no size to change")


class Bus:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def publish(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        self.entries += entries
        return []


def image(**fields: Any) -> dict[str, Any]:
    return {"customer_id": "c-1", "v": 2, "ua": B, "m": {"vip": B}, **fields}


FOREIGN: list[tuple[str, dict[str, Any], str]] = [
    ("m a string", image(m=MARKER), "new image: m must be a map of segment id to member-since time"),
    ("m a list", image(m=[MARKER]), "new image: m must be a map of segment id to member-since time"),
    ("m a string time", image(m={"vip": MARKER}), "new image: m must map each segment id to a time (member since)"),
    ("m a boolean time", image(m={"vip": True}), "new image: m must map each segment id to a time (member since)"),
    ("v a string", image(v=MARKER), "new image: v must be a number"),
    ("ua a map", image(ua={"x": 1}), "new image: ua must be a time (Unix seconds)"),
    ("m past year 9999", image(m={"vip": 1e300}), "new image: m must map each segment id to a time (member since)"),
    ("tx time negative", image(tx=[["vip", "entered", -1, "c", "r"]]),
     "new image: tx must be a list of [segment, kind, time, clause, reason]"),
    ("t a string", image(t=MARKER), "new image: t must be a map of trait name to value"),
    ("tx a string", image(tx=MARKER), "new image: tx must be a list of [segment, kind, time, clause, reason]"),
    ("tx short", image(tx=[["vip"]]), "new image: tx must be a list of [segment, kind, time, clause, reason]"),
    ("no customer id", {"v": 1, "m": {"vip": B}}, "new image: customer_id must be a string"),
]


@pytest.mark.parametrize(("new", "reason"), [case[1:] for case in FOREIGN], ids=[case[0] for case in FOREIGN])
def test_a_foreign_item_fails_only_its_own_record(new: dict[str, Any], reason: str) -> None:
    index, bus = Index(), Bus()
    records = [TableChange("1", None, image(customer_id="before")), TableChange("2", image(m={}), new),
               TableChange("3", None, image(customer_id="after"))]

    result = publish_changes(records, build_catalogue([]), index, bus, "bus")

    assert result.failed == ["2"]
    assert result.failure_reasons == {"2": f"not a profile item: {reason}"}
    assert MARKER not in result.failure_reasons["2"]
    assert [c.customer_id for c in index.recorded] == ["before", "after"]
    assert len(bus.entries) == 2


def test_the_old_image_is_checked_too_and_an_unreadable_image_fails_its_record() -> None:
    with pytest.raises(ValueError, match="old image: m must be a map"):
        check_image(image(m="x"), "old")
    index, bus = Index(), Bus()
    records = [TableChange("1", None, None, "NewImage is not a DynamoDB item image (TypeError)"),
               TableChange("2", None, image())]
    result = publish_changes(records, build_catalogue([]), index, bus, "bus")
    assert result.failure_reasons == {"1": "not a profile item: NewImage is not a DynamoDB item image (TypeError)"}
    assert len(bus.entries) == 1


KINESIS_ENVELOPES: list[tuple[str, object, str]] = [
    ("empty object", {}, "Records: is missing; this is not a Kinesis batch"),
    ("Records null", {"Records": None}, "Records: must be an array, not null"),
    ("Records an object", {"Records": {"kinesis": {}}}, "Records: must be an array, not an object"),
    ("not an object", [MARKER], "the event must be a Kinesis batch object with Records, not an array"),
    ("record a string", {"Records": [MARKER]}, "Records[0]: must be an object, not a string"),
    ("record without kinesis", {"Records": [{"eventID": MARKER}]},
     "Records[0].kinesis: is missing; this is not a Kinesis record"),
    ("kinesis null", {"Records": [{"kinesis": {"sequenceNumber": "1"}}, {"kinesis": None}]},
     "Records[1].kinesis: must be an object, not null"),
    ("no sequence number", {"Records": [{"kinesis": {"data": MARKER}}]},
     "Records[0].kinesis.sequenceNumber: is required (a non-empty string)"),
]


@pytest.mark.parametrize(("event", "message"), [case[1:] for case in KINESIS_ENVELOPES],
                         ids=[case[0] for case in KINESIS_ENVELOPES])
def test_a_malformed_kinesis_envelope_is_named(event: object, message: str) -> None:
    with pytest.raises(MalformedEnvelope) as caught:
        kinesis_records(event)
    assert str(caught.value).startswith(message) and MARKER not in str(caught.value)


def test_a_malformed_table_stream_envelope_is_named() -> None:
    with pytest.raises(MalformedEnvelope, match=r"^Records: is missing; this is not a DynamoDB stream batch$"):
        table_stream_records({})
    with pytest.raises(MalformedEnvelope, match=r"^Records\[0\]\.dynamodb: is missing"):
        table_stream_records({"Records": [{"eventID": "x"}]})
    with pytest.raises(MalformedEnvelope, match=r"^Records\[0\]\.dynamodb\.SequenceNumber: is required"):
        table_stream_records({"Records": [{"dynamodb": {"NewImage": {}}}]})
    assert table_stream_records({"Records": []}) == []


# ---- 6. quarantine keys -------------------------------------------------------------------------------


def test_quarantine_keys_are_unique_across_shards() -> None:
    at = 1_792_497_600.0  # 2026-10-20
    first = QuarantinedRecord("kinesis:cdp-events", "4963001", "c", b"x", "type: is required", "type", at,
                              "shardId-000000000000")
    other = QuarantinedRecord("kinesis:cdp-events", "4963001", "c", b"x", "type: is required", "type", at,
                              "shardId-000000000001")
    assert object_key([first]) == "quarantine/2026/10/20/cdp-events-shardId-000000000000-4963001.jsonl"
    assert object_key([other]) == "quarantine/2026/10/20/cdp-events-shardId-000000000001-4963001.jsonl"
    assert first.as_json()["shard"] == "shardId-000000000000"
