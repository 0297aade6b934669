"""The event model: Segment / RudderStack messages normalised into one internal event.

Accepts the six message types (track, identify, page, screen, alias, group), the
Ecommerce v2 and Email spec event names, and traits either at the top level
(Segment) or in ``context.traits`` (RudderStack). An invalid message raises
:class:`InvalidEvent` naming the field and the rule, never the value (reasons reach the
quarantine, logs and metrics, and a value may be personal data).
Everything that can be stored is bounded here (nesting, amounts, quantities, trait numbers,
the earliest timestamp), so no message can crash the DynamoDB encoding of a batch.

Consent preferences (``context.consent.categoryPreferences``, any message type) are kept on the event
as lower-cased category -> granted (:func:`cdp.core.consent.category_preferences`); what is not a boolean
is left out, never refused.

What Segment accepts is accepted. The spec's semantic properties are optional there, so a
message without one is applied, and the missing field is listed in :attr:`Event.gaps` (the
ingest counts them by field) instead of refusing the message:

* ``Order Completed`` without ``order_id`` is an order all the same (deduplicated by its
  message id only); without ``revenue``, ``total`` or ``products`` it is worth 0.
* a product in ``products`` without ``price`` adds 0 to the order's value.
* ``Order Refunded`` / ``Order Cancelled`` without ``order_id`` is applied like a reversal of
  an order the profile does not know (see :mod:`cdp.core.fold`).
* ``Product Added`` / ``Product Removed`` without ``product_id`` or ``sku`` is counted as the
  event and leaves the cart as it is.
* without ``timestamp`` the event time is ``originalTimestamp``, else ``receivedAt``, which the
  collector always sets (only this last is a gap, named ``timestamp``).

The ``channel`` ``browser`` is web and ``sources`` is server; any other we do not name (Segment's
``client``, say) is decided from the library and context, as if absent. ``quantity`` may be a
whole number written as a float (2.0).
What is still refused is a message that is not one (no type, message id, customer id, event
name or time at all), a value of the wrong kind (a string revenue) or out of range, and
anything over a storage limit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdp.core.consent import category_preferences

MAX_MESSAGE_BYTES = 32 * 1024  # Segment's own limit for one message
MAX_ID_LENGTH = 256
MAX_LABEL_LENGTH = 100
MAX_TRAIT_BYTES = 1024
# Arrays and objects nested deeper than this are refused: DynamoDB stores at most 32 levels, and a
# message nested deeper than any stored value needs is either broken or an attack on the parser.
MAX_DEPTH = 32
# An order's value (revenue, total, or the sum of its products) and a unit price, in currency units.
# Kept in hundredths, so a profile's lifetime revenue stays far inside DynamoDB's 38 digits.
MAX_AMOUNT = 1_000_000_000_000  # one trillion
MAX_QUANTITY = 10_000  # units of one product in one cart or order event
EARLIEST_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z: anything earlier is a broken client clock
# DynamoDB numbers: at most 38 significant digits, zero or a magnitude from 1e-130 to below 1e126
# (a whole number is stored digit for digit, so it has at most 38 digits, trailing zeros included).
NUMBER_DIGITS = 38
SMALLEST_NUMBER = 1e-130
NUMBER_LIMIT = 1e126

MESSAGE_TYPES = frozenset({"track", "identify", "page", "screen", "alias", "group"})
CHANNELS = ("web", "mobile", "email", "server")

# Ecommerce v2 spec names.
PRODUCT_VIEWED = "Product Viewed"
PRODUCT_ADDED = "Product Added"
PRODUCT_REMOVED = "Product Removed"
ORDER_COMPLETED = "Order Completed"
ORDER_REFUNDED = "Order Refunded"
ORDER_CANCELLED = "Order Cancelled"
ECOMMERCE_EVENTS = frozenset({
    "Products Searched", "Product List Viewed", "Product List Filtered", "Promotion Viewed",
    "Promotion Clicked", "Product Clicked", PRODUCT_VIEWED, PRODUCT_ADDED, PRODUCT_REMOVED,
    "Cart Viewed", "Checkout Started", "Checkout Step Viewed", "Checkout Step Completed",
    "Payment Info Entered", "Order Updated", ORDER_COMPLETED, ORDER_REFUNDED, ORDER_CANCELLED,
    "Coupon Entered", "Coupon Applied", "Coupon Denied", "Coupon Removed", "Product Added to Wishlist",
    "Product Removed from Wishlist", "Wishlist Product Added to Cart", "Product Shared", "Cart Shared",
    "Product Reviewed",
})
# Email spec names: these always come from the email channel.
EMAIL_EVENTS = frozenset({
    "Email Delivered", "Email Opened", "Email Link Clicked", "Email Bounced", "Email Marked as Spam",
    "Unsubscribed",
})
ORDER_EVENTS = frozenset({ORDER_COMPLETED, ORDER_REFUNDED, ORDER_CANCELLED})
CART_EVENTS = frozenset({PRODUCT_ADDED, PRODUCT_REMOVED})

_MOBILE_LIBRARIES = ("analytics-ios", "analytics-android", "analytics-react-native", "analytics-flutter",
                     "analytics-swift", "analytics-kotlin", "rudder-ios", "rudder-android")
_WEB_LIBRARIES = ("analytics.js", "analytics-next", "rudderanalytics", "rudder-sdk-js")


class InvalidEvent(ValueError):
    """A message that can never be applied. ``field`` is a dotted path into the message."""

    def __init__(self, field_path: str, reason: str) -> None:
        super().__init__(f"{field_path}: {reason}")
        self.field = field_path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EventContext:
    """The context metadata kept on a profile: device, location and traffic source."""

    device_type: str | None = None
    os: str | None = None
    country: str | None = None
    city: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One normalised behavioural event."""

    message_id: str
    customer_id: str
    type: str
    name: str
    timestamp: float
    channel: str
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    context: EventContext = field(default_factory=EventContext)
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None
    group_id: str | None = None
    amount: float | None = None  # order value for order events, unit price for cart events
    order_id: str | None = None  # None: an order event without one (never matched to another)
    product_id: str | None = None  # None: a cart event without one (leaves the cart as it is)
    quantity: int = 1
    gaps: tuple[str, ...] = ()  # spec fields it lacked and was applied without, e.g. "properties.order_id"
    # context.consent.categoryPreferences (Segment's Consent Management spec), lower-cased; None: not stated
    consent: dict[str, bool] | None = None


def parse_record(data: bytes) -> Event:
    """Decode one raw message (UTF-8 JSON) and normalise it."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidEvent("message", f"is {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("message", "is not UTF-8 text") from None
    try:
        message = json.loads(text)
    except ValueError as error:
        raise InvalidEvent("message", f"is not JSON ({error.args[0]})") from None
    except RecursionError:  # nested far deeper than the limit
        raise InvalidEvent("message", _TOO_DEEP) from None
    if _too_deep(text, MAX_DEPTH):
        raise InvalidEvent("message", _TOO_DEEP)
    if "\\u" in text and _has_lone_surrogate(message):
        raise InvalidEvent("message", "contains an unpaired UTF-16 surrogate escape, which is not text")
    return normalise(message)


_TOO_DEEP = f"is nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}"
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


def _too_deep(text: str, limit: int) -> bool:
    """Whether valid JSON ``text`` nests arrays and objects more than ``limit`` deep.

    Iterative and in C for the most part: with fewer brackets than the limit it cannot be; otherwise
    strings are dropped, then the brackets, and each pass removes the innermost (empty) pairs, one level.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _EMPTY_PAIR.sub("", brackets)
    return bool(brackets)


def _has_lone_surrogate(message: object) -> bool:
    try:
        json.dumps(message, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def normalise(message: object) -> Event:
    """Turn one Segment-spec message into an :class:`Event`, or raise :class:`InvalidEvent`.

    Fields are checked in a fixed order, so a message with several problems always reports the same one.
    """
    if not isinstance(message, dict):
        raise InvalidEvent("message", f"must be a JSON object, not {json_type(message)}")
    kind = _message_type(message)
    message_id = _identifier(message, "messageId", required=True)
    assert message_id is not None
    user_id = _identifier(message, "userId", required=False)
    anonymous_id = _identifier(message, "anonymousId", required=False)
    customer_id = user_id or anonymous_id
    if customer_id is None:
        raise InvalidEvent("userId", "either userId or anonymousId is required")
    timestamp, timestamp_gaps = _timestamp(message)
    context = _object(message, "context")
    properties = _object(message, "properties")
    traits = _traits(message, context)
    name = _event_name(message, kind)
    channel = _channel(message, context, name)
    amount, order_id, product_id, quantity, gaps = _commerce(properties, name)
    if kind == "identify":
        _check_traits(traits)
    previous_id = _identifier(message, "previousId", required=kind == "alias")
    group_id = _identifier(message, "groupId", required=kind == "group")
    return Event(
        message_id=message_id,
        customer_id=customer_id,
        type=kind,
        name=name,
        timestamp=timestamp,
        channel=channel,
        properties=properties,
        traits=traits,
        context=_context(context),
        user_id=user_id,
        anonymous_id=anonymous_id,
        previous_id=previous_id,
        group_id=group_id,
        amount=amount,
        order_id=order_id,
        product_id=product_id,
        quantity=quantity,
        gaps=timestamp_gaps + gaps,
        consent=category_preferences(context),
    )


def _message_type(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        if kind is None:
            raise InvalidEvent("type", "is required (track, identify, page, screen, alias or group)")
        raise InvalidEvent("type", "must be one of track, identify, page, screen, alias, group")
    return str(kind)


Gaps = tuple[str, ...]
_Commerce = tuple[float | None, str | None, str | None, int, Gaps]  # amount, order id, product id, quantity, gaps
_NO_COMMERCE: _Commerce = (None, None, None, 1, ())
ORDER_ID_GAP = "properties.order_id"
REVENUE_GAP = "properties.revenue"
PRICE_GAP = "properties.products[].price"
PRODUCT_ID_GAP = "properties.product_id"
TIMESTAMP_GAP = "timestamp"


def _commerce(properties: dict[str, Any], name: str) -> _Commerce:
    """An order's amount and id, or a cart event's price, product id and quantity, with the gaps among them."""
    if name in ORDER_EVENTS:
        order_id = _property_id(properties, "order_id")
        amount, gaps = _order_amount(properties, name)
        return amount, order_id, None, 1, ((ORDER_ID_GAP,) if order_id is None else ()) + gaps
    if name in CART_EVENTS:
        product_id = _product_id(properties)
        quantity = _quantity(properties)
        price = properties.get("price")
        return ((_amount(price, "properties.price") if price is not None else None), None, product_id, quantity,
                (PRODUCT_ID_GAP,) if product_id is None else ())
    return _NO_COMMERCE


def json_type(value: object) -> str:
    """How an error names the kind of a JSON value (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _identifier(message: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = message.get(key)
    if value is None or value == "":
        if required:
            raise InvalidEvent(key, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(key, f"must be a string, not {json_type(value)}")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(key, f"is {len(text)} characters; the limit is {MAX_ID_LENGTH}")
    return text


def _timestamp(message: dict[str, Any]) -> tuple[float, Gaps]:
    """When the event happened, and the gap when only the time it was received says so.

    ``timestamp``, else the device's ``originalTimestamp`` (as Segment fills it), else ``receivedAt``. The first
    one present is the one read: a malformed ``timestamp`` is refused, not replaced by a later one.
    """
    for key in ("timestamp", "originalTimestamp", "receivedAt"):
        value = message.get(key)
        if value is not None:
            break
    else:
        raise InvalidEvent("timestamp", "is required (ISO 8601 with a time zone)")
    if not isinstance(value, str):
        raise InvalidEvent(key, f"must be an ISO 8601 string, not {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(key, "is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(key, "has no time zone (add Z or an offset)")
    moment = parsed.timestamp()
    if moment < EARLIEST_TIMESTAMP:
        raise InvalidEvent(key, "is before 2000-01-01T00:00:00Z, the earliest accepted")
    return moment, (TIMESTAMP_GAP,) if key == "receivedAt" else ()


def _object(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(key, f"must be an object, not {json_type(value)}")
    return value


def _traits(message: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    top = _object(message, "traits")
    nested = context.get("traits")
    if nested is None:
        return top
    if not isinstance(nested, dict):
        raise InvalidEvent("context.traits", f"must be an object, not {json_type(nested)}")
    if not top:
        return nested
    merged = dict(nested)
    merged.update(top)  # top-level traits are the explicit ones
    return merged


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_$.-]{1,64}")


def _trait_field(name: str) -> str:
    """``traits.<name>`` for a plain name; just ``traits`` for any other, which may be data (an address as a
    key), and which would make the field a metric dimension of unbounded size and number."""
    return f"traits.{name}" if _PLAIN_NAME.fullmatch(name) else "traits"


def _check_traits(traits: dict[str, Any]) -> None:
    """Traits are stored as they are, so each must fit in its size and in DynamoDB's number type."""
    for name, value in traits.items():
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        if size > MAX_TRAIT_BYTES:
            raise InvalidEvent(_trait_field(name), f"is {size} bytes; the limit for one trait is {MAX_TRAIT_BYTES}")
        if not _storable_numbers(value):
            raise InvalidEvent(_trait_field(name), f"holds a number DynamoDB cannot store: whole numbers have at most"
                                                 f" {NUMBER_DIGITS} digits, and numbers are finite and zero or"
                                                 f" from {SMALLEST_NUMBER:g} to below {NUMBER_LIMIT:g} in magnitude")


def _storable_numbers(value: object) -> bool:
    """Whether every number in ``value`` (at any depth; walked without recursion) is a DynamoDB number."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if abs(item) >= 10**NUMBER_DIGITS:  # stored digit for digit: trailing zeros count too
                return False
        # A float's repr has at most 17 significant digits, so only its range can be out of bounds.
        elif isinstance(item, float) and not (math.isfinite(item) and (
                item == 0 or SMALLEST_NUMBER <= abs(item) < NUMBER_LIMIT)):
            return False
    return True


def _event_name(message: dict[str, Any], kind: str) -> str:
    if kind == "track":
        name = message.get("event")
        if name is None or name == "":
            raise InvalidEvent("event", "is required for a track message")
        if not isinstance(name, str):
            raise InvalidEvent("event", f"must be a string, not {json_type(name)}")
        if len(name) > MAX_LABEL_LENGTH:
            raise InvalidEvent("event", f"is {len(name)} characters; the limit is {MAX_LABEL_LENGTH}")
        return name
    return {"page": "Page Viewed", "screen": "Screen Viewed", "identify": "Identify",
            "alias": "Alias", "group": "Group"}[kind]


# Other names senders use for our channels: Segment's "browser", RudderStack's cloud "sources".
_CHANNEL_NAMES = {"browser": "web", "sources": "server"}


def _channel(message: dict[str, Any], context: dict[str, Any], name: str) -> str:
    """The explicit channel when it is one we know; otherwise (absent, Segment's "client", or any other value,
    which Segment accepts) decided by the library and the client context."""
    if name in EMAIL_EVENTS:
        return "email"
    explicit = message.get("channel")
    if isinstance(explicit, str):
        if explicit in CHANNELS:
            return explicit
        if explicit in _CHANNEL_NAMES:
            return _CHANNEL_NAMES[explicit]
    library = context.get("library")
    library_name = library.get("name") if isinstance(library, dict) else None
    if isinstance(library_name, str):
        if library_name.startswith(_MOBILE_LIBRARIES):
            return "mobile"
        if library_name.startswith(_WEB_LIBRARIES):
            return "web"
    if message.get("type") == "screen" or isinstance(context.get("app"), dict):
        return "mobile"
    if message.get("type") == "page" or "userAgent" in context or isinstance(context.get("page"), dict):
        return "web"
    return "server"  # no client context at all: sent from a back end


def _label(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value[:MAX_LABEL_LENGTH]
    return None


def _section(context: dict[str, Any], key: str) -> dict[str, Any]:
    value = context.get(key)
    return value if isinstance(value, dict) else {}


def _context(context: dict[str, Any]) -> EventContext:
    if not context or not any(key in context for key in _CONTEXT_SECTIONS):
        return EMPTY_CONTEXT  # what a browser library sends: nothing of this is in it
    device = _section(context, "device")
    os_info = _section(context, "os")
    location = _section(context, "location")
    campaign = _section(context, "campaign")
    return EventContext(
        device_type=_label(device.get("type")),
        os=_label(os_info.get("name")),
        country=_label(location.get("country")),
        city=_label(location.get("city")),
        utm_source=_label(campaign.get("source")),
        utm_medium=_label(campaign.get("medium")),
        utm_campaign=_label(campaign.get("name")),
    )


EMPTY_CONTEXT = EventContext()
_CONTEXT_SECTIONS = ("device", "os", "location", "campaign")


def _amount(value: object, path: str) -> float:
    """A price or an order value: a finite number from 0 to MAX_AMOUNT."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(path, f"must be a number, not {json_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEvent(path, "must be a finite number")
    if value < 0:
        raise InvalidEvent(path, "must not be negative")
    if value > MAX_AMOUNT:  # compared before any conversion: a huge integer does not fit a float
        raise InvalidEvent(path, f"must be at most {MAX_AMOUNT:,}")
    return float(value)


def _property_id(properties: dict[str, Any], key: str) -> str | None:
    """An id property, or None when it is absent or empty (Segment accepts both); any other kind is refused."""
    value = properties.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(f"properties.{key}", f"must be a string, not {json_type(value)}")
    return str(value)[:MAX_ID_LENGTH]


def _product_id(properties: dict[str, Any]) -> str | None:
    if properties.get("product_id") in (None, "") and properties.get("sku") not in (None, ""):
        return _property_id(properties, "sku")
    return _property_id(properties, "product_id")


def _quantity(properties: dict[str, Any], path: str = "properties") -> int:
    value = properties.get("quantity")
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():  # 2.0: how a float-typed quantity is serialised
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUANTITY:
        raise InvalidEvent(f"{path}.quantity", f"must be a whole number from 1 to {MAX_QUANTITY:,}")
    return value


def _order_amount(properties: dict[str, Any], name: str) -> tuple[float | None, Gaps]:
    """The order's value: ``revenue``, else ``total``, else the sum of ``products[].price * quantity``.

    A product without a price adds 0 (a gap). An ``Order Completed`` with none of the three is worth 0 (a
    gap); a refund or cancellation without one has no amount (None: it covers the whole order, when known).
    """
    for key in ("revenue", "total"):
        if properties.get(key) is not None:
            return _amount(properties[key], f"properties.{key}"), ()
    products = properties.get("products")
    if products is not None:
        if not isinstance(products, list):
            raise InvalidEvent("properties.products", f"must be an array, not {json_type(products)}")
        total = 0.0
        unpriced = False
        for index, product in enumerate(products):
            path = f"properties.products[{index}]"
            if not isinstance(product, dict):
                raise InvalidEvent(path, f"must be an object, not {json_type(product)}")
            quantity = _quantity(product, path)
            if product.get("price") is None:
                unpriced = True
                continue
            total += _amount(product["price"], f"{path}.price") * quantity
        if total > MAX_AMOUNT:
            raise InvalidEvent("properties.products", f"the order's value (price times quantity, summed) must be"
                                                      f" at most {MAX_AMOUNT:,}")
        return total, (PRICE_GAP,) if unpriced else ()
    if name == ORDER_COMPLETED:
        return 0.0, (REVENUE_GAP,)
    return None, ()
