"""Normalising Segment / RudderStack messages into events, and rejecting what can never be applied."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cdp.core.events import (
    MAX_MESSAGE_BYTES,
    EventContext,
    InvalidEvent,
    normalise,
    parse_record,
)
from tests.unit.messages import B_ISO, msg, rejected, track

B = 1_704_844_800  # 2024-01-10T00:00:00Z


# ---- the six message types -------------------------------------------------------------------------


def test_track_keeps_its_event_name_and_properties() -> None:
    event = normalise(track("Signed Up", {"plan": "pro", "seats": 3}))
    assert event.type == "track"
    assert event.name == "Signed Up"
    assert event.message_id == "m-1"
    assert event.customer_id == "u-1"
    assert event.timestamp == B
    assert event.properties == {"plan": "pro", "seats": 3}
    assert event.traits == {}
    assert event.amount is None and event.order_id is None and event.product_id is None
    assert event.quantity == 1


@pytest.mark.parametrize(
    ("kind", "name"),
    [("identify", "Identify"), ("page", "Page Viewed"), ("screen", "Screen Viewed"), ("alias", "Alias"),
     ("group", "Group")],
)
def test_non_track_types_get_a_fixed_name(kind: str, name: str) -> None:
    event = normalise(msg(kind, event="Ignored For Non Track"))
    assert event.type == kind
    assert event.name == name


def test_identify_carries_traits() -> None:
    event = normalise(msg("identify", traits={"email": "a@example.com", "plan": "pro"}))
    assert event.traits == {"email": "a@example.com", "plan": "pro"}


def test_alias_carries_previous_id() -> None:
    event = normalise(msg("alias", previousId="anon-42"))
    assert event.previous_id == "anon-42"
    assert event.customer_id == "u-1"


def test_group_carries_group_id_and_traits() -> None:
    event = normalise(msg("group", groupId="acme", traits={"industry": "retail"}))
    assert event.group_id == "acme"
    assert event.traits == {"industry": "retail"}


def test_previous_and_group_ids_are_optional_on_other_types() -> None:
    event = normalise(msg("track"))
    assert event.previous_id is None and event.group_id is None
    event = normalise(msg("track", previousId="p", groupId="g"))
    assert (event.previous_id, event.group_id) == ("p", "g")


def test_numeric_ids_become_strings() -> None:
    event = normalise(msg(messageId=123, userId=456))
    assert event.message_id == "123"
    assert event.customer_id == "456"
    assert event.user_id == "456"


def test_id_of_exactly_the_limit_is_accepted() -> None:
    assert normalise(msg(userId="u" * 256)).customer_id == "u" * 256


# ---- identity ---------------------------------------------------------------------------------------


def test_user_id_wins_over_anonymous_id() -> None:
    event = normalise(msg(userId="u-9", anonymousId="a-9"))
    assert event.customer_id == "u-9"
    assert event.user_id == "u-9"
    assert event.anonymous_id == "a-9"


def test_anonymous_id_alone_identifies_the_customer() -> None:
    event = normalise(msg(userId=None, anonymousId="a-9"))
    assert event.customer_id == "a-9"
    assert event.user_id is None
    assert event.anonymous_id == "a-9"


def test_empty_user_id_falls_back_to_anonymous_id() -> None:
    event = normalise(msg(userId="", anonymousId="a-9"))
    assert event.customer_id == "a-9"
    assert event.user_id is None


# ---- timestamps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-10T00:00:00Z", B),
        ("2024-01-10T00:00:00+00:00", B),
        ("2024-01-10T02:00:00+02:00", B),
        ("2024-01-09T19:00:00-05:00", B),
        ("2024-01-10T00:00:00.250Z", B + 0.25),
    ],
)
def test_timestamps_with_a_zone_are_unix_seconds(text: str, expected: float) -> None:
    assert normalise(msg(timestamp=text)).timestamp == expected


def test_original_timestamp_is_used_when_timestamp_is_absent() -> None:
    assert normalise(msg(timestamp=None, originalTimestamp="2024-01-10T00:01:00Z")).timestamp == B + 60


def test_timestamp_wins_over_original_timestamp() -> None:
    event = normalise(msg(timestamp="2024-01-10T00:00:00Z", originalTimestamp="2024-01-01T00:00:00Z"))
    assert event.timestamp == B


# ---- traits -----------------------------------------------------------------------------------------


def test_rudderstack_traits_in_context_are_used() -> None:
    event = normalise(msg("identify", context={"traits": {"email": "r@example.com"}}))
    assert event.traits == {"email": "r@example.com"}


def test_top_level_traits_win_over_context_traits() -> None:
    event = normalise(msg("identify", traits={"plan": "pro", "name": "Top"},
                          context={"traits": {"plan": "free", "email": "r@example.com"}}))
    assert event.traits == {"plan": "pro", "name": "Top", "email": "r@example.com"}


def test_context_traits_on_a_track_call_are_kept() -> None:
    event = normalise(track("Signed Up", context={"traits": {"plan": "free"}}))
    assert event.traits == {"plan": "free"}


def test_trait_under_the_size_limit_is_accepted() -> None:
    event = normalise(msg("identify", traits={"bio": "x" * 1000}))
    assert event.traits["bio"] == "x" * 1000


def test_non_ascii_trait_is_measured_in_utf8_bytes() -> None:
    # 200 x "é" is 400 bytes of UTF-8 (402 as JSON): far under the 1024-byte limit for one trait.
    value = "é" * 200
    assert len(json.dumps(value, ensure_ascii=False).encode()) == 402
    event = normalise(msg("identify", traits={"name": value}))
    assert event.traits["name"] == value


# ---- channels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["web", "mobile", "email", "server"])
def test_explicit_channel_is_used(channel: str) -> None:
    assert normalise(msg(channel=channel, context={"library": {"name": "analytics-ios"}})).channel == channel


def test_rudderstack_sources_channel_is_server() -> None:
    assert normalise(msg(channel="sources", context={"library": {"name": "rudder-sdk-js"}})).channel == "server"


def test_segment_client_channel_is_decided_by_the_library() -> None:
    # Segment's own analytics.js payloads carry "channel": "client" (a client-side library, not a channel
    # this platform names); the library then says which client it was.
    event = normalise(msg("page", channel="client", context={"library": {"name": "analytics.js", "version": "3.2.5"}}))
    assert event.channel == "web"


@pytest.mark.parametrize(
    ("library", "channel"),
    [
        ("analytics.js", "web"),
        ("analytics-next", "web"),
        ("rudderanalytics", "web"),
        ("rudder-sdk-js", "web"),
        ("analytics-ios", "mobile"),
        ("analytics-android", "mobile"),
        ("analytics-react-native", "mobile"),
        ("analytics-swift", "mobile"),
        ("analytics-kotlin", "mobile"),
        ("analytics-flutter", "mobile"),
        ("rudder-ios", "mobile"),
        ("rudder-android", "mobile"),
        ("analytics-node", "server"),
        ("analytics-python", "server"),
    ],
)
def test_library_decides_the_channel(library: str, channel: str) -> None:
    assert normalise(msg(context={"library": {"name": library, "version": "1.0"}})).channel == channel


def test_library_wins_over_message_type() -> None:
    assert normalise(msg("page", context={"library": {"name": "analytics-ios"}})).channel == "mobile"
    assert normalise(msg("screen", context={"library": {"name": "analytics.js"}})).channel == "web"


def test_screen_is_mobile_and_page_is_web_without_a_library() -> None:
    assert normalise(msg("screen")).channel == "mobile"
    assert normalise(msg("page")).channel == "web"


@pytest.mark.parametrize(
    ("context", "channel"),
    [
        ({"app": {"name": "Shop", "version": "1.2"}}, "mobile"),
        ({"userAgent": "Mozilla/5.0"}, "web"),
        ({"page": {"path": "/"}}, "web"),
        ({"ip": "8.8.8.8"}, "server"),
        ({}, "server"),
    ],
)
def test_client_context_decides_the_channel(context: dict[str, Any], channel: str) -> None:
    assert normalise(msg(context=context)).channel == channel


def test_no_client_context_at_all_is_server() -> None:
    assert normalise(msg()).channel == "server"


@pytest.mark.parametrize(
    "name", ["Email Delivered", "Email Opened", "Email Link Clicked", "Email Bounced", "Email Marked as Spam",
             "Unsubscribed"],
)
def test_email_spec_events_always_come_from_email(name: str) -> None:
    event = normalise(track(name, channel="server", context={"library": {"name": "analytics.js"}}))
    assert event.channel == "email"


# ---- context metadata -------------------------------------------------------------------------------


def test_context_metadata_is_kept() -> None:
    context = {
        "device": {"type": "ios", "model": "iPhone7,2"},
        "os": {"name": "iPhone OS", "version": "8.1.3"},
        "location": {"country": "United States", "city": "San Francisco"},
        "campaign": {"name": "TPS Innovation Newsletter", "source": "Newsletter", "medium": "email"},
    }
    assert normalise(msg(context=context)).context == EventContext(
        device_type="ios", os="iPhone OS", country="United States", city="San Francisco",
        utm_source="Newsletter", utm_medium="email", utm_campaign="TPS Innovation Newsletter",
    )


def test_missing_or_malformed_context_metadata_is_none() -> None:
    assert normalise(msg()).context == EventContext()
    odd = {"device": "phone", "os": {"name": 7}, "location": {"country": ""}, "campaign": None}
    assert normalise(msg(context=odd)).context == EventContext()


def test_context_labels_are_cut_to_100_characters() -> None:
    event = normalise(msg(context={"campaign": {"name": "c" * 150}}))
    assert event.context.utm_campaign == "c" * 100


# ---- Ecommerce v2 -----------------------------------------------------------------------------------


def test_order_completed_uses_revenue() -> None:
    event = normalise(track("Order Completed", {"order_id": "o-1", "revenue": 25.5, "total": 30}))
    assert event.order_id == "o-1"
    assert event.amount == 25.5


def test_order_completed_falls_back_to_total() -> None:
    assert normalise(track("Order Completed", {"order_id": "o-1", "total": 30})).amount == 30.0


def test_order_value_is_the_sum_of_price_times_quantity() -> None:
    products = [{"product_id": "p1", "price": 10, "quantity": 3}, {"product_id": "p2", "price": 2.5}]
    event = normalise(track("Order Completed", {"order_id": "o-1", "products": products}))
    assert event.amount == pytest.approx(32.5)


def test_order_with_no_products_is_worth_nothing() -> None:
    assert normalise(track("Order Completed", {"order_id": "o-1", "products": []})).amount == 0.0


def test_order_of_zero_revenue_is_valid() -> None:
    assert normalise(track("Order Completed", {"order_id": "o-1", "revenue": 0})).amount == 0.0


def test_numeric_order_id_becomes_a_string() -> None:
    assert normalise(track("Order Completed", {"order_id": 1001, "revenue": 1})).order_id == "1001"


@pytest.mark.parametrize("name", ["Order Refunded", "Order Cancelled"])
def test_refund_or_cancellation_without_an_amount_covers_the_whole_order(name: str) -> None:
    event = normalise(track(name, {"order_id": "o-1"}))
    assert event.order_id == "o-1"
    assert event.amount is None


def test_refund_with_a_partial_amount() -> None:
    assert normalise(track("Order Refunded", {"order_id": "o-1", "total": 5})).amount == 5.0


@pytest.mark.parametrize("name", ["Product Added", "Product Removed"])
def test_cart_events_carry_product_quantity_and_unit_price(name: str) -> None:
    event = normalise(track(name, {"product_id": "p-1", "price": 19.99, "quantity": 2}))
    assert event.product_id == "p-1"
    assert event.quantity == 2
    assert event.amount == 19.99


def test_product_added_accepts_sku_when_there_is_no_product_id() -> None:
    event = normalise(track("Product Added", {"sku": "SKU-9"}))
    assert event.product_id == "SKU-9"
    assert event.quantity == 1
    assert event.amount is None


def test_product_id_wins_over_sku() -> None:
    assert normalise(track("Product Added", {"product_id": "p-1", "sku": "SKU-9"})).product_id == "p-1"


# ---- what Segment accepts, with the spec fields it lacked (gaps) ------------------------------------


def test_a_message_with_every_spec_field_has_no_gaps() -> None:
    products = [{"product_id": "p1", "price": 10, "quantity": 2}]
    for message in (track("Order Completed", {"order_id": "o-1", "revenue": 20, "products": products}),
                    track("Order Completed", {"order_id": "o-1", "products": products}),
                    track("Order Refunded", {"order_id": "o-1"}),
                    track("Product Added", {"product_id": "p-1"}), track("Product Removed", {"sku": "S-1"}),
                    msg(timestamp=None, originalTimestamp=B_ISO), msg("identify", traits={"plan": "pro"})):
        assert normalise(message).gaps == (), message


@pytest.mark.parametrize("properties", [{"revenue": 10}, {"order_id": "", "revenue": 10},
                                        {"order_id": None, "revenue": 10}], ids=["absent", "empty", "null"])
def test_an_order_without_order_id_is_accepted_with_its_value(properties: dict[str, Any]) -> None:
    event = normalise(track("Order Completed", properties))
    assert (event.order_id, event.amount, event.gaps) == (None, 10.0, ("properties.order_id",))


def test_an_order_without_revenue_total_or_products_is_worth_nothing() -> None:
    event = normalise(track("Order Completed", {"order_id": "o-1", "currency": "EUR"}))
    assert (event.order_id, event.amount, event.gaps) == ("o-1", 0.0, ("properties.revenue",))
    bare = normalise(track("Order Completed"))
    assert (bare.order_id, bare.amount, bare.gaps) == (None, 0.0, ("properties.order_id", "properties.revenue"))


def test_a_product_without_price_adds_nothing_to_the_order_value() -> None:
    products = [{"product_id": "p1", "price": 10, "quantity": 3}, {"product_id": "p2"},
                {"product_id": "p3", "price": None, "quantity": 2}, {"price": 2.5}]
    event = normalise(track("Order Completed", {"order_id": "o-1", "products": products}))
    assert event.amount == pytest.approx(32.5)
    assert event.gaps == ("properties.products[].price",)  # once, however many products lack it
    unpriced = normalise(track("Order Completed", {"order_id": "o-1", "products": [{"product_id": "p1"}]}))
    assert (unpriced.amount, unpriced.gaps) == (0.0, ("properties.products[].price",))


@pytest.mark.parametrize("name", ["Order Refunded", "Order Cancelled"])
def test_a_refund_or_cancellation_without_order_id_is_accepted(name: str) -> None:
    with_amount = normalise(track(name, {"total": 10}))
    assert (with_amount.order_id, with_amount.amount, with_amount.gaps) == (None, 10.0, ("properties.order_id",))
    bare = normalise(track(name))
    assert (bare.order_id, bare.amount, bare.gaps) == (None, None, ("properties.order_id",))
    # a product list without prices is worth 0 (not "the whole order")
    unpriced = normalise(track(name, {"order_id": "o-1", "products": [{"product_id": "p1"}]}))
    assert (unpriced.amount, unpriced.gaps) == (0.0, ("properties.products[].price",))


@pytest.mark.parametrize("name", ["Product Added", "Product Removed"])
@pytest.mark.parametrize("properties", [{"price": 5, "quantity": 2}, {"product_id": "", "sku": "", "price": 5,
                                                                       "quantity": 2}], ids=["absent", "empty"])
def test_a_cart_event_without_product_id_or_sku_is_accepted(name: str, properties: dict[str, Any]) -> None:
    event = normalise(track(name, properties))
    assert (event.product_id, event.amount, event.quantity) == (None, 5.0, 2)
    assert event.gaps == ("properties.product_id",)


def test_received_at_is_the_event_time_when_the_message_has_no_other() -> None:
    event = normalise(msg(timestamp=None, receivedAt="2024-01-10T00:02:00.000Z"))
    assert (event.timestamp, event.gaps) == (B + 120, ("timestamp",))
    both = normalise(msg(timestamp=None, originalTimestamp="2024-01-10T00:01:00Z", receivedAt="2024-01-10T00:02:00Z"))
    assert (both.timestamp, both.gaps) == (B + 60, ())
    first = normalise(msg(timestamp="2024-01-10T00:00:30Z", receivedAt="2024-01-10T00:02:00Z"))
    assert (first.timestamp, first.gaps) == (B + 30, ())


def test_gaps_are_listed_in_a_fixed_order() -> None:
    event = normalise(track("Order Completed", {"products": [{"quantity": 1}]}, timestamp=None,
                            receivedAt=B_ISO))
    assert event.gaps == ("timestamp", "properties.order_id", "properties.products[].price")


@pytest.mark.parametrize(("quantity", "expected"), [(2.0, 2), (1.0, 1), (10_000.0, 10_000)])
def test_a_whole_float_quantity_is_a_whole_number(quantity: float, expected: int) -> None:
    event = normalise(track("Product Added", {"product_id": "p", "quantity": quantity}))
    assert event.quantity == expected and isinstance(event.quantity, int)
    order = normalise(track("Order Completed", {"order_id": "o", "products": [{"price": 3, "quantity": quantity}]}))
    assert order.amount == 3 * expected


@pytest.mark.parametrize(("channel", "context", "expected"), [
    ("browser", {}, "web"),  # Segment's own name for web
    ("browser", {"library": {"name": "analytics-ios"}}, "web"),  # explicit wins over the library
    ("server", {"library": {"name": "analytics.js"}}, "server"),
    ("mobile", {}, "mobile"),
    ("tv", {"library": {"name": "analytics-ios"}}, "mobile"),  # unknown: decided as if absent
    ("tv", {"userAgent": "Mozilla/5.0"}, "web"),
    ("tv", {}, "server"),
    ("Web", {"library": {"name": "analytics-android"}}, "mobile"),  # names are exact
    ("", {"library": {"name": "analytics.js"}}, "web"),
    (7, {"library": {"name": "analytics.js"}}, "web"),  # not a string: as if absent
    ({"name": "web"}, {}, "server"),
])
def test_a_channel_we_do_not_name_is_decided_from_the_context(channel: object, context: dict[str, Any],
                                                               expected: str) -> None:
    event = normalise(msg(channel=channel, context=context))
    assert (event.channel, event.gaps) == (expected, ())


# ---- invalid messages -------------------------------------------------------------------------------

_LONG = "x" * 1100

INVALID: list[tuple[str, object, str, str]] = [
    ("array", [msg()], "message", "must be a JSON object, not an array"),
    ("string", "track", "message", "must be a JSON object, not a string"),
    ("null", None, "message", "must be a JSON object, not null"),
    ("no type", msg(type=None), "type", "is required"),
    ("unknown type", msg(type="purchase"), "type", "must be one of track, identify, page, screen, alias, group"),
    ("no messageId", msg(messageId=None), "messageId", "is required"),
    ("empty messageId", msg(messageId=""), "messageId", "is required"),
    ("object messageId", msg(messageId={"id": 1}), "messageId", "must be a string, not an object"),
    ("boolean messageId", msg(messageId=True), "messageId", "must be a string, not a boolean"),
    ("long messageId", msg(messageId="m" * 257), "messageId", "is 257 characters; the limit is 256"),
    ("no user id", msg(userId=None), "userId", "either userId or anonymousId is required"),
    ("empty user ids", msg(userId="", anonymousId=""), "userId", "either userId or anonymousId is required"),
    ("float userId", msg(userId=1.5), "userId", "must be a string, not a number"),
    ("list anonymousId", msg(userId=None, anonymousId=["a"]), "anonymousId", "must be a string, not an array"),
    ("no timestamp", msg(timestamp=None), "timestamp", "is required"),
    ("bad timestamp", msg(timestamp="yesterday"), "timestamp", "is not an ISO 8601 timestamp"),
    ("naive timestamp", msg(timestamp="2024-01-10T00:00:00"), "timestamp", "has no time zone"),
    ("date only", msg(timestamp="2024-01-10"), "timestamp", "has no time zone"),
    ("numeric timestamp", msg(timestamp=B), "timestamp", "must be an ISO 8601 string, not a number"),
    ("naive originalTimestamp", msg(timestamp=None, originalTimestamp="2024-01-10T00:00:00"),
     "originalTimestamp", "has no time zone"),
    ("bad receivedAt", msg(timestamp=None, receivedAt="soon"), "receivedAt", "is not an ISO 8601 timestamp"),
    ("bad timestamp, good receivedAt", msg(timestamp="yesterday", receivedAt=B_ISO), "timestamp",
     "is not an ISO 8601 timestamp"),
    ("float product quantity", track("Order Completed", {"order_id": "o", "products": [
        {"price": 1, "quantity": 2.5}]}), "properties.products[0].quantity", "must be a whole number from 1"),
    ("unpriced product, bad quantity", track("Order Completed", {"products": [{"quantity": 0}]}),
     "properties.products[0].quantity", "must be a whole number from 1"),
    ("object order_id", track("Order Refunded", {"order_id": {"id": 1}}), "properties.order_id",
     "must be a string, not an object"),
    ("list properties", msg(properties=[1, 2]), "properties", "must be an object, not an array"),
    ("string properties", msg(properties="{}"), "properties", "must be an object, not a string"),
    ("string traits", msg("identify", traits="vip"), "traits", "must be an object, not a string"),
    ("list context traits", msg(context={"traits": []}), "context.traits", "must be an object, not an array"),
    ("string context", msg(context="web"), "context", "must be an object, not a string"),
    ("track without event", msg(event=None), "event", "is required for a track message"),
    ("numeric event", msg(event=5), "event", "must be a string, not a number"),
    ("long event", msg(event="e" * 101), "event", "is 101 characters; the limit is 100"),
    ("alias without previousId", msg("alias", previousId=None), "previousId", "is required"),
    ("group without groupId", msg("group", groupId=None), "groupId", "is required"),
    ("oversized trait", msg("identify", traits={"bio": _LONG}), "traits.bio", "the limit for one trait is 1024"),
    ("oversized context trait", msg("identify", context={"traits": {"bio": _LONG}}), "traits.bio",
     "the limit for one trait is 1024"),
    ("boolean order_id", track("Order Completed", {"order_id": True, "revenue": 10}), "properties.order_id",
     "must be a string, not a boolean"),
    ("negative revenue", track("Order Completed", {"order_id": "o", "revenue": -1}), "properties.revenue",
     "must not be negative"),
    ("negative total", track("Order Completed", {"order_id": "o", "total": -0.5}), "properties.total",
     "must not be negative"),
    ("NaN revenue", track("Order Completed", {"order_id": "o", "revenue": math.nan}), "properties.revenue",
     "must be a finite number"),
    ("infinite total", track("Order Completed", {"order_id": "o", "total": math.inf}), "properties.total",
     "must be a finite number"),
    ("minus infinite revenue", track("Order Completed", {"order_id": "o", "revenue": -math.inf}),
     "properties.revenue", "must be a finite number"),
    ("boolean revenue", track("Order Completed", {"order_id": "o", "revenue": True}), "properties.revenue",
     "must be a number, not a boolean"),
    ("string revenue", track("Order Completed", {"order_id": "o", "revenue": "12.50"}), "properties.revenue",
     "must be a number, not a string"),
    ("products not a list", track("Order Completed", {"order_id": "o", "products": {"p": 1}}),
     "properties.products", "must be an array, not an object"),
    ("product not an object", track("Order Completed", {"order_id": "o", "products": [5]}),
     "properties.products[0]", "must be an object, not a number"),
    ("negative product price", track("Order Completed", {"order_id": "o", "products": [{"price": -2}]}),
     "properties.products[0].price", "must not be negative"),
    ("boolean product price", track("Order Completed", {"order_id": "o", "products": [{"price": False}]}),
     "properties.products[0].price", "must be a number, not a boolean"),
    ("zero product quantity", track("Order Completed", {"order_id": "o", "products": [{"price": 1, "quantity": 0}]}),
     "properties.products[0].quantity", "must be a whole number from 1 to 10,000"),
    ("list product_id", track("Product Added", {"product_id": ["p"]}), "properties.product_id",
     "must be a string, not an array"),
    ("zero quantity", track("Product Added", {"product_id": "p", "quantity": 0}), "properties.quantity",
     "must be a whole number from 1 to 10,000"),
    ("negative quantity", track("Product Added", {"product_id": "p", "quantity": -2}), "properties.quantity",
     "must be a whole number from 1 to 10,000"),
    ("fractional quantity", track("Product Added", {"product_id": "p", "quantity": 1.5}), "properties.quantity",
     "must be a whole number from 1 to 10,000"),
    ("boolean quantity", track("Product Added", {"product_id": "p", "quantity": True}), "properties.quantity",
     "must be a whole number from 1 to 10,000"),
    ("string quantity", track("Product Added", {"product_id": "p", "quantity": "2"}), "properties.quantity",
     "must be a whole number from 1 to 10,000"),
    ("negative price", track("Product Added", {"product_id": "p", "price": -5}), "properties.price",
     "must not be negative"),
    ("NaN price", track("Product Added", {"product_id": "p", "price": math.nan}), "properties.price",
     "must be a finite number"),
    ("boolean price", track("Product Removed", {"product_id": "p", "price": True}), "properties.price",
     "must be a number, not a boolean"),
]


@pytest.mark.parametrize(("message", "field", "reason"), [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
def test_invalid_messages_name_the_field_and_the_reason(message: object, field: str, reason: str) -> None:
    error = rejected(message)
    assert error.field == field
    assert reason in error.reason
    assert str(error) == f"{field}: {error.reason}"


def test_invalid_event_is_a_value_error() -> None:
    assert isinstance(rejected(msg(type=None)), ValueError)


def test_oversized_trait_reports_its_size() -> None:
    error = rejected(msg("identify", traits={"bio": "x" * 1100}))
    assert error.reason == "is 1102 bytes; the limit for one trait is 1024"  # 1100 characters and two quotes


# ---- raw records ------------------------------------------------------------------------------------


def test_parse_record_decodes_utf8_json() -> None:
    event = parse_record(json.dumps(msg(properties={"city": "Zürich"})).encode())
    assert event.properties == {"city": "Zürich"}
    assert event.timestamp == B


def test_parse_record_accepts_exactly_the_size_limit() -> None:
    empty = len(json.dumps(msg(properties={"pad": ""})).encode())
    data = json.dumps(msg(properties={"pad": "x" * (MAX_MESSAGE_BYTES - empty)})).encode()
    assert len(data) == MAX_MESSAGE_BYTES
    assert parse_record(data).message_id == "m-1"


def record_error(data: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_record(data)
    return caught.value


def test_parse_record_rejects_one_byte_over_32kb() -> None:
    empty = len(json.dumps(msg(properties={"pad": ""})).encode())
    data = json.dumps(msg(properties={"pad": "x" * (MAX_MESSAGE_BYTES - empty + 1)})).encode()
    error = record_error(data)
    assert error.field == "message"
    assert error.reason == "is 32769 bytes; the limit is 32768"


RECORDS: list[tuple[str, bytes, str, str]] = [
    ("not JSON", b"{type: track}", "message", "is not JSON"),
    ("truncated JSON", json.dumps(msg()).encode()[:-1], "message", "is not JSON"),
    ("empty", b"", "message", "is not JSON"),
    ("not UTF-8", b'{"type": "track", "event": "caf\xe9"}', "message", "is not UTF-8 text"),
    ("JSON array", b"[]", "message", "must be a JSON object, not an array"),
    ("JSON number", b"42", "message", "must be a JSON object, not a number"),
    ("NaN revenue", json.dumps(track("Order Completed", {"order_id": "o", "revenue": math.nan})).encode(),
     "properties.revenue", "must be a finite number"),
    ("Infinity price", json.dumps(track("Product Added", {"product_id": "p", "price": math.inf})).encode(),
     "properties.price", "must be a finite number"),
]


@pytest.mark.parametrize(("data", "field", "reason"), [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
def test_parse_record_rejects(data: bytes, field: str, reason: str) -> None:
    error = record_error(data)
    assert error.field == field
    assert reason in error.reason


def test_parse_record_rejects_utf16() -> None:
    # The record is meant to be UTF-8 JSON; the standard library would quietly detect and accept UTF-16.
    data = json.dumps(msg()).encode("utf-16")
    error = record_error(data)
    assert (error.field, error.reason) == ("message", "is not UTF-8 text")


def test_parse_record_rejects_an_encoded_surrogate() -> None:
    # ED A0 80 is U+D800 encoded as if it were a character: not valid UTF-8 (RFC 3629), and a string
    # holding it cannot be encoded again later (message ids are hashed from their UTF-8 bytes).
    data = json.dumps(msg(messageId="MARK")).encode().replace(b"MARK", b"\xed\xa0\x80")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    error = record_error(data)
    assert (error.field, error.reason) == ("message", "is not UTF-8 text")
