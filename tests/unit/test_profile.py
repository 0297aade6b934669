"""The profile item: round trip through DynamoDB, the dedupe ring, item size, next deadline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from cdp.counters import Counter
from cdp.profile import DIGEST_BYTES, RECENT_IDS, Profile, item_size, message_digest

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
    profile.remember("m-1")
    profile.remember("m-2")
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
                 "deadlines", "latches", "transitions", "aliases", "groups", "next_deadline"):
        assert getattr(a, name) == getattr(b, name), name
    assert sorted(a.counter_keys()) == sorted(b.counter_keys())
    for key in a.counter_keys():
        assert counter_state(a.counter(key)) == counter_state(b.counter(key)), key


# ---- to_item / from_item ----------------------------------------------------------------------------


def test_to_item_uses_the_documented_attribute_names() -> None:
    item = full_profile().to_item()
    assert set(item) == {"customer_id", "v", "ca", "ua", "t", "ch", "c", "o", "ro", "cart", "la", "cx", "ids", "m",
                         "dl", "nd", "ds", "lt", "tx", "al", "gr"}
    assert item["customer_id"] == "cust-1"
    assert (item["v"], item["ca"], item["ua"]) == (7, B - DAY, B + MIN)
    assert item["o"] == [2, 15000, B - DAY, B]
    assert item["nd"] == B + HOUR
    assert item["ids"] == message_digest("m-1") + message_digest("m-2")
    assert all(isinstance(value, bytes) for value in item["c"].values())


def test_empty_profile_item_has_only_the_key_and_stamps() -> None:
    assert Profile("c").to_item() == {"customer_id": "c", "v": 0, "ca": 0, "ua": 0}


def test_round_trip_keeps_every_attribute() -> None:
    profile = full_profile()
    item = profile.to_item()
    restored = Profile.from_item(item)
    assert_same(profile, restored)
    assert restored.seen("m-1") and restored.seen("m-2") and not restored.seen("m-3")
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
    assert restored.seen("m-2")


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


# ---- dedupe ring ------------------------------------------------------------------------------------


def test_seen_only_after_remember() -> None:
    profile = Profile("c")
    assert not profile.seen("m-1")
    profile.remember("m-1")
    assert profile.seen("m-1")
    assert not profile.seen("m-2")


def test_digest_is_8_bytes_and_stable() -> None:
    assert DIGEST_BYTES == 8
    assert len(message_digest("m-1")) == 8
    assert message_digest("m-1") == message_digest("m-1") != message_digest("m-2")


def test_ring_keeps_the_last_100_ids() -> None:
    profile = Profile("c")
    for n in range(RECENT_IDS):
        profile.remember(f"m-{n}")
    assert all(profile.seen(f"m-{n}") for n in range(RECENT_IDS))
    assert len(profile.to_item()["ids"]) == RECENT_IDS * DIGEST_BYTES
    profile.remember("m-new")
    assert not profile.seen("m-0")  # the oldest is forgotten
    assert all(profile.seen(f"m-{n}") for n in range(1, RECENT_IDS))
    assert profile.seen("m-new")
    assert len(profile.to_item()["ids"]) == RECENT_IDS * DIGEST_BYTES


def test_ring_survives_the_item_in_order() -> None:
    profile = Profile("c")
    for n in range(RECENT_IDS):
        profile.remember(f"m-{n}")
    restored = Profile.from_item(profile.to_item())
    restored.remember("m-new")
    restored.remember("m-newer")
    assert not restored.seen("m-0") and not restored.seen("m-1")
    assert restored.seen("m-2") and restored.seen("m-99") and restored.seen("m-newer")


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
    profile.remember("m1")
    expected = (
        (11 + 2)  # customer_id: "c1"
        + (1 + 2) + (2 + 2) + (2 + 2)  # v, ca, ua: one digit each
        + (1 + 3 + (4 + 3 + 1))  # t: {"plan": "pro"}
        + (3 + 8)  # ids: one 8-byte digest
    )
    assert item_size(profile.to_item()) == expected


def test_item_size_rejects_what_dynamodb_cannot_store() -> None:
    with pytest.raises(TypeError, match="cannot size"):
        item_size({"x": object()})
