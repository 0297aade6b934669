"""The profile item in DynamoDB's wire shape, encoded and decoded directly.

The item's shape is fixed (see :mod:`cdp.core.profile`), so its attributes map straight onto
DynamoDB attribute values (``{"S": ...}``, ``{"N": "..."}``, ``{"B": bytes}``, ``{"M": ...}``,
``{"L": ...}``) without boto3's serializer, which costs hundreds of microseconds per item. Only the
traits and the context hold free-form values; those are mapped generically. The encoding is exactly
what boto3's ``TypeSerializer`` makes of :meth:`Profile.to_item` (numbers written as its decimal
context writes them), and decoding gives what ``TypeDeserializer`` and ``Profile.from_item`` give,
numbers as ints, or floats when not integral.

:func:`decode_profile` decodes what every fold reads and leaves the rest in its stored form
(:meth:`Profile.deferred`): an attribute never read is written back as it was read.

No boto3 here, so that importing it costs nothing at cold start.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any

from cdp.core.consent import ConsentState
from cdp.core.profile import (
    DEFERRED,
    DIGEST_BYTES,
    Profile,
    Reader,
    consent_item,
    due_shard,
    holds_digest,
    message_digest,
    pack_products,
    unpack_order_digests,
    unpack_products,
)
from cdp.core.traits import ComputedTraits

# DynamoDB's numbers: 38 significant digits, exponents -128 to +126, nothing rounded (as boto3's).
NUMBER_CONTEXT = Context(Emin=-128, Emax=126, prec=38, traps=[Clamped, Overflow, Inexact, Rounded, Underflow])
_EXACT = 10**38  # integers below this (in magnitude) are written as their digits
AttributeValue = dict[str, Any]


# ---- values ----------------------------------------------------------------------------------------------


def number_text(value: int | float | Decimal) -> str:
    """A number as DynamoDB takes it; raises like boto3 for what DynamoDB cannot hold."""
    if type(value) is int and -_EXACT < value < _EXACT:
        return str(value)
    text = str(NUMBER_CONTEXT.create_decimal(repr(value) if isinstance(value, float) else value))
    if text in ("Infinity", "NaN"):
        raise TypeError("Infinity and NaN not supported")
    return text


def encode_value(value: Any) -> AttributeValue:
    """Any JSON-like value (str, int, float, bool, None, dict, list; also bytes and tuples)."""
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is int or kind is float:
        return {"N": number_text(value)}
    if kind is bool:
        return {"BOOL": value}
    if value is None:
        return {"NULL": True}
    if kind is dict:
        return {"M": {key: encode_value(inner) for key, inner in value.items()}}
    if kind is list:
        return {"L": [encode_value(inner) for inner in value]}
    return _encode_other(value)


def _encode_other(value: Any) -> AttributeValue:
    """Subclasses and the rarer types, in the order boto3 tests them."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        return {"N": number_text(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, (bytes, bytearray)):
        return {"B": value}
    if isinstance(value, Mapping):
        return {"M": {key: encode_value(inner) for key, inner in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [encode_value(inner) for inner in value]}
    raise TypeError(f"Unsupported type \"{type(value)}\" for value \"{value}\"")


def decode_number(text: str) -> int | float:
    """A DynamoDB number: an int, or a float when it is not integral."""
    if text.isdigit():
        return int(text)
    number = NUMBER_CONTEXT.create_decimal(text)
    return int(number) if number == number.to_integral_value() else float(number)


def decode_value(value: AttributeValue) -> Any:
    """Any attribute value as plain Python (sets become lists, binary bytes)."""
    (kind, inner), = value.items()
    if kind == "S":
        return inner
    if kind == "N":
        return decode_number(inner)
    if kind == "M":
        return {key: decode_value(item) for key, item in inner.items()}
    if kind == "L":
        return [decode_value(item) for item in inner]
    if kind == "BOOL":
        return inner
    if kind == "NULL":
        return None
    if kind == "B":
        return bytes(inner)
    return _decode_set(kind, inner)


def _decode_set(kind: str, inner: Any) -> list[Any]:
    if kind == "SS":
        return list(inner)
    if kind == "NS":
        return [decode_number(item) for item in inner]
    if kind == "BS":
        return [bytes(item) for item in inner]
    raise TypeError(f"Dynamodb type {kind} is not supported")


def _numbers(values: Mapping[str, int]) -> AttributeValue:
    return {"M": {key: {"N": number_text(value)} for key, value in values.items()}}


def _number_map(value: AttributeValue) -> dict[str, int]:
    return {key: int(decode_number(inner["N"])) for key, inner in value["M"].items()}


def _int(value: AttributeValue) -> int:
    return int(decode_number(value["N"]))


# ---- encoding --------------------------------------------------------------------------------------------


def encode_profile(profile: Profile) -> dict[str, AttributeValue]:
    """The item for PutItem, as ``serialise_item(profile.to_item())``; what was never read is passed on.

    Attributes come in the order of :meth:`Profile.to_item`; an empty one is left out.
    """
    item: dict[str, AttributeValue] = {
        "customer_id": {"S": profile.customer_id}, "v": {"N": number_text(profile.version)},
        "ca": {"N": number_text(profile.created_at)}, "ua": {"N": number_text(profile.updated_at)}}
    unread = profile.unread()
    _put(profile, unread, item, "t")
    if profile.channels:
        item["ch"] = _numbers(profile.channels)
    counters = profile.packed_counters()
    if counters:
        item["c"] = {"M": {key: {"B": value} for key, value in counters.items()}}
    if profile.orders or profile.revenue or profile.first_order is not None:  # kept when every order was refunded
        figures = (profile.orders, profile.revenue, profile.first_order or 0, profile.last_order or 0)
        item["o"] = {"L": [{"N": number_text(n)} for n in figures]}
    for attribute in ("ro", "cart", "la", "cx", "rp"):
        _put(profile, unread, item, attribute)
    ids = profile.packed_message_ids()  # the stored ids as read, then the new ones
    if ids:
        item["mi"] = {"B": ids}
    _put(profile, unread, item, "od")
    _put(profile, unread, item, "sq")
    _put_segmentation(profile, item)
    for attribute in ("tx", "al", "gr"):
        _put(profile, unread, item, attribute)
    _put_identity(profile, item)
    _put(profile, unread, item, "cs")
    _put(profile, unread, item, "ct")
    if profile.expires_at is not None:
        item["xp"] = {"N": number_text(profile.expires_at)}
    return item


def _put_identity(profile: Profile, item: dict[str, AttributeValue]) -> None:
    """Known, merged ids and the customer a merged profile went to."""
    if profile.known:
        item["kn"] = {"N": "1"}
    if profile.merges:
        item["mg"] = {"L": [{"L": [{"S": m[0]}, {"N": number_text(m[1])}, {"S": m[2]}]} for m in profile.merges]}
    if profile.merged_into is not None:
        item["mt"] = {"S": profile.merged_into}


def _put(profile: Profile, unread: Mapping[str, Any], item: dict[str, AttributeValue], attribute: str) -> None:
    """A deferred attribute: as stored when its field was never read, else encoded (left out when empty)."""
    stored = unread.get(attribute)
    value = stored if stored is not None else _ENCODERS[attribute](profile)
    if value is not None:
        item[attribute] = value


def _put_segmentation(profile: Profile, item: dict[str, AttributeValue]) -> None:
    """Memberships and their clauses, deadlines (and the due-index key), latches and the catalogue fingerprint."""
    if profile.memberships:
        item["m"] = _numbers(profile.memberships)
    entered_by = profile.current_entered_by()
    if entered_by:
        item["mc"] = {"M": {segment: {"S": clause} for segment, clause in entered_by.items()}}
    if profile.deadlines:
        item["dl"] = _numbers(profile.deadlines)
        item["nd"] = {"N": number_text(min(profile.deadlines.values()))}
        item["ds"] = {"S": due_shard(profile.customer_id)}
    if profile.latches:
        item["lt"] = _numbers(profile.latches)
    if profile.catalogue:
        item["cv"] = {"S": profile.catalogue}


def _encode_cart(profile: Profile) -> AttributeValue | None:
    if not profile.cart:
        return None
    return {"M": {product: {"L": [{"N": number_text(n)} for n in line]} for product, line in profile.cart.items()}}


def _encode_products(profile: Profile) -> AttributeValue | None:
    return {"B": pack_products(profile.products)} if profile.products else None


def _encode_order_digests(profile: Profile) -> AttributeValue | None:
    packed = profile.packed_order_digests()
    return {"B": packed} if packed else None


def _encode_field(name: str) -> Callable[[Profile], AttributeValue | None]:
    def encode(profile: Profile) -> AttributeValue | None:
        value = getattr(profile, name)
        return encode_value(value) if value else None
    return encode


_ENCODERS: dict[str, Callable[[Profile], AttributeValue | None]] = {
    attribute: _encode_field(name) for attribute, name in DEFERRED.items()}
def _encode_consent(profile: Profile) -> AttributeValue | None:
    consent = profile.consent
    return None if consent.empty else encode_value(consent_item(consent))


def _encode_computed(profile: Profile) -> AttributeValue | None:
    computed = profile.computed
    return None if computed.empty else encode_value(computed.as_item())


_ENCODERS.update(cart=_encode_cart, od=_encode_order_digests, cs=_encode_consent, ct=_encode_computed,
                 rp=_encode_products)


# ---- decoding --------------------------------------------------------------------------------------------


def _read_traits(profile: Profile, value: AttributeValue) -> dict[str, Any]:
    return dict(decode_value(value))


def _read_recent_orders(profile: Profile, value: AttributeValue) -> list[list[Any]]:
    return [[str(decode_value(order[0])), _int(order[1]), _int(order[2])]
            for order in (entry["L"] for entry in value["L"])]


def _read_cart(profile: Profile, value: AttributeValue) -> dict[str, list[int]]:
    return {product: [_int(n) for n in line["L"]] for product, line in value["M"].items()}


def _read_last_add(profile: Profile, value: AttributeValue) -> list[Any]:
    product, at = value["L"][:2]
    return [str(decode_value(product)), _int(at)]


def _read_products(profile: Profile, value: AttributeValue) -> list[list[Any]]:
    return unpack_products(bytes(value["B"]))


def _read_order_digests(profile: Profile, value: AttributeValue) -> dict[bytes, None]:
    return unpack_order_digests(bytes(value["B"]), profile.recent_orders)


def _read_shard_marks(profile: Profile, value: AttributeValue) -> dict[str, list[Any]]:
    return {str(shard): [str(decode_value(mark["L"][0])), _int(mark["L"][1])] for shard, mark in value["M"].items()}


def _read_transitions(profile: Profile, value: AttributeValue) -> list[list[Any]]:
    """[segment, kind, time, clause, reason], and the delivery mode a backfill's entries carry as a 6th."""
    return [[str(decode_value(t[0])), str(decode_value(t[1])), _int(t[2]), str(decode_value(t[3])),
             str(decode_value(t[4])), *(str(decode_value(mode)) for mode in t[5:6])]
            for t in (entry["L"] for entry in value["L"])]


def _read_strings(profile: Profile, value: AttributeValue) -> list[str]:
    return [str(decode_value(entry)) for entry in value["L"]]


def _read_consent(profile: Profile, value: AttributeValue) -> ConsentState:
    return ConsentState.from_item(decode_value(value))


def _read_computed(profile: Profile, value: AttributeValue) -> ComputedTraits:
    return ComputedTraits.from_item(decode_value(value))


READERS: Mapping[str, Reader] = {
    "t": _read_traits, "ro": _read_recent_orders, "cart": _read_cart, "la": _read_last_add,
    "cx": _read_traits, "od": _read_order_digests, "sq": _read_shard_marks,
    "tx": _read_transitions, "al": _read_strings, "gr": _read_strings, "cs": _read_consent,
    "ct": _read_computed, "rp": _read_products,
}
assert READERS.keys() == DEFERRED.keys()


def decode_profile(item: Mapping[str, AttributeValue]) -> Profile:
    """The profile of a GetItem or BatchGetItem item, as ``Profile.from_item(deserialise_item(item))``.

    The attributes in ``DEFERRED`` stay in their stored form until first read.
    """
    if "ids" in item or not _orders_remembered(item):  # legacy dedupe layouts: read by from_item's rules
        return Profile.from_item({attribute: decode_value(value) for attribute, value in item.items()})
    stored = {attribute: item[attribute] for attribute in DEFERRED.keys() & item.keys() if _filled(item[attribute])}
    profile = Profile.deferred(str(decode_value(item["customer_id"])), stored, READERS)
    get = item.get
    for attribute, field in (("v", "version"), ("ca", "created_at"), ("ua", "updated_at")):
        if (stamp := get(attribute)) is not None:
            setattr(profile, field, _int(stamp))
    if (ids := get("mi")) is not None:
        profile.keep_packed_message_ids(bytes(ids["B"]))
    if (counters := get("c")) is not None:
        profile.keep_packed_counters({key: bytes(value["B"]) for key, value in counters["M"].items()})
    _read_figures(profile, item)
    return profile


def _orders_remembered(item: Mapping[str, AttributeValue]) -> bool:
    """Whether every recent order is among the completed-order digests (as every write since ``od`` leaves it)."""
    recent = item.get("ro")
    if recent is None or not recent.get("L"):
        return True
    digests = bytes(item["od"]["B"]) if "od" in item else b""
    return all(holds_digest(digests, message_digest(str(decode_value(order["L"][0]))), DIGEST_BYTES)
               for order in recent["L"])


def _filled(value: AttributeValue) -> bool:
    """Whether a stored attribute holds anything (an empty one decodes to the field's default)."""
    (kind, inner), = value.items()
    return kind != "NULL" and bool(inner)


def _read_figures(profile: Profile, item: Mapping[str, AttributeValue]) -> None:
    """What every fold or evaluation reads: channels, order figures, memberships, deadlines, latches."""
    get = item.get
    if (channels := get("ch")) is not None:
        profile.channels = _number_map(channels)
    orders = get("o")
    if orders is not None and orders.get("L"):
        figures = [_int(n) for n in orders["L"][:4]]
        profile.orders, profile.revenue = figures[0], figures[1]
        profile.first_order = figures[2] or None
        profile.last_order = figures[3] or None
    if (memberships := get("m")) is not None:
        profile.memberships = _number_map(memberships)
    if (entered_by := get("mc")) is not None:
        profile.entered_by = {segment: str(clause["S"]) for segment, clause in entered_by["M"].items()}
    if (deadlines := get("dl")) is not None:
        profile.deadlines = _number_map(deadlines)
    if (latches := get("lt")) is not None:
        profile.latches = _number_map(latches)
    if (catalogue := get("cv")) is not None:
        profile.catalogue = str(decode_value(catalogue))
    _read_identity(profile, item)


def _read_identity(profile: Profile, item: Mapping[str, AttributeValue]) -> None:
    """Known, merged ids, the customer a merged profile went to, and the retention's TTL."""
    get = item.get
    if get("kn") is not None:
        profile.known = True
    if (merges := get("mg")) is not None:
        profile.merges = [[str(m["L"][0]["S"]), _int(m["L"][1]), str(m["L"][2]["S"])] for m in merges["L"]]
    if (merged_into := get("mt")) is not None:
        profile.merged_into = str(merged_into["S"])
    if (expires := get("xp")) is not None:
        profile.expires_at = _int(expires)


# ---- the table stream ------------------------------------------------------------------------------------

# What the changes function reads.
STREAM_ATTRIBUTES = ("customer_id", "v", "ua", "m", "mc", "t", "tx", "mg", "mt", "cs")


def decode_stream_image(image: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """The attributes of a table stream image that the changes function reads, as plain Python.

    Lambda delivers binary values there as base64 text.
    """
    return {attribute: decode_value(_binary_from_base64(image[attribute]))
            for attribute in STREAM_ATTRIBUTES if attribute in image}


def _binary_from_base64(value: AttributeValue) -> AttributeValue:
    (kind, inner), = value.items()
    if kind == "B" and isinstance(inner, str):
        return {"B": base64.b64decode(inner)}
    if kind == "BS":
        return {"BS": [base64.b64decode(v) if isinstance(v, str) else v for v in inner]}
    if kind == "M":
        return {"M": {k: _binary_from_base64(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [_binary_from_base64(v) for v in inner]}
    return value
