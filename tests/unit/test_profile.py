"""The profile item: round trip through DynamoDB, the dedupe state and its bounds, item size, next deadline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from cdp.core.counters import Counter
from cdp.core.profile import (
    DEDUPE_HORIZON,
    DIGEST_BYTES,
    MAX_MESSAGE_IDS,
    MAX_ORDER_DIGESTS,
    MAX_SHARD_MARKS,
    MIN_MESSAGE_IDS,
    Profile,
    item_size,
    message_digest,
)

MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z


def counter_state(counter: Counter | None) -> tuple[Any, ...]:
    assert counter is not None
    return (counter.count, counter.total, counter.first, counter.last, counter.has_sum,
            {code: {i: list(b) for i, b in buckets.items()} for code, buckets in counter.buckets.items()})


def full_profile() -> Profile:
    profile = Profile("cust-1")
    profile.version = 7
    profile.created_at = B - DAY
    profile.updated_at = B + MIN
    profile.traits = {"plan": "pro", "age": 42, "tags": ["a", "b"], "address": {"city": "Leeds"}}
    profile.channels = {"web": B, "email": B - HOUR}
    viewed = profile.counter_for_update("Product Viewed", ("m", "d"), has_sum=True)
    viewed.add(B, 1250, B)
    viewed.add(B + 30, -99, B + 30)
    profile.counter_for_update("Page Viewed", (), has_sum=False).add(B - 5, 0, B)
    profile.orders = 2
    profile.revenue = 15000
    profile.first_order = B - DAY
    profile.last_order = B
    profile.recent_orders = [["o-1", B - DAY, 5000], ["o-2", B, 10000]]
    profile.cart = {"sku-1": [2, 1999, B], "sku-2": [1, 500, B - MIN]}
    profile.last_add = ["sku-1", B]
    profile.context = {"device": "ios", "first_campaign": "spring", "last_campaign": "summer"}
    profile.remember_order("o-1")
    profile.remember_order("o-2")
    profile.remember("m-1", B)
    profile.remember("m-2", B + MIN)
    profile.mark_delivered("shardId-000000000000", "49630000000000000000000000000000000000000000000000000042", B)
    profile.memberships = {"vip": B - DAY, "shoppers": B}
    profile.deadlines = {"vip": B + DAY, "lapsed": B + HOUR}
    profile.latches = {"cart-abandon": B}
    profile.transitions = [["vip", "entered", B, "orders >= 2", "second order"]]
    profile.aliases = ["anon-1", "anon-2"]
    profile.groups = ["acme"]
    return profile


def assert_same(a: Profile, b: Profile) -> None:
    for name in ("customer_id", "version", "created_at", "updated_at", "traits", "channels", "orders", "revenue",
                 "first_order", "last_order", "recent_orders", "cart", "last_add", "context", "memberships",
                 "deadlines", "latches", "transitions", "aliases", "groups", "next_deadline", "shard_marks",
                 "message_ids"):
        assert getattr(a, name) == getattr(b, name), name
    assert sorted(a.counter_keys()) == sorted(b.counter_keys())
    for key in a.counter_keys():
        assert counter_state(a.counter(key)) == counter_state(b.counter(key)), key


# ---- to_item / from_item ----------------------------------------------------------------------------


def test_to_item_uses_the_documented_attribute_names() -> None:
    item = full_profile().to_item()
    assert set(item) == {"customer_id", "v", "ca", "ua", "t", "ch", "c", "o", "ro", "cart", "la", "cx", "mi", "od",
                         "sq", "m", "dl", "nd", "ds", "lt", "tx", "al", "gr"}
    assert item["customer_id"] == "cust-1"
    assert (item["v"], item["ca"], item["ua"]) == (7, B - DAY, B + MIN)
    assert item["o"] == [2, 15000, B - DAY, B]
    assert item["nd"] == B + HOUR
    # per message id: its 8-byte digest and the 4-byte time it was applied
    assert item["mi"] == (message_digest("m-1") + B.to_bytes(4, "big")
                          + message_digest("m-2") + (B + MIN).to_bytes(4, "big"))
    assert item["od"] == message_digest("o-1") + message_digest("o-2")
    assert item["sq"] == {"shardId-000000000000": ["49630000000000000000000000000000000000000000000000000042", B]}
    assert all(isinstance(value, bytes) for value in item["c"].values())


def test_empty_profile_item_has_only_the_key_and_stamps() -> None:
    assert Profile("c").to_item() == {"customer_id": "c", "v": 0, "ca": 0, "ua": 0}


def test_round_trip_keeps_every_attribute() -> None:
    profile = full_profile()
    item = profile.to_item()
    restored = Profile.from_item(item)
    assert_same(profile, restored)
    assert restored.seen("m-1") and restored.seen("m-2") and not restored.seen("m-3")
    assert restored.order_completed("o-1") and not restored.order_completed("o-3")
    sequence = 49630000000000000000000000000000000000000000000000000042
    assert restored.delivered("shardId-000000000000", str(sequence))
    assert not restored.delivered("shardId-000000000000", str(sequence + 1))
    assert restored.to_item() == item


def test_round_trip_through_dynamodb_types() -> None:
    # What boto3 hands back: numbers as Decimal, binary as Binary.
    profile = full_profile()
    serializer, deserializer = TypeSerializer(), TypeDeserializer()
    wire = {key: serializer.serialize(value) for key, value in profile.to_item().items()}
    item = {key: deserializer.deserialize(value) for key, value in wire.items()}
    assert isinstance(item["v"], Decimal)
    restored = Profile.from_item(item)
    assert_same(profile, restored)
    assert isinstance(restored.version, int) and isinstance(restored.channels["web"], int)
    assert isinstance(restored.recent_orders[0][1], int) and isinstance(restored.cart["sku-1"][0], int)
    assert restored.seen("m-2") and restored.order_completed("o-2")
    assert restored.shard_marks == profile.shard_marks


def test_from_item_with_only_a_key_has_defaults() -> None:
    profile = Profile.from_item({"customer_id": "c"})
    assert_same(profile, Profile("c"))
    assert profile.counter_keys() == []
    assert profile.first_order is None and profile.last_order is None and profile.last_add is None


def test_counters_stay_packed_until_read() -> None:
    packed = b"\x01"  # truncated: decoding it would fail
    profile = Profile.from_item({"customer_id": "c", "c": {"Broken": packed}})
    assert profile.counter_keys() == ["Broken"]
    assert profile.to_item()["c"] == {"Broken": packed}  # written back untouched, never decoded
    with pytest.raises(IndexError):
        profile.counter("Broken")


def test_counter_is_decoded_once_and_then_shared() -> None:
    source = Counter(("h",), has_sum=True)
    source.add(B, 100, B)
    profile = Profile.from_item({"customer_id": "c", "c": {"Viewed": source.encode()}})
    first = profile.counter("Viewed")
    assert first is not None
    assert first is profile.counter("Viewed")
    first.add(B + 1, 50, B + 1)
    assert Counter.decode(profile.to_item()["c"]["Viewed"]).total == 150


def test_counter_for_update_creates_or_extends() -> None:
    profile = Profile("c")
    assert profile.counter("x") is None
    counter = profile.counter_for_update("x", ("m",), has_sum=False)
    assert counter is profile.counter("x")
    again = profile.counter_for_update("x", ("d",), has_sum=True)
    assert again is counter
    assert set(counter.buckets) == {"m", "d"} and counter.has_sum
    profile.drop_counter("x")
    profile.drop_counter("not there")
    assert profile.counter_keys() == []


# ---- dedupe state ---------------------------------------------------------------------------------


def test_seen_only_after_remember() -> None:
    profile = Profile("c")
    assert not profile.seen("m-1")
    profile.remember("m-1", B)
    assert profile.seen("m-1")
    assert not profile.seen("m-2")


def test_digest_is_8_bytes_and_stable() -> None:
    assert DIGEST_BYTES == 8
    assert len(message_digest("m-1")) == 8
    assert message_digest("m-1") == message_digest("m-1") != message_digest("m-2")


def test_ids_are_kept_for_the_horizon_whatever_came_after() -> None:
    assert DEDUPE_HORIZON == 8 * DAY  # the stream's 7-day retention and a day for a redrive
    profile = Profile("c")
    profile.remember("m-old", B)
    for n in range(500):
        profile.remember(f"m-{n}", B + (n + 1) * MIN)
    profile.prune_dedupe(B + DEDUPE_HORIZON)
    assert profile.seen("m-old") and profile.message_ids == 501
    profile.prune_dedupe(B + DEDUPE_HORIZON + 1)  # m-old was applied more than 8 days ago
    assert not profile.seen("m-old") and profile.seen("m-0") and profile.message_ids == 500
    profile.prune_dedupe(B + 30 * DAY)  # however old, the newest 100 are kept
    assert profile.message_ids == MIN_MESSAGE_IDS == 100 and profile.seen("m-499") and not profile.seen("m-399")


def test_the_newest_ids_are_kept_whatever_their_age() -> None:
    # In event time (a replay), the clock can move weeks between two batches of one customer.
    profile = Profile("c")
    for n in range(MIN_MESSAGE_IDS):
        profile.remember(f"m-{n}", B + n)
    profile.prune_dedupe(B + 365 * DAY)
    assert all(profile.seen(f"m-{n}") for n in range(MIN_MESSAGE_IDS))
    profile.remember("m-new", B + 365 * DAY)
    profile.prune_dedupe(B + 365 * DAY)
    assert not profile.seen("m-0") and profile.seen("m-1") and profile.message_ids == MIN_MESSAGE_IDS


def test_the_cap_forgets_the_oldest_first_and_bounds_the_bytes() -> None:
    assert MAX_MESSAGE_IDS == 1_000
    profile = Profile("c")
    for n in range(MAX_MESSAGE_IDS):
        profile.remember(f"m-{n}", B + n)
    profile.prune_dedupe(B + DAY)
    assert all(profile.seen(f"m-{n}") for n in range(MAX_MESSAGE_IDS))
    assert len(profile.to_item()["mi"]) == MAX_MESSAGE_IDS * 12 == 12_000
    profile.remember("m-new", B + DAY)
    profile.remember("m-newer", B + DAY)
    assert profile.seen("m-0")  # a batch being folded never forgets: a duplicate later in it is still known
    profile.prune_dedupe(B + DAY)
    assert not profile.seen("m-0") and not profile.seen("m-1")  # the oldest are forgotten
    assert all(profile.seen(f"m-{n}") for n in range(2, MAX_MESSAGE_IDS)) and profile.seen("m-newer")
    assert len(profile.to_item()["mi"]) == MAX_MESSAGE_IDS * 12


def test_the_cap_goes_by_the_time_applied() -> None:
    profile = Profile("c")
    profile.remember("m-late", B + 10)
    for n in range(MAX_MESSAGE_IDS):
        profile.remember(f"m-{n}", B)
    profile.prune_dedupe(B + 10)
    assert profile.seen("m-late") and not profile.seen("m-0") and profile.seen("m-1")


def test_the_ids_survive_the_item_in_order() -> None:
    profile = Profile("c")
    for n in range(MAX_MESSAGE_IDS):
        profile.remember(f"m-{n}", B + n)
    restored = Profile.from_item(profile.to_item())
    restored.remember("m-new", B + DAY)
    restored.remember("m-newer", B + DAY)
    restored.prune_dedupe(B + DAY)
    assert not restored.seen("m-0") and not restored.seen("m-1")
    assert restored.seen("m-2") and restored.seen("m-999") and restored.seen("m-newer")


def test_the_legacy_ids_attribute_is_read_as_applied_at_the_last_update() -> None:
    legacy = {"customer_id": "c", "v": 3, "ua": B, "ids": message_digest("m-1") + message_digest("m-2")}
    profile = Profile.from_item(legacy)
    assert profile.seen("m-1") and profile.seen("m-2") and not profile.seen("m-3")
    item = profile.to_item()
    assert "ids" not in item
    assert item["mi"] == message_digest("m-1") + B.to_bytes(4, "big") + message_digest("m-2") + B.to_bytes(4, "big")
    for n in range(MIN_MESSAGE_IDS):
        profile.remember(f"m-new-{n}", B + DEDUPE_HORIZON)
    profile.prune_dedupe(B + DEDUPE_HORIZON)
    assert profile.seen("m-1")
    profile.prune_dedupe(B + DEDUPE_HORIZON + 1)
    assert not profile.seen("m-1") and not profile.seen("m-2")


def test_completed_orders_are_kept_up_to_their_cap() -> None:
    assert MAX_ORDER_DIGESTS == 500
    profile = Profile("c")
    for n in range(MAX_ORDER_DIGESTS + 1):
        profile.remember_order(f"o-{n}")
    assert not profile.order_completed("o-0")
    assert all(profile.order_completed(f"o-{n}") for n in range(1, MAX_ORDER_DIGESTS + 1))
    assert len(profile.to_item()["od"]) == MAX_ORDER_DIGESTS * DIGEST_BYTES == 4_000
    restored = Profile.from_item(profile.to_item())
    assert restored.order_completed(f"o-{MAX_ORDER_DIGESTS}") and not restored.order_completed("o-0")


def test_recent_orders_of_a_legacy_profile_count_as_completed() -> None:
    profile = Profile.from_item({"customer_id": "c", "ro": [["o-1", B, 5000]]})
    assert profile.order_completed("o-1") and not profile.order_completed("o-2")


def test_the_shard_watermark() -> None:
    profile = Profile("c")
    assert not profile.delivered("shard-1", "100")
    profile.mark_delivered("shard-1", "100", B)
    assert profile.delivered("shard-1", "100") and profile.delivered("shard-1", "99")
    assert not profile.delivered("shard-1", "101") and not profile.delivered("shard-2", "50")
    profile.mark_delivered("shard-1", "90", B + 1)  # never lowered
    assert profile.shard_marks == {"shard-1": ["100", B]}
    # compared as numbers, not text: sequence numbers grow in length
    profile.mark_delivered("shard-1", "1000", B + 2)
    assert profile.delivered("shard-1", "999") and not profile.delivered("shard-1", "1001")
    # no shard or a sequence that is not a number (tests, other sources): no watermark
    profile.mark_delivered("", "5", B)
    profile.mark_delivered("shard-3", "seq-5", B)
    assert set(profile.shard_marks) == {"shard-1"}
    assert not profile.delivered("", "5") and not profile.delivered("shard-1", "seq-5")


def test_shard_watermarks_expire_after_the_horizon_and_are_capped() -> None:
    profile = Profile("c")
    for n in range(MAX_SHARD_MARKS + 2):
        profile.mark_delivered(f"shard-{n}", "7", B + n)
    assert len(profile.shard_marks) == MAX_SHARD_MARKS and "shard-0" not in profile.shard_marks
    profile.prune_dedupe(B + 5 + DEDUPE_HORIZON)
    assert sorted(profile.shard_marks) == [f"shard-{n}" for n in range(5, MAX_SHARD_MARKS + 2)]


def test_the_dedupe_state_has_a_byte_bound() -> None:
    profile = Profile("c")
    for n in range(MAX_MESSAGE_IDS + 50):
        profile.remember(f"m-{n}", B)
    profile.prune_dedupe(B)
    for n in range(MAX_ORDER_DIGESTS + 50):
        profile.remember_order(f"o-{n}")
    for n in range(MAX_SHARD_MARKS + 3):
        profile.mark_delivered(f"shardId-{n:012d}", "4" * 56, B + n)
    item = profile.to_item()
    dedupe = item_size({key: item[key] for key in ("mi", "od", "sq")})
    assert dedupe <= 12_000 + 4_000 + 800 + 10
    assert item_size(item) < 20 * 1024


# ---- next deadline ----------------------------------------------------------------------------------


def test_next_deadline_is_the_earliest() -> None:
    profile = Profile("c")
    assert profile.next_deadline is None
    assert "nd" not in profile.to_item() and "dl" not in profile.to_item()
    profile.deadlines = {"a": B + DAY, "b": B + HOUR, "c": B + 2 * DAY}
    assert profile.next_deadline == B + HOUR
    assert profile.to_item()["nd"] == B + HOUR
    del profile.deadlines["b"]
    assert profile.next_deadline == B + DAY


# ---- item size --------------------------------------------------------------------------------------
# DynamoDB's rules: name bytes plus value; strings are their UTF-8 bytes; numbers 1 byte per two
# significant digits (leading and trailing zeros trimmed) plus 1; binary its raw bytes; null and
# booleans 1; lists and maps 3 bytes plus their elements, each element 1 byte more.


@pytest.mark.parametrize(
    ("item", "size"),
    [
        ({"a": "xyz"}, 1 + 3),
        ({"name": "é"}, 4 + 2),
        ({"s": ""}, 1 + 0),
        ({"é": "€"}, 2 + 3),
        ({"n": 5}, 1 + 2),
        ({"n": 42}, 1 + 2),
        ({"n": 1234}, 1 + 3),
        ({"n": 12345}, 1 + 4),  # 5 digits: 3 bytes, plus 1
        ({"n": 0.25}, 1 + 2),
        ({"n": 0.001}, 1 + 2),
        ({"n": Decimal("12.50")}, 1 + 3),  # 125
        ({"b": b"\x00\x01\x02"}, 1 + 3),
        ({"b": b""}, 1 + 0),
        ({"t": True}, 1 + 1),
        ({"z": None}, 1 + 1),
        ({"m": {}}, 1 + 3),
        ({"l": []}, 1 + 3),
        ({"m": {"k": "v"}}, 1 + 3 + (1 + 1 + 1)),
        ({"l": ["ab", 7]}, 1 + 3 + (2 + 1) + (2 + 1)),
        ({"m": {"in": {"x": [True]}}}, 1 + 3 + (2 + (3 + (1 + (3 + 1 + 1) + 1)) + 1)),
        ({"a": "xyz", "n": 42, "b": b"\x00"}, (1 + 3) + (1 + 2) + (1 + 1)),
    ],
)
def test_item_size_by_hand(item: dict[str, Any], size: int) -> None:
    assert item_size(item) == size


@pytest.mark.parametrize(
    ("number", "digits"),
    [(10, 1), (1000, 1), (123000, 3), (1_704_844_800, 8), (0.5, 1), (0.0012, 2)],
)
def test_trailing_zeros_are_not_significant(number: int | float, digits: int) -> None:
    assert item_size({"n": number}) == 1 + (digits + 1) // 2 + 1


def test_item_size_of_a_small_profile() -> None:
    profile = Profile("c1")
    profile.version = 2
    profile.created_at = 5
    profile.updated_at = 7
    profile.traits = {"plan": "pro"}
    profile.remember("m1", 5)
    expected = (
        (11 + 2)  # customer_id: "c1"
        + (1 + 2) + (2 + 2) + (2 + 2)  # v, ca, ua: one digit each
        + (1 + 3 + (4 + 3 + 1))  # t: {"plan": "pro"}
        + (2 + 12)  # mi: one 8-byte digest and its 4-byte time
    )
    assert item_size(profile.to_item()) == expected


def test_item_size_rejects_what_dynamodb_cannot_store() -> None:
    with pytest.raises(TypeError, match="cannot size"):
        item_size({"x": object()})
