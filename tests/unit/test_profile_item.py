"""The profile item in DynamoDB's wire shape: exactly what boto3 makes of it, decoded lazily, counters kept packed."""

from __future__ import annotations

import base64
import subprocess
import sys
from decimal import Inexact, Rounded
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.aws.dynamo import deserialise_item, serialise_item
from cdp.aws.profile_item import (
    STREAM_ATTRIBUTES,
    decode_number,
    decode_profile,
    decode_stream_image,
    decode_value,
    encode_profile,
    encode_value,
    number_text,
)
from cdp.core.counters import TIER_BY_CODE, Counter
from cdp.core.profile import DEDUPE_HORIZON, DEFERRED, Profile, record_product

MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
SHARD = "shardId-000000000000"

# ---- profiles of every shape ----------------------------------------------------------------------------

texts = st.text(max_size=8)
# Below 1e37: an integral float of 39 or more digits reads back as an int DynamoDB cannot hold, on either path.
floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f == 0 or 1e-120 < abs(f) < 1e37)
scalars = st.none() | st.booleans() | st.integers(-(10**38) + 1, 10**38 - 1) | floats | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=12)
times = st.integers(0, 2**32 - 1)


@st.composite
def recent_products(draw: st.DrawFn) -> list[list[Any]]:
    """Recent products as the fold records them (purchased and viewed, moved by later times, capped)."""
    products: list[list[Any]] = []
    for product, category, kind, at in draw(st.lists(st.tuples(texts, texts, st.sampled_from("pv"), times),
                                                     max_size=4)):
        record_product(products, product, category, kind, at)
    return products


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    """A profile as the fold leaves it: any subset of the attributes filled, counters built by adding events."""
    profile = Profile(draw(st.text(min_size=1, max_size=12)))
    profile.version, profile.created_at, profile.updated_at = draw(st.tuples(st.integers(0, 10**6), times, times))
    profile.traits = draw(st.dictionaries(texts, json_values, max_size=5))
    profile.context = draw(st.dictionaries(texts, json_values, max_size=4))
    profile.channels = draw(st.dictionaries(st.sampled_from(["web", "mobile", "server"]), times))
    now = B + 400 * DAY
    for key in draw(st.lists(st.sampled_from(["Product Viewed", "Page Viewed", "Order Completed|x"]), unique=True)):
        counter = profile.counter_for_update(key, tuple(draw(st.lists(st.sampled_from("mhdw"), unique=True))),
                                             draw(st.booleans()))
        for offset, value in draw(st.lists(st.tuples(st.integers(0, 400 * DAY), st.integers(-(10**6), 10**6)),
                                           max_size=6)):
            counter.add(B + offset, value, now)
    if draw(st.booleans()):
        profile.orders, profile.revenue = draw(st.integers(0, 10**4)), draw(st.integers(0, 10**12))
        profile.first_order, profile.last_order = draw(st.sampled_from([None, B])), draw(st.sampled_from([None, B]))
    for order, at, value in draw(st.lists(st.tuples(texts, times, st.integers(0, 10**9)), max_size=3)):
        profile.recent_orders.append([order, at, value])
        profile.remember_order(order)  # as the fold does for a completed order
    profile.cart = {product: [quantity, price, at] for product, (quantity, price, at) in draw(
        st.dictionaries(texts, st.tuples(st.integers(-5, 50), st.integers(0, 10**7), times), max_size=3)).items()}
    profile.last_add = draw(st.none() | st.tuples(texts, times).map(list))
    profile.products = draw(recent_products())
    for message in draw(st.lists(texts, max_size=5)):
        profile.remember(message, draw(times))
    for order in draw(st.lists(texts, max_size=3)):
        profile.remember_order(order)
    if draw(st.booleans()):
        profile.mark_delivered(SHARD, str(draw(st.integers(0, 10**55))), draw(times))
    profile.memberships = draw(st.dictionaries(texts, times, max_size=3))
    # Clauses of some memberships, and maybe of a segment left (never stored).
    profile.entered_by = {segment: draw(texts) for segment in [*profile.memberships, "left"] if draw(st.booleans())}
    profile.deadlines = draw(st.dictionaries(texts, times, max_size=3))
    profile.latches = draw(st.dictionaries(texts, times, max_size=2))
    # A backfill's entries carry a 6th element, the delivery mode.
    transition = st.tuples(texts, st.sampled_from(["entered", "exited"]), times, texts, texts) | st.tuples(
        texts, st.sampled_from(["entered", "exited"]), times, texts, texts, st.sampled_from(["none", "audiences"]))
    profile.transitions = [list(t) for t in draw(st.lists(transition, max_size=2))]
    profile.catalogue = draw(texts)
    profile.aliases = draw(st.lists(texts, max_size=2))
    profile.groups = draw(st.lists(texts, max_size=2))
    statements = st.tuples(st.dictionaries(texts, st.booleans(), max_size=3), times | st.floats(946_684_800, 2**32),
                           texts)
    for categories, stated_at, source in draw(st.lists(statements, max_size=3)):
        profile.consent.record(categories, stated_at, source, draw(texts))
    if draw(st.booleans()):
        profile.consent.unsubscribe(draw(times | st.floats(946_684_800, 2**32)),
                                    draw(st.sampled_from(["unsubscribed", "spam"])))
    return profile


def old_encoding(profile: Profile) -> dict[str, Any]:
    """What the store used to send: boto3's serializer over the plain item."""
    return serialise_item(profile.to_item())


def old_decoding(item: dict[str, Any]) -> Profile:
    return Profile.from_item(deserialise_item(item))


def exactly(item: dict[str, Any]) -> str:
    """The item with every type and order visible (``1`` is not ``1.0`` nor ``True``; maps keep their order)."""
    return repr(item)


def as_stored(item: dict[str, Any]) -> dict[str, Any]:
    """The item as DynamoDB returns it: numbers with leading and trailing zeros trimmed."""
    def trimmed(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("N"), str):
            return {"N": number_text(decode_number(value["N"]))}
        if isinstance(value, dict):
            return {k: trimmed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trimmed(v) for v in value]
        return value
    return {key: trimmed(value) for key, value in item.items()}


EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@EXAMPLES
@given(profiles())
def test_the_encoding_is_what_boto3_sends(profile: Profile) -> None:
    assert exactly(encode_profile(profile)) == exactly(old_encoding(profile))


@EXAMPLES
@given(profiles())
def test_decoding_gives_the_profile_the_boto3_path_gives(profile: Profile) -> None:
    item = encode_profile(profile)
    assert exactly(decode_profile(item).to_item()) == exactly(old_decoding(item).to_item())


@EXAMPLES
@given(profiles())
def test_a_profile_read_and_written_untouched_is_written_as_stored(profile: Profile) -> None:
    item = as_stored(encode_profile(profile))
    assert exactly(encode_profile(decode_profile(item))) == exactly(item)
    assert exactly(encode_profile(decode_profile(item))) == exactly(old_encoding(old_decoding(item)))


@EXAMPLES
@given(profiles(), st.sets(st.sampled_from(sorted(DEFERRED.values()))))
def test_fields_read_or_replaced_before_the_write_are_written_as_they_are_then(profile: Profile,
                                                                             read: set[str]) -> None:
    item = as_stored(encode_profile(profile))
    lazy, eager = decode_profile(item), old_decoding(item)
    for name in sorted(read):
        getattr(lazy, name)
    lazy.cart, eager.cart = {"sku-9": [1, 250, B]}, {"sku-9": [1, 250, B]}  # assigned without being read
    lazy.traits["plan"] = eager.traits["plan"] = "gold"  # changed in place after the read
    assert exactly(encode_profile(lazy)) == exactly(old_encoding(eager))


def test_fields_the_fold_reads_now_and_then_stay_stored_until_read() -> None:
    profile = Profile("ada")
    profile.traits = {"plan": "pro"}
    profile.cart = {"sku-1": [1, 999, B]}
    profile.remember("m-1", B)
    profile.memberships = {"vip": B}
    stored = decode_profile(encode_profile(profile))
    assert set(stored.unread()) == {"t", "cart"}
    assert stored.memberships == {"vip": B}  # read by every evaluation: decoded at once
    assert stored.cart == {"sku-1": [1, 999, B]}
    assert set(stored.unread()) == {"t"}
    assert stored.seen("m-1") and not stored.seen("m-2")  # looked up in the packed ids


def test_every_deferred_field_reads_as_the_old_path_does() -> None:
    profile = Profile("ada")
    profile.traits = {"n": 1.5, "whole": 2.0, "nested": {"list": [1, "a", None, True]}}
    profile.recent_orders = [["o-1", B, 1999]]
    profile.remember_order("o-1")
    profile.last_add = ["sku-1", B]
    profile.context = {"device": "ios", "at": B}
    profile.mark_delivered(SHARD, "49630000000000000000000000000000000000000000000000000042", B)
    profile.transitions = [["vip", "entered", B, "orders", "second order"]]
    profile.aliases, profile.groups = ["anon-1"], ["acme"]
    profile.consent.record({"analytics": True}, B + 0.5, "web", "m-9")
    profile.products = [["sku-1", "shoes", "v", B], ["sku-1", "", "p", B + 1]]
    item = encode_profile(profile)
    lazy, eager = decode_profile(item), old_decoding(item)
    for name in DEFERRED.values():
        assert repr(getattr(lazy, name)) == repr(getattr(eager, name)), name
    assert lazy.traits["whole"] == 2 and type(lazy.traits["whole"]) is int


@pytest.mark.parametrize("legacy", ["ids", "ro without od", "ro not all in od"])
def test_legacy_dedupe_layouts_decode_as_before(legacy: str) -> None:
    profile = Profile("ada")
    profile.updated_at = B
    profile.recent_orders = [["o-1", B, 1999]]
    profile.remember_order("o-1")
    profile.remember("m-1", B - HOUR)
    item = encode_profile(profile)
    if legacy == "ids":
        item["ids"] = {"B": b"12345678"}
    elif legacy == "ro without od":
        del item["od"]
    else:
        item["od"] = {"B": b"12345678"}
    lazy, eager = decode_profile(item), old_decoding(item)
    assert exactly(lazy.to_item()) == exactly(eager.to_item())
    assert lazy.order_completed("o-1")


def test_a_stored_profile_with_only_its_key_has_defaults() -> None:
    profile = decode_profile({"customer_id": {"S": "ada"}})
    assert (profile.customer_id, profile.version, profile.traits, profile.last_add) == ("ada", 0, {}, None)
    assert exactly(encode_profile(profile)) == exactly(old_encoding(Profile.from_item({"customer_id": "ada"})))


# ---- counters written as read ----------------------------------------------------------------------------


def stored_with_counters() -> dict[str, Any]:
    profile = Profile("ada")
    for key in ("Product Viewed", "Page Viewed"):
        counter = profile.counter_for_update(key, ("m", "d"), has_sum=True)
        counter.add(B, 100, B)
        counter.add(B + HOUR, 250, B + HOUR)
    return encode_profile(profile)


def test_a_counter_only_read_is_written_as_it_was_stored() -> None:
    item = stored_with_counters()
    stored = {key: value["B"] for key, value in item["c"]["M"].items()}
    profile = decode_profile(item)
    viewed = profile.counter("Product Viewed")
    assert viewed is not None and viewed.window(TIER_BY_CODE["d"], DAY, B + HOUR) == (2, 350)
    assert not viewed.changed
    written = encode_profile(profile)["c"]["M"]
    assert written["Product Viewed"]["B"] is stored["Product Viewed"]  # the very bytes read: not encoded again
    assert written["Page Viewed"]["B"] is stored["Page Viewed"]


def test_a_counter_that_counted_or_lost_buckets_is_encoded_again() -> None:
    item = stored_with_counters()
    profile = decode_profile(item)
    added = profile.counter_for_update("Product Viewed", ("m", "d"), has_sum=True)
    added.add(B + 2 * HOUR, 5, B + 2 * HOUR)
    pruned = profile.counter("Page Viewed")
    assert pruned is not None and pruned.prune(B + 2 * HOUR)  # the minute buckets are past their hour
    written = encode_profile(profile)["c"]["M"]
    for key, counter in (("Product Viewed", added), ("Page Viewed", pruned)):
        assert written[key]["B"] == counter.encode() != item["c"]["M"][key]["B"]
        assert Counter.decode(written[key]["B"]).count == counter.count


def test_a_counter_whose_buckets_were_cleared_directly_is_encoded_again() -> None:
    profile = decode_profile(stored_with_counters())
    counter = profile.counter("Page Viewed")
    assert counter is not None
    counter.buckets.clear()  # as the fold does for a counter no segment reads any more
    assert counter.changed
    assert Counter.decode(encode_profile(profile)["c"]["M"]["Page Viewed"]["B"]).buckets == {}


def test_a_prune_that_removes_nothing_keeps_the_stored_bytes() -> None:
    profile = decode_profile(stored_with_counters())
    counter = profile.counter("Product Viewed")
    assert counter is not None and not counter.prune(B + HOUR - 1)  # the first minute bucket is kept
    assert not counter.changed


# ---- values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -7, 10**38 - 1, -(10**38) + 1, 0.1, -0.0, 1e20, 1.5e-7, 1e-130, 123456789.125,
                                   2.0, True, False, None, "", "é", b"\x00\xff", [1, [2.5, None]], {"a": {"b": [True]}},
                                   (1, "x")])
def test_values_encode_as_boto3_does(value: Any) -> None:
    assert exactly(encode_value(value)) == exactly(serialise_item({"x": value})["x"])


@pytest.mark.parametrize("value", [10**38, -(10**38), 2**200, 1e130, 1e-170, float("nan"), float("inf"), object()])
def test_what_boto3_refuses_is_refused(value: Any) -> None:
    with pytest.raises((TypeError, Inexact, Rounded, ArithmeticError)) as boto3_error:
        serialise_item({"x": value})
    with pytest.raises(boto3_error.type):
        encode_value(value)


@pytest.mark.parametrize("text", ["0", "7", "-7", "1.5", "-0.25", "100", "1E+2", "2.50", "0.0", "12345678901234"])
def test_numbers_decode_as_the_boto3_path_does(text: str) -> None:
    expected = deserialise_item({"x": {"N": text}})["x"]
    assert repr(decode_number(text)) == repr(expected)


@pytest.mark.parametrize("value", [{"SS": ["a", "b"]}, {"NS": ["1", "2.5"]}, {"BS": [b"a"]}, {"NULL": True},
                                   {"BOOL": False}, {"M": {"l": {"L": [{"N": "1"}, {"S": "s"}]}}}])
def test_attribute_values_decode_as_the_boto3_path_does(value: dict[str, Any]) -> None:
    expected = deserialise_item({"x": value})["x"]
    assert sorted(map(repr, _as_list(decode_value(value)))) == sorted(map(repr, _as_list(expected)))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(TypeError):
        decode_value({"X": "?"})


# ---- the table stream image ------------------------------------------------------------------------------


def as_stream_image(item: dict[str, Any]) -> dict[str, Any]:
    """As Lambda delivers a stream image: binary values as base64 text."""
    def text(value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("B"), bytes):
            return {"B": base64.b64encode(value["B"]).decode()}
        if isinstance(value, dict):
            return {k: text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [text(v) for v in value]
        return value
    return {key: text(value) for key, value in item.items()}


@EXAMPLES
@given(profiles())
def test_the_stream_image_gives_what_the_changes_function_reads(profile: Profile) -> None:
    item = encode_profile(profile)
    image = decode_stream_image(as_stream_image(item))
    whole = deserialise_item(item)
    assert exactly(image) == exactly({key: whole[key] for key in STREAM_ATTRIBUTES if key in whole})


def test_a_stream_image_of_a_foreign_shape_fails_as_before() -> None:
    with pytest.raises(TypeError):
        decode_stream_image({"customer_id": {"S": "ada"}, "m": {"X": "?"}})
    with pytest.raises(ValueError):
        decode_stream_image({"customer_id": {"S": "ada"}, "m": {"S": "a", "N": "1"}})
    assert decode_stream_image({"customer_id": {"S": "ada"}, "m": {"S": "edited"}})["m"] == "edited"


# ---- cold start ------------------------------------------------------------------------------------------


def test_the_codec_imports_no_boto3() -> None:
    code = ("import sys, cdp.aws.profile_item;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- message ids read in place ---------------------------------------------------------------------------

operations = st.lists(st.tuples(st.sampled_from(["remember", "seen", "prune"]), st.integers(0, 1500),
                                st.integers(0, 20 * DAY)), max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1200), st.integers(0, 20 * DAY), operations)
def test_packed_message_ids_behave_as_unpacked_ones(stored_ids: int, spread: int,
                                                    steps: list[tuple[str, int, int]]) -> None:
    profile = Profile("ada")
    for number in range(stored_ids):
        profile.remember(f"m-{number}", B + (number * spread // max(stored_ids, 1)))
    item = encode_profile(profile)
    packed, unpacked = decode_profile(item), old_decoding(item)
    for step, number, offset in steps:
        if step == "remember":
            packed.remember(f"m-{number}", B + offset)
            unpacked.remember(f"m-{number}", B + offset)
        elif step == "seen":
            assert packed.seen(f"m-{number}") == unpacked.seen(f"m-{number}")
        else:
            packed.prune_dedupe(B + offset)
            unpacked.prune_dedupe(B + offset)
        assert packed.message_ids == unpacked.message_ids
    assert packed.packed_message_ids() == unpacked.packed_message_ids()
    assert exactly(encode_profile(packed)) == exactly(old_encoding(unpacked))


def test_a_prune_with_nothing_to_forget_leaves_the_stored_ids_packed() -> None:
    profile = Profile("ada")
    for number in range(300):
        profile.remember(f"m-{number}", B + number)
    stored = decode_profile(encode_profile(profile))
    stored.remember("m-new", B + HOUR)
    stored.prune_dedupe(B + HOUR)  # all within the horizon
    assert stored.packed_message_ids().startswith(profile.packed_message_ids())
    stored.prune_dedupe(B + DEDUPE_HORIZON + 1)  # only the first one is past the horizon now
    assert stored.message_ids == 300 and not stored.seen("m-0") and stored.seen("m-new")
