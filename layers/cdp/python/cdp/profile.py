"""The customer profile: compact, bounded aggregates and the current segment memberships.

One DynamoDB item holds everything a profile read needs. Its attributes:

=============  =============================================================
``customer_id``  partition key
``v``          version, for optimistic locking (bumped on every write)
``ca`` ``ua``  created / updated (Unix seconds)
``t``          traits from identify calls
``ch``         channel -> last seen
``c``          counter key -> packed :class:`~cdp.counters.Counter` (binary)
``o``          RFM: [orders, revenue in hundredths, first order, last order]
``ro``         recent orders: [[order id, time, value in hundredths], ...]
``cart``       product id -> [quantity, unit price in hundredths, last added]
``la``         last add to cart: [product id, time]
``cx``         context: device, OS, location, first- and last-touch campaign
``ids``        recent message ids (8-byte digests, packed) for dedupe
``m``          segment id -> member since
``dl``         segment id -> next moment its membership can change unprompted
``nd``         the earliest of ``dl`` (what the timers sweep queries)
``ds``         the due shard, ``00``..``31``: with ``nd``, the key of the due index
``lt``         qualified trigger times for absence conditions with ``when``
``cv``         fingerprint of the catalogue the profile was last evaluated against in full
``tx``         the transitions this write made: [segment, kind, time, clause, reason]
``al`` ``gr``  aliases (previous ids) and group ids
=============  =============================================================

Every collection has a fixed cap, so the item has a measured upper bound.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from cdp.counters import Counter

RECENT_IDS = 100  # one full Kinesis batch of a single customer
MAX_PLAIN_COUNTERS = 40  # event names no segment refers to
MAX_TRAITS = 64
MAX_CART_ITEMS = 50
RECENT_ORDERS = 8
MAX_ALIASES = 8
MAX_GROUPS = 8
DIGEST_BYTES = 8
DUE_SHARDS = 32  # see cdp.due for the sizing


def message_digest(message_id: str) -> bytes:
    return hashlib.blake2b(message_id.encode(), digest_size=DIGEST_BYTES).digest()


class Profile:
    """A customer's profile. Counters stay packed until something reads or changes them."""

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.version = 0
        self.created_at = 0
        self.updated_at = 0
        self.traits: dict[str, Any] = {}
        self.channels: dict[str, int] = {}
        self._counters: dict[str, Counter | bytes] = {}
        self.orders = 0
        self.revenue = 0
        self.first_order: int | None = None
        self.last_order: int | None = None
        self.recent_orders: list[list[Any]] = []
        self.cart: dict[str, list[int]] = {}
        self.last_add: list[Any] | None = None
        self.context: dict[str, Any] = {}
        self._recent_ids: list[bytes] = []
        self._recent_id_set: set[bytes] = set()
        self.memberships: dict[str, int] = {}
        self.deadlines: dict[str, int] = {}
        self.latches: dict[str, int] = {}
        self.transitions: list[list[Any]] = []
        self.catalogue = ""
        self.aliases: list[str] = []
        self.groups: list[str] = []

    # counters

    def counter(self, key: str) -> Counter | None:
        value = self._counters.get(key)
        if isinstance(value, bytes):
            value = Counter.decode(value)
            self._counters[key] = value
        return value

    def counter_for_update(self, key: str, tiers: tuple[str, ...], has_sum: bool) -> Counter:
        counter = self.counter(key)
        if counter is None:
            counter = Counter(tiers, has_sum)
            self._counters[key] = counter
        elif tiers or has_sum:
            counter.ensure(tiers, has_sum)
        return counter

    def counter_keys(self) -> list[str]:
        return list(self._counters)

    def drop_counter(self, key: str) -> None:
        self._counters.pop(key, None)

    # dedupe

    def seen(self, message_id: str) -> bool:
        return message_digest(message_id) in self._recent_id_set

    def remember(self, message_id: str) -> None:
        digest = message_digest(message_id)
        self._recent_ids.append(digest)
        self._recent_id_set.add(digest)
        if len(self._recent_ids) > RECENT_IDS:
            oldest = self._recent_ids.pop(0)
            self._recent_id_set.discard(oldest)

    @property
    def next_deadline(self) -> int | None:
        return min(self.deadlines.values()) if self.deadlines else None

    # serialisation

    def to_item(self) -> dict[str, Any]:
        """The DynamoDB item (plain Python values; numbers are ints, binary is bytes)."""
        item: dict[str, Any] = {"customer_id": self.customer_id, "v": self.version,
                                "ca": self.created_at, "ua": self.updated_at}
        if self.traits:
            item["t"] = self.traits
        if self.channels:
            item["ch"] = self.channels
        if self._counters:
            item["c"] = {key: value if isinstance(value, bytes) else value.encode()
                         for key, value in self._counters.items()}
        if self.orders or self.revenue:
            item["o"] = [self.orders, self.revenue, self.first_order or 0, self.last_order or 0]
        if self.recent_orders:
            item["ro"] = self.recent_orders
        if self.cart:
            item["cart"] = self.cart
        if self.last_add:
            item["la"] = self.last_add
        if self.context:
            item["cx"] = self.context
        if self._recent_ids:
            item["ids"] = b"".join(self._recent_ids)
        if self.memberships:
            item["m"] = self.memberships
        if self.deadlines:
            item["dl"] = self.deadlines
            item["nd"] = min(self.deadlines.values())
            item["ds"] = due_shard(self.customer_id)  # with nd, the key of the (sparse) due index
        if self.latches:
            item["lt"] = self.latches
        if self.catalogue:
            item["cv"] = self.catalogue
        if self.transitions:
            item["tx"] = self.transitions
        if self.aliases:
            item["al"] = self.aliases
        if self.groups:
            item["gr"] = self.groups
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Profile:
        profile = cls(str(item["customer_id"]))
        profile.version = int(item.get("v", 0))
        profile.created_at = int(item.get("ca", 0))
        profile.updated_at = int(item.get("ua", 0))
        profile.traits = dict(item.get("t") or {})
        profile.channels = {k: int(v) for k, v in (item.get("ch") or {}).items()}
        profile._counters = {k: bytes(v) for k, v in (item.get("c") or {}).items()}
        orders = item.get("o")
        if orders:
            profile.orders, profile.revenue = int(orders[0]), int(orders[1])
            profile.first_order = int(orders[2]) or None
            profile.last_order = int(orders[3]) or None
        profile.recent_orders = [[str(o[0]), int(o[1]), int(o[2])] for o in item.get("ro") or []]
        profile.cart = {k: [int(x) for x in v] for k, v in (item.get("cart") or {}).items()}
        last_add = item.get("la")
        profile.last_add = [str(last_add[0]), int(last_add[1])] if last_add else None
        profile.context = dict(item.get("cx") or {})
        ids = bytes(item.get("ids") or b"")
        profile._recent_ids = [ids[i:i + DIGEST_BYTES] for i in range(0, len(ids), DIGEST_BYTES)]
        profile._recent_id_set = set(profile._recent_ids)
        profile.memberships = {k: int(v) for k, v in (item.get("m") or {}).items()}
        profile.deadlines = {k: int(v) for k, v in (item.get("dl") or {}).items()}
        profile.latches = {k: int(v) for k, v in (item.get("lt") or {}).items()}
        profile.transitions = [[str(t[0]), str(t[1]), int(t[2]), str(t[3]), str(t[4])]
                               for t in item.get("tx") or []]
        profile.catalogue = str(item.get("cv", ""))
        profile.aliases = [str(a) for a in item.get("al") or []]
        profile.groups = [str(g) for g in item.get("gr") or []]
        return profile


def due_shard(customer_id: str) -> str:
    """The due-index shard of a customer (see ``cdp.due``); stable across processes, unlike ``hash``."""
    digest = hashlib.blake2b(customer_id.encode(), digest_size=4).digest()
    return f"{int.from_bytes(digest, 'big') % DUE_SHARDS:02d}"


def item_size(item: dict[str, Any]) -> int:
    """The size DynamoDB bills for an item: attribute names plus values, by its published rules."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, Decimal)):
        digits = "".join(map(str, Decimal(str(value)).as_tuple().digits)).strip("0")
        return (max(len(digits), 1) + 1) // 2 + 1
    if isinstance(value, dict):
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 3 + sum(_value_size(v) + 1 for v in value)
    raise TypeError(f"cannot size a {type(value).__name__}")

