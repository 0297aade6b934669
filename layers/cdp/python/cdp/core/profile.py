"""The customer profile: compact, bounded aggregates and the current segment memberships.

The model and its item encoding; :mod:`cdp.core.fold` changes it event by event, and
:class:`ProfileView` is how segment conditions read it. One DynamoDB item holds everything
a profile read needs. Its attributes:

=============  =============================================================
``customer_id``  partition key
``v``          version, for optimistic locking (bumped on every write)
``ca`` ``ua``  created / updated (Unix seconds)
``t``          traits from identify calls
``ch``         channel -> last seen
``c``          counter key -> packed :class:`~cdp.core.counters.Counter` (binary)
``o``          RFM: [orders, revenue in hundredths, first order, last order]
``ro``         recent orders: [[order id, time, value in hundredths], ...]
``cart``       product id -> [quantity, unit price in hundredths, last added]
``la``         last add to cart: [product id, time]
``cx``         context: device, OS, location, first- and last-touch campaign
``rp``         recent products (binary, :func:`pack_products`): per product and kind its category and last
               time, oldest first; kind ``p`` purchased (``Order Completed``'s ``products[]``) or ``v``
               viewed (``Product Viewed``); the newest ``MAX_PRODUCTS`` of each kind, ids and categories
               cut to ``MAX_PRODUCT_CHARS``. Packed, as 25 views of a typical shopper would otherwise
               cost a third of its item
``mi``         applied message ids for dedupe: per id an 8-byte digest and the 4-byte time
               it was applied, packed (binary); kept for ``DEDUPE_HORIZON`` (the newest
               ``MIN_MESSAGE_IDS`` whatever their age), at most ``MAX_MESSAGE_IDS`` (the
               oldest go first). The legacy ``ids`` (digests only) is read as applied at ``ua``
``od``         completed order ids (8-byte digests, packed; the last ``MAX_ORDER_DIGESTS``),
               so an order counts once even when re-sent with a new message id or refunded
``sq``         per stream shard: [highest sequence number handled, time] (``DEDUPE_HORIZON``)
``m``          segment id -> member since
``mc``         segment id -> the clause it was entered by (a node path of its condition, or
               ``manual``, ``merged``...): only current memberships
``dl``         segment id -> next moment its membership can change unprompted
``nd``         the earliest of ``dl`` (what the timers sweep queries)
``ds``         the due shard, ``00``..``31``: with ``nd``, the key of the due index
``lt``         qualified trigger times for absence conditions with ``when``
``cv``         fingerprint of the catalogue the profile was last evaluated against in full
``tx``         the transitions this write made: [segment, kind, time, clause, reason], and from a
               backfill a 6th element, its delivery mode (``none`` or ``audiences``)
``al`` ``gr``  aliases (previous ids) and group ids
``kn``         1 once a message named the customer by user id (a known customer)
``mg``         the ids merged into this customer: [[id, at, message id], ...] (``MAX_MERGES``)
``mt``         set on a profile merged into another: the customer it was merged into. It is
               kept as it was at the merge and no longer changes (see :mod:`cdp.pipeline.identity`)
``cs``         consent (:class:`~cdp.core.consent.ConsentState`): ``c`` the latest category
               preferences, ``a`` ``s`` ``m`` when, from which channel and in which message they
               were given, ``u`` ``r`` unsubscribed at and why, ``h`` the history of changes
               (``MAX_CONSENT_HISTORY``, each at most ``MAX_CATEGORIES`` categories)
``ct``         computed traits (:class:`~cdp.core.traits.ComputedTraits`): ``v`` trait name -> value,
               ``m`` model -> [version, trained at] of the model that wrote them (population jobs)
``xp``         the table's TTL attribute, with a retention set: a day after the profile's expiry
               (``dl`` key ``~expiry``, the start of the day ``retention_days`` after its last event),
               so the timers make its exits before DynamoDB may delete it
=============  =============================================================

Every collection has a fixed cap, so the item has a measured upper bound.

A profile read from the table (:meth:`Profile.deferred`) decodes the attributes the fold reads
only now and then (traits, context, orders, cart, dedupe state, transitions, ids, consent) on first use;
one never read is written back in the form it was stored in. Counters stay packed until read.

Dedupe is exact for a redelivery within ``DEDUPE_HORIZON`` of its first application (the
stream's 7-day retention plus a day for a redrive) while fewer than ``MAX_MESSAGE_IDS``
messages of the customer were applied since, and at any age while fewer than
``MIN_MESSAGE_IDS`` were (in event time a replay's clock outruns the stream's retention).
The shard watermark makes a Lambda retry (same shard, same sequence number) a duplicate
whatever the volume. The order digests keep an order from counting twice in the lifetime
figures while it is among the customer's last ``MAX_ORDER_DIGESTS`` orders.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cdp.core.consent import ConsentState
from cdp.core.counters import Counter
from cdp.core.traits import TRAIT_MODELS, ComputedTraits

if TYPE_CHECKING:
    from cdp.core.population import PopulationStats

DEDUPE_HORIZON = 8 * 86400  # Kinesis retention (7 days) + 1 day for a redrive
MAX_MESSAGE_IDS = 1_000  # 12 KB: a customer with more messages within the horizon loses the oldest
MIN_MESSAGE_IDS = 100  # the newest are kept whatever their age: an event-time clock outruns the stream
MAX_ORDER_DIGESTS = 500  # 4 KB
MAX_SHARD_MARKS = 8  # shards a customer's records came from within the horizon (resharding)
MAX_PLAIN_COUNTERS = 40  # event names no segment refers to
MAX_TRAITS = 64
MAX_CART_ITEMS = 50
RECENT_ORDERS = 8
MAX_ALIASES = 8
MAX_GROUPS = 8
MAX_PRODUCTS = 20  # per kind (purchased, viewed): at the caps about 6 KB (bench/profile_size.py)
MAX_PRODUCT_CHARS = 64
PURCHASED, VIEWED = "p", "v"
_PRODUCT_ENTRY = struct.Struct(">cIBH")  # kind, last time, category number (0: none), id length; then the id
_TEXT_LENGTH = struct.Struct(">H")
_LAST_TIME = 2**32 - 1
MAX_MERGES = 100  # ids merged into one customer, as Segment bounds it; later merges are refused and counted
DIGEST_BYTES = 8
DUE_SHARDS = 32  # see cdp.pipeline.timers for the sizing
_ID_ENTRY = struct.Struct(">8sI")  # digest, applied at (Unix seconds)
_WORD = next(code for code in "IL" if array(code).itemsize == 4)  # an unsigned 4-byte array item


def message_digest(message_id: str) -> bytes:
    """The 8-byte digest kept for a message id (and for an order id)."""
    return hashlib.blake2b(message_id.encode(), digest_size=DIGEST_BYTES).digest()


def unpack_message_ids(data: bytes) -> dict[bytes, int]:
    """The packed ``mi`` attribute: digest -> applied at, in the order they were packed."""
    return dict(_ID_ENTRY.iter_unpack(data))


def pack_message_ids(ids: Mapping[bytes, int]) -> bytes:
    """The packed ``mi`` form of digest -> applied at, in the mapping's order (what ``unpack_message_ids`` reads)."""
    return b"".join(map(_ID_ENTRY.pack, ids, ids.values()))


def holds_digest(packed: bytes, digest: bytes, entry: int) -> bool:
    """Whether ``digest`` starts one of the ``entry``-byte entries of ``packed``."""
    at = packed.find(digest)
    while at >= 0:
        if at % entry == 0:
            return True
        at = packed.find(digest, at + 1)
    return False


def _oldest_applied(packed: bytes) -> int:
    """The earliest time among packed message id entries (each a digest and a big-endian 4-byte time)."""
    words = array(_WORD, packed)  # 3 four-byte words per entry: two of digest, then the time
    if sys.byteorder == "little":
        words.byteswap()
    return min(words[2::3])


def unpack_order_digests(data: bytes, recent_orders: Iterable[list[Any]]) -> dict[bytes, None]:
    """The packed ``od`` attribute, plus the recent orders (profiles written before ``od`` existed)."""
    digests = dict.fromkeys(data[i:i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES))
    for order in recent_orders:
        digests.setdefault(message_digest(order[0]))
    return digests


# The attributes a profile read from the table decodes on first use, and the fields they fill.
# (The message ids, ``mi``, are read in place: see ``Profile.keep_packed_message_ids``.)
DEFERRED = {"t": "traits", "ro": "recent_orders", "cart": "cart", "la": "last_add", "cx": "context",
            "od": "_order_digests", "sq": "shard_marks", "tx": "transitions", "al": "aliases", "gr": "groups",
            "cs": "consent", "ct": "computed", "rp": "products"}


class _Stored:
    """A field of a profile read from the table, decoded from its stored form on first use.

    It has no ``__set__``: once decoded or assigned, the value lives on the instance and reads at
    plain attribute speed.
    """

    __slots__ = ("attribute", "name")

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute
        self.name = DEFERRED[attribute]

    def __get__(self, profile: Profile | None, owner: type | None = None) -> Any:
        if profile is None:
            return self
        value = profile._readers[self.attribute](profile, profile._stored.pop(self.attribute))
        profile.__dict__[self.name] = value
        return value


Reader = Callable[["Profile", Any], Any]


def _sequence(shard: str, sequence: str) -> int | None:
    """A Kinesis sequence number (decimal, ordered within its shard), or None when there is none."""
    return int(sequence) if shard and sequence.isdigit() else None


class Profile:
    """A customer's profile. Counters stay packed until something reads or changes them."""

    if not TYPE_CHECKING:  # the fields' types are those given in __init__
        traits = _Stored("t")
        recent_orders = _Stored("ro")
        cart = _Stored("cart")
        last_add = _Stored("la")
        context = _Stored("cx")
        _order_digests = _Stored("od")
        shard_marks = _Stored("sq")
        transitions = _Stored("tx")
        aliases = _Stored("al")
        groups = _Stored("gr")
        consent = _Stored("cs")
        computed = _Stored("ct")
        products = _Stored("rp")

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
        self.products: list[list[Any]] = []  # [product id, category, kind, last time], oldest first
        self._message_ids: dict[bytes, int] = {}  # digest -> applied at, oldest first (after _packed_ids)
        self._packed_ids = b""  # stored ids not unpacked yet: older than every one in _message_ids
        self._order_digests: dict[bytes, None] = {}  # completed orders, oldest first
        self.shard_marks: dict[str, list[Any]] = {}  # shard -> [highest sequence handled, at]
        self.memberships: dict[str, int] = {}
        self.entered_by: dict[str, str] = {}  # segment -> clause it was entered by (current memberships)
        self.deadlines: dict[str, int] = {}
        self.latches: dict[str, int] = {}
        self.transitions: list[list[Any]] = []
        self.catalogue = ""
        self.aliases: list[str] = []
        self.groups: list[str] = []
        self.known = False
        self.merges: list[list[Any]] = []  # [id, at, message id] per id merged in, oldest first
        self.merged_into: str | None = None
        self.consent = ConsentState()  # the latest preferences and any unsubscribe (see cdp.core.consent)
        self.computed = ComputedTraits()  # written by the population jobs (see cdp.core.traits)
        self.expires_at: int | None = None  # when DynamoDB's TTL may delete the item (retention)
        self._stored: dict[str, Any] = {}  # attribute -> stored form, until the field is first read
        self._readers: Mapping[str, Reader] = {}

    @classmethod
    def deferred(cls, customer_id: str, stored: dict[str, Any], readers: Mapping[str, Reader]) -> Profile:
        """A profile read from the table whose attributes in ``stored`` (any of ``DEFERRED``, each in its
        stored form) are decoded on first use, by ``readers[attribute](profile, stored form)``."""
        profile = cls(customer_id)
        fields = profile.__dict__
        for attribute in stored:
            del fields[DEFERRED[attribute]]
        profile._stored = stored
        profile._readers = readers
        return profile

    def unread(self) -> Mapping[str, Any]:
        """The stored form of each deferred attribute whose field was neither read nor assigned since."""
        stored = self._stored
        if stored:
            fields = self.__dict__
            for attribute in [a for a in stored if DEFERRED[a] in fields]:
                del stored[attribute]
        return stored

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

    def packed_counters(self) -> dict[str, bytes]:
        """Every counter, packed; one that nothing changed since it was read is written as it was read."""
        return {key: value if isinstance(value, bytes) else value.encode() for key, value in self._counters.items()}

    def keep_packed_counters(self, packed: dict[str, bytes]) -> None:
        """Take the counters of a stored item, packed: each is decoded when first read."""
        self._counters = dict(packed)

    def counter_keys(self) -> list[str]:
        return list(self._counters)

    def drop_counter(self, key: str) -> None:
        self._counters.pop(key, None)

    # dedupe

    def seen(self, message_id: str) -> bool:
        digest = message_digest(message_id)
        return digest in self._message_ids or holds_digest(self._packed_ids, digest, _ID_ENTRY.size)

    def remember(self, message_id: str, now: float) -> None:
        """Remember an applied message id (``prune_dedupe`` bounds them, once the whole batch is folded)."""
        digest = message_digest(message_id)
        if self._packed_ids and holds_digest(self._packed_ids, digest, _ID_ENTRY.size):
            self._unpack_ids()  # it keeps its place among the stored ones
        self._message_ids[digest] = max(0, int(now))

    def keep_packed_message_ids(self, packed: bytes) -> None:
        """Take the ``mi`` attribute of a stored item as it is: unpacked only if a prune needs to."""
        self._message_ids = {}
        self._packed_ids = packed[:len(packed) - len(packed) % _ID_ENTRY.size]

    def _unpack_ids(self) -> None:
        if self._packed_ids:
            ids = unpack_message_ids(self._packed_ids)
            ids.update(self._message_ids)
            self._message_ids, self._packed_ids = ids, b""

    def prune_dedupe(self, now: float) -> None:
        """Before a write: forget shard watermarks and message ids older than ``DEDUPE_HORIZON`` (but
        never the newest ``MIN_MESSAGE_IDS`` ids), and beyond ``MAX_MESSAGE_IDS`` the oldest ids. Not
        while a batch is folded, so that a message of the batch never pushes out the id of a duplicate
        later in it."""
        cutoff = int(now) - DEDUPE_HORIZON
        if self._needs_pruning(cutoff):
            self._unpack_ids()
            self._prune_ids(cutoff)
        for shard in [s for s, (_, at) in self.shard_marks.items() if at < cutoff]:
            del self.shard_marks[shard]

    def _needs_pruning(self, cutoff: int) -> bool:
        """Whether some message id is to be forgotten; the stored ones are looked at without unpacking."""
        count = self.message_ids
        if count <= MIN_MESSAGE_IDS:
            return False
        if count > MAX_MESSAGE_IDS or (self._message_ids and min(self._message_ids.values()) < cutoff):
            return True
        return bool(self._packed_ids) and _oldest_applied(self._packed_ids) < cutoff

    def _prune_ids(self, cutoff: int) -> None:
        ids = self._message_ids
        if len(ids) > MIN_MESSAGE_IDS and min(ids.values()) < cutoff:
            oldest = sorted(ids, key=ids.__getitem__)[:len(ids) - MIN_MESSAGE_IDS]  # stable: ties by arrival
            for digest in oldest:
                if ids[digest] < cutoff:
                    del ids[digest]
        if len(ids) > MAX_MESSAGE_IDS:
            for digest in sorted(ids, key=ids.__getitem__)[:len(ids) - MAX_MESSAGE_IDS]:
                del ids[digest]

    @property
    def message_ids(self) -> int:
        """How many message ids are remembered."""
        return len(self._packed_ids) // _ID_ENTRY.size + len(self._message_ids)

    def packed_message_ids(self) -> bytes:
        """The ``mi`` attribute: per remembered id its digest and the time it was applied."""
        return self._packed_ids + b"".join(map(_ID_ENTRY.pack, self._message_ids, self._message_ids.values()))

    def packed_order_digests(self) -> bytes:
        """The ``od`` attribute: the digests of the completed orders remembered, oldest first."""
        return b"".join(self._order_digests)

    def keep_order_digests(self, digests: Iterable[bytes]) -> None:
        """Take these completed-order digests, oldest first, in place of the ones held; beyond
        ``MAX_ORDER_DIGESTS`` the oldest are forgotten (as ``remember_order`` forgets them)."""
        self._order_digests = dict.fromkeys(list(dict.fromkeys(digests))[-MAX_ORDER_DIGESTS:])

    def order_completed(self, order_id: str) -> bool:
        return message_digest(order_id) in self._order_digests

    def remember_order(self, order_id: str) -> None:
        """Remember a completed order; beyond ``MAX_ORDER_DIGESTS`` the oldest is forgotten."""
        orders = self._order_digests
        orders[message_digest(order_id)] = None
        while len(orders) > MAX_ORDER_DIGESTS:
            del orders[next(iter(orders))]

    def delivered(self, shard: str, sequence: str) -> bool:
        """Whether a record at or below this shard's watermark was already handled for this customer."""
        number = _sequence(shard, sequence)
        mark = self.shard_marks.get(shard)
        return number is not None and mark is not None and number <= int(mark[0])

    def mark_delivered(self, shard: str, sequence: str, now: float) -> None:
        """Raise this shard's watermark to ``sequence`` (records without a shard or sequence have none)."""
        number = _sequence(shard, sequence)
        if number is None:
            return
        mark = self.shard_marks.get(shard)
        if mark is None or number > int(mark[0]):
            self.shard_marks[shard] = [str(number), int(now)]
        while len(self.shard_marks) > MAX_SHARD_MARKS:
            del self.shard_marks[min(self.shard_marks, key=lambda s: self.shard_marks[s][1])]

    def current_entered_by(self) -> dict[str, str]:
        """The clause each current membership was entered by (what is stored: never a membership left)."""
        memberships = self.memberships
        entered_by = self.entered_by
        if len(entered_by) <= len(memberships) and all(segment in memberships for segment in entered_by):
            return entered_by
        return {segment: clause for segment, clause in entered_by.items() if segment in memberships}

    @property
    def next_deadline(self) -> int | None:
        return min(self.deadlines.values()) if self.deadlines else None

    # serialisation

    def to_item(self) -> dict[str, Any]:
        """The DynamoDB item (plain Python values; numbers are ints, binary is bytes).

        Attributes are written in the order of the table in the module docstring; an empty one is left out.
        """
        item: dict[str, Any] = {"customer_id": self.customer_id, "v": self.version,
                                "ca": self.created_at, "ua": self.updated_at}
        self._put_aggregates(item)
        self._put_dedupe(item)
        self._put_segmentation(item)
        if self.aliases:
            item["al"] = self.aliases
        if self.groups:
            item["gr"] = self.groups
        self._put_identity(item)
        return item

    def _put_identity(self, item: dict[str, Any]) -> None:
        if self.known:
            item["kn"] = 1
        if self.merges:
            item["mg"] = self.merges
        if self.merged_into is not None:
            item["mt"] = self.merged_into
        if not self.consent.empty:
            item["cs"] = consent_item(self.consent)
        if not self.computed.empty:
            item["ct"] = self.computed.as_item()
        if self.expires_at is not None:
            item["xp"] = self.expires_at

    def take(self, other: Profile) -> None:
        """Become ``other`` in place (a profile made from this one, as a merge makes it)."""
        fields = self.__dict__
        fields.clear()
        fields.update(other.__dict__)

    def merged_ids(self) -> set[str]:
        """The ids merged into this customer, directly or through a customer merged into it."""
        return {str(entry[0]) for entry in self.merges}

    def _put_aggregates(self, item: dict[str, Any]) -> None:
        """What the events folded into: traits, channels, counters, orders, cart and context."""
        if self.traits:
            item["t"] = self.traits
        if self.channels:
            item["ch"] = self.channels
        if self._counters:
            item["c"] = self.packed_counters()
        if self.orders or self.revenue or self.first_order is not None:  # kept when every order was refunded
            item["o"] = [self.orders, self.revenue, self.first_order or 0, self.last_order or 0]
        if self.recent_orders:
            item["ro"] = self.recent_orders
        if self.cart:
            item["cart"] = self.cart
        if self.last_add:
            item["la"] = self.last_add
        if self.context:
            item["cx"] = self.context
        if self.products:
            item["rp"] = pack_products(self.products)

    def _put_dedupe(self, item: dict[str, Any]) -> None:
        """What makes a redelivery a duplicate: message ids, completed orders, shard watermarks."""
        if self.message_ids:
            item["mi"] = self.packed_message_ids()
        if self._order_digests:
            item["od"] = self.packed_order_digests()
        if self.shard_marks:
            item["sq"] = self.shard_marks

    def _put_segmentation(self, item: dict[str, Any]) -> None:
        """Memberships, deadlines (and the due-index key), latches, catalogue fingerprint, transitions."""
        if self.memberships:
            item["m"] = self.memberships
        entered_by = self.current_entered_by()
        if entered_by:
            item["mc"] = entered_by
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
        profile.products = unpack_products(bytes(item.get("rp") or b""))
        legacy = bytes(item.get("ids") or b"")  # digests only: taken as applied at the last update
        profile._message_ids = dict.fromkeys(
            (legacy[i:i + DIGEST_BYTES] for i in range(0, len(legacy), DIGEST_BYTES)), profile.updated_at)
        profile._message_ids.update(unpack_message_ids(bytes(item.get("mi") or b"")))
        profile._order_digests = unpack_order_digests(bytes(item.get("od") or b""), profile.recent_orders)
        profile.shard_marks = {str(k): [str(v[0]), int(v[1])] for k, v in (item.get("sq") or {}).items()}
        profile.memberships = {k: int(v) for k, v in (item.get("m") or {}).items()}
        profile.entered_by = {k: str(v) for k, v in (item.get("mc") or {}).items()}
        profile.deadlines = {k: int(v) for k, v in (item.get("dl") or {}).items()}
        profile.latches = {k: int(v) for k, v in (item.get("lt") or {}).items()}
        profile.transitions = [[str(t[0]), str(t[1]), int(t[2]), str(t[3]), str(t[4]), *map(str, t[5:6])]
                               for t in item.get("tx") or []]
        profile.catalogue = str(item.get("cv", ""))
        profile.aliases = [str(a) for a in item.get("al") or []]
        profile.groups = [str(g) for g in item.get("gr") or []]
        profile.known = bool(item.get("kn"))
        profile.merges = [[str(m[0]), int(m[1]), str(m[2])] for m in item.get("mg") or []]
        profile.merged_into = str(item["mt"]) if item.get("mt") else None
        profile.consent = ConsentState.from_item(item.get("cs"))
        profile.computed = ComputedTraits.from_item(item.get("ct"))
        profile.expires_at = int(item["xp"]) if item.get("xp") is not None else None
        return profile


class ProfileView:
    """A profile as the conditions read it (:class:`cdp.core.language.Context`), at one moment."""

    __slots__ = ("now", "profile", "stats")

    def __init__(self, profile: Profile, now: float, stats: PopulationStats | None) -> None:
        self.profile, self.now, self.stats = profile, now, stats

    def counter(self, key: str) -> Counter | None:
        return self.profile.counter(key)

    def trait(self, name: str) -> Any:
        """A computed trait's name is reserved: rules read the computed value, never an identify trait's."""
        if name in TRAIT_MODELS:
            return self.profile.computed.values.get(name)
        return self.profile.traits.get(name)

    def channel_last_seen(self, channel: str) -> int | None:
        return self.profile.channels.get(channel)

    def is_member(self, segment_id: str) -> bool:
        return segment_id in self.profile.memberships

    def rfm(self, metric: str) -> float:
        profile = self.profile
        if metric == "orders":
            return profile.orders
        if metric == "revenue":
            return profile.revenue / 100
        return profile.revenue / 100 / profile.orders if profile.orders else 0.0

    def threshold(self, metric: str, top_percent: float) -> float | None:
        return self.stats.threshold(metric, top_percent) if self.stats else None

    def latch(self, key: str) -> int | None:
        return self.profile.latches.get(key)

    def products(self) -> list[list[Any]]:
        return self.profile.products


def record_product(products: list[list[Any]], product_id: str, category: str, kind: str, at: int) -> bool:
    """Note that the customer purchased or viewed (``kind``) a product at ``at``; returns whether anything changed.

    A product already held moves to its place by the later time (a late event never moves a time backwards;
    it only fills a category the entry lacks); beyond ``MAX_PRODUCTS`` of the kind the oldest goes.
    """
    product_id, category = product_id[:MAX_PRODUCT_CHARS], category[:MAX_PRODUCT_CHARS]
    at = min(max(0, at), _LAST_TIME)  # as packed: four bytes
    held = next((entry for entry in products if entry[0] == product_id and entry[2] == kind), None)
    if held is not None:
        if at <= held[3]:
            if held[1] or not category:
                return False
            held[1] = category
            return True
        products.remove(held)
        category = category or held[1]
    entry = [product_id, category, kind, at]
    products.insert(_place(products, at), entry)
    if sum(other[2] == kind for other in products) > MAX_PRODUCTS:
        oldest = next(other for other in products if other[2] == kind)
        products.remove(oldest)
        return oldest is not entry  # a new product older than all the kind holds is not kept
    return True


def _place(products: list[list[Any]], at: int) -> int:
    """Where an entry at ``at`` goes in the time order: after every entry at or before it."""
    place = len(products)
    while place and products[place - 1][3] > at:
        place -= 1
    return place


def pack_products(products: Iterable[list[Any]]) -> bytes:
    """The ``rp`` attribute: the categories (each once: a count, then per category its UTF-8 length and bytes),
    then per entry its kind, last time, category number and id (length and UTF-8 bytes), in order."""
    categories: dict[str, int] = {}
    entries = []
    for product_id, category, kind, at in products:
        number = categories.setdefault(category, len(categories) + 1) if category else 0
        name = product_id.encode("utf-8", "surrogatepass")
        entries.append(_PRODUCT_ENTRY.pack(kind.encode(), at, number, len(name)) + name)
    header = [bytes([len(categories)])]
    for category in categories:
        text = category.encode("utf-8", "surrogatepass")
        header.append(_TEXT_LENGTH.pack(len(text)) + text)
    return b"".join(header + entries)


def unpack_products(data: bytes) -> list[list[Any]]:
    """The recent products of a packed ``rp`` attribute: [product id, category or "", kind, last time] each."""
    if not data:
        return []
    categories = [""]
    offset = 1
    for _ in range(data[0]):
        (length,) = _TEXT_LENGTH.unpack_from(data, offset)
        offset += _TEXT_LENGTH.size
        categories.append(data[offset:offset + length].decode("utf-8", "surrogatepass"))
        offset += length
    products = []
    while offset < len(data):
        kind, at, number, length = _PRODUCT_ENTRY.unpack_from(data, offset)
        offset += _PRODUCT_ENTRY.size
        product_id = data[offset:offset + length].decode("utf-8", "surrogatepass")
        offset += length
        products.append([product_id, categories[number], kind.decode(), at])
    return products


def bounded_products(entries: Iterable[list[Any]]) -> list[list[Any]]:
    """Entries in time order (stable), the newest ``MAX_PRODUCTS`` of each kind."""
    ordered = sorted(entries, key=lambda entry: entry[3])
    kept: dict[str, int] = {}
    newest_first = []
    for entry in reversed(ordered):
        kept[entry[2]] = kept.get(entry[2], 0) + 1
        if kept[entry[2]] <= MAX_PRODUCTS:
            newest_first.append(entry)
    return newest_first[::-1]


def consent_item(consent: ConsentState) -> dict[str, Any]:
    """The ``cs`` attribute. Times in whole seconds are written as whole numbers, as DynamoDB returns them, so
    that consent read and written unchanged is written exactly as it was stored."""
    item = consent.as_item()
    for key in ("a", "u"):
        if key in item:
            item[key] = _whole_number(item[key])
    for entry in item.get("h", ()):
        entry[0] = _whole_number(entry[0])
    return item


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def due_shard(customer_id: str) -> str:
    """The due-index shard of a customer (see ``cdp.pipeline.timers``); stable across processes, unlike ``hash``."""
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

