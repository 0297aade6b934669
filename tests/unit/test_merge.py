"""Merging an anonymous customer's profile into a known customer's (:mod:`cdp.core.merge`).

The property: two customers' random histories are folded by the real catalogue's engine, batch by batch, each
into its own profile, and both into one profile, the oracle (each batch the two customers' messages together, in
timestamp order, as the ingest folds a batch). The histories hold product views, pages, email opens and clicks,
sign-ups, cart adds and removes, orders with and without an order id, refunds and cancellations of both, orders
re-sent under a new message id, identify, alias and group calls, from the web, mobile apps, email and back ends,
stamped across every counter tier, some arriving hours to a year late, some redelivered, some sent to both
customers. Merging the two profiles must give the oracle's lifetime order figures, every counter (lifetime
figures, buckets, windows at several later moments), channels, first and last seen, last touch, recent orders,
cart, latches, aliases and groups, and the message ids and order ids it knows; traits follow the documented rule
(the known customer's win, the anonymous one's fill in), and the merged profile, evaluated in full, has the
oracle's memberships and deadlines. A redelivery of any message after the merge is a duplicate.

Where the aggregates cannot tell (the module docstring of :mod:`cdp.core.merge` lists these cases), the example
is recognised from its events and the documented rule is checked instead: a message sent to both customers was
applied to each, so the oracle applies its second copy under a new id; a refund of an order the oracle's
``RECENT_ORDERS`` cap had dropped; a cart product touched by both customers, or added both before and after the
other's last order; a latch the other customer's views would have qualified; first touch when a customer's
earliest event was not its first campaign. The caps are tested one by one below, then the bytes of a profile
after 100 merges.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.aws.dynamo import serialise_item
from cdp.aws.profile_item import decode_profile, encode_profile
from cdp.core.catalogue import load_catalogue
from cdp.core.consent import MAX_CATEGORIES, MAX_CATEGORY_CHARS, MAX_CONSENT_HISTORY, ConsentState
from cdp.core.counters import TIER_BY_CODE, Counter
from cdp.core.engine import ENTERED, Engine
from cdp.core.events import CHANNELS, EMPTY_CONTEXT, MAX_ID_LENGTH, MAX_LABEL_LENGTH, Event, normalise
from cdp.core.fold import MAX_CLOCK_SKEW, MAX_LIFETIME_REVENUE
from cdp.core.merge import FIRST_TOUCH, LAST_TOUCH, merge_profiles
from cdp.core.profile import (
    DEDUPE_HORIZON,
    MAX_ALIASES,
    MAX_CART_ITEMS,
    MAX_GROUPS,
    MAX_MESSAGE_IDS,
    MAX_ORDER_DIGESTS,
    MAX_PLAIN_COUNTERS,
    MAX_SHARD_MARKS,
    MAX_TRAITS,
    MIN_MESSAGE_IDS,
    RECENT_ORDERS,
    Profile,
    item_size,
    message_digest,
    pack_message_ids,
    unpack_message_ids,
    unpack_order_digests,
)

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = load_catalogue(ROOT / "segments")
ENGINE = Engine(CATALOGUE)
MIN, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400
B = 1_767_225_600  # 2026-01-01T00:00:00Z
KNOWN, ANON = "user-1", "anon-1"
SIDES = (KNOWN, ANON)
PRODUCTS = ("sku-0", "sku-1", "sku-2", "sku-3")
ADDED, REMOVED = "Product Added", "Product Removed"
COMPLETED, REFUNDED, CANCELLED = "Order Completed", "Order Refunded", "Order Cancelled"
REFUSED = "properties.order_id: this order was already completed"
BOOKKEEPING = {"v", "m", "dl", "nd", "ds", "tx", "cv", "mc"}  # what an evaluation writes, not what events folded into

_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message(customer: str, kind: str, at: float, message_id: str | None = None, *, channel: str = "server",
            campaign: int | None = None, **fields: Any) -> dict[str, Any]:
    """A Segment message from ``customer`` (the known one by userId, any other by anonymousId). With a
    ``campaign``, it carries a full context: device, OS, location and campaign."""
    context: dict[str, Any] = {}
    if channel != "server":
        context["library"] = {"name": "analytics.js" if channel == "web" else "analytics-ios"}
    if campaign is not None:
        context |= {"device": {"type": ("ios", "android", "desktop")[campaign % 3]}, "os": {"name": f"os-{campaign}"},
                    "location": {"country": ("DE", "FR")[campaign % 2], "city": f"city-{campaign}"},
                    "campaign": {"source": f"source-{campaign}", "medium": ("cpc", "email")[campaign % 2],
                                 "name": f"campaign-{campaign}"}}
    ids = {"userId": customer} if customer == KNOWN else {"anonymousId": customer}
    return {"type": kind, "messageId": message_id or f"m-{next(_ids)}", "timestamp": iso(at), **ids,
            "context": context, **fields}


def track(customer: str, name: str, at: float, message_id: str | None = None, *, channel: str = "server",
          campaign: int | None = None, **properties: Any) -> dict[str, Any]:
    return message(customer, "track", at, message_id, channel=channel, campaign=campaign, event=name,
                   properties=properties)


def events(*messages: dict[str, Any]) -> list[Event]:
    return [normalise(m) for m in messages]


def folded(customer: str, *batches: tuple[float, list[dict[str, Any]]]) -> Profile:
    """A profile that folded these batches, each at its moment."""
    profile = Profile(customer)
    for now, batch in batches:
        outcome = ENGINE.apply(profile, events(*batch), now)
        assert [reason for _, reason in outcome.rejected] == []
    return profile


def merge(known: Profile, anonymous: Profile, now: float) -> Profile:
    return merge_profiles(known, anonymous, now, catalogue=CATALOGUE)


def comparable(profile: Profile) -> dict[str, Any]:
    return {key: value for key, value in profile.to_item().items() if key not in BOOKKEEPING}


def ids_of(profile: Profile) -> dict[bytes, int]:
    return unpack_message_ids(profile.packed_message_ids())


def counter(profile: Profile, key: str) -> Counter:
    found = profile.counter(key)
    assert found is not None, key
    return found


def earliest_event(profile: Profile) -> int:
    return min(c.first for c in (counter(profile, key) for key in profile.counter_keys()) if c.count)


# ---- random histories -------------------------------------------------------------------------------------------

GAPS = (10 * MIN, HOUR, 6 * HOUR, DAY, 3 * DAY, 10 * DAY, 40 * DAY)  # between batches
LATENESS = (2 * HOUR, 2 * DAY, 20 * DAY, 100 * DAY, 380 * DAY)  # how far behind its batch's clock a late event is
KINDS = ("view",) * 5 + ("page", "page", "email", "click", "signup", "newsletter") + ("add",) * 3 + (
    "remove", "remove") + ("order",) * 3 + ("no-id order", "reversal", "reversal", "no-id reversal", "resend",
    "identify", "identify", "alias", "group", "again", "again")
# Kinds that may arrive late (hours to a year behind their batch's clock). Cart events and anything with a context
# arrive within their batch's own interval: the fold goes in timestamp order within a batch, so for these the order
# they are folded in is their time order (a late context is ignored, a late add would outlive an earlier order).
LATE = {"view", "page", "email", "click", "signup", "newsletter", "order", "no-id order", "identify"}
ORDERS = {"order", "no-id order", "reversal", "no-id reversal", "resend"}  # sent without a context
COPYABLE = {"view", "page", "email", "click", "signup", "newsletter", "add", "remove", "no-id order", "identify",
            "alias", "group"}  # what may be sent to both customers (an order id would be refused the second time)
TRAITS = {KNOWN: ("plan", "email", "shared", "known_only"), ANON: ("plan", "email", "shared", "anon_only")}
TRACKED = {"view": "Product Viewed", "email": "Email Opened", "click": "Email Link Clicked", "signup": "Signed Up",
           "newsletter": "Newsletter Subscribed"}


@dataclass(frozen=True)
class Sent:
    """A message as one customer's stream carried it, in a batch."""

    side: str
    batch: int
    kind: str
    message: dict[str, Any]
    copy: bool = False  # this customer got another customer's message too

    @cached_property
    def event(self) -> Event:
        return normalise(self.message)

    @cached_property
    def for_oracle(self) -> Event:
        """The oracle folds both customers' messages into one profile, where a message both were sent would
        count once; the two profiles applied it once each, so the oracle's second copy has an id of its own."""
        if not self.copy:
            return self.event
        return normalise({**self.message, "messageId": f"{self.message['messageId']}#copy"})


@dataclass
class History:
    nows: list[int]  # each batch's clock
    sent: list[Sent]
    merge_at: int

    def batch(self, number: int, side: str | None = None) -> list[Event]:
        """A batch of one customer's stream; of both (as the oracle folds them) without a ``side``."""
        if side is not None:
            return [s.event for s in self.sent if s.batch == number and s.side == side]
        return [s.for_oracle for side in SIDES for s in self.sent if s.batch == number and s.side == side]

    def events(self, side: str) -> list[Event]:
        """Each message one customer was sent, once."""
        found: dict[str, Event] = {}
        for s in self.sent:
            if s.side == side:
                found.setdefault(s.event.message_id, s.event)
        return list(found.values())

    def every(self) -> list[Event]:
        return [s.event for s in self.sent]


@dataclass(frozen=True)
class Head:
    side: str
    at: int
    message_id: str


@dataclass
class _Order:
    order_id: str | None
    value: float
    batch: int
    reversed: bool = False


@dataclass
class _Builder:
    draw: st.DrawFn
    nows: list[int]
    used: set[int] = field(default_factory=set)  # every timestamp is unique: no tie leaves the fold's order open
    sent: list[Sent] = field(default_factory=list)
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    def moment(self, batch: int, late: bool) -> int:
        draw, now = self.draw, self.nows[batch]
        start = self.nows[batch - 1] if batch else now - GAPS[0]
        if late:
            at = now - draw(st.sampled_from(LATENESS)) - draw(st.integers(0, HOUR))
            while at in self.used:
                at -= 1
        else:
            at = draw(st.integers(start + 1, now))
            while at in self.used:
                at = at - 1 if at - 1 > start else now  # the interval is far wider than the events in it
        self.used.add(at)
        return at

    def stream(self, side: str) -> None:
        orders: list[_Order] = []
        own: list[Sent] = []
        size = self.draw(st.integers(0, 36))
        for batch in sorted(self.draw(st.lists(st.integers(0, len(self.nows) - 1), min_size=size, max_size=size))):
            own.append(self.make(side, batch, self.draw(st.sampled_from(KINDS)), orders, own))
        self.sent += own

    def make(self, side: str, batch: int, kind: str, orders: list[_Order], own: list[Sent]) -> Sent:
        draw = self.draw
        earlier = {"reversal": [o for o in orders if o.order_id and not o.reversed and o.batch < batch],
                   "no-id reversal": [o for o in orders if not o.order_id and not o.reversed and o.batch < batch],
                   "resend": [o for o in orders if o.order_id]}.get(kind)
        if kind == "again" and own:
            return Sent(side, batch, kind, draw(st.sampled_from(own)).message)  # redelivered
        if kind == "again" or earlier == []:
            kind = "view"
        late = kind in LATE and draw(st.integers(0, 3)) == 0
        at = self.moment(batch, late)
        number = next(self.numbers)
        context: dict[str, Any] = {"channel": draw(st.sampled_from(("web", "mobile", "server")))}
        if not late and kind not in ORDERS:
            context["campaign"] = draw(st.none() | st.integers(0, 9))
        head = Head(side, at, f"{side}-m{number}")
        if kind in ORDERS:
            body = self.order(head, kind, batch, number, orders, earlier or [])
        else:
            body = self.other(head, kind, context)
        return Sent(side, batch, kind, body)

    def order(self, head: Head, kind: str, batch: int, number: int, orders: list[_Order],
              earlier: list[_Order]) -> dict[str, Any]:
        draw, side, at, message_id = self.draw, head.side, head.at, head.message_id
        if kind in ("order", "no-id order"):
            value = draw(st.sampled_from((10.0, 49.99, 120.0, 400.0) if kind == "order" else (15.0, 99.5)))
            order_id = f"{side}-o{number}" if kind == "order" else None
            orders.append(_Order(order_id, value, batch))
            properties: dict[str, Any] = {"order_id": order_id} if order_id else {}
            return track(side, COMPLETED, at, message_id, **properties, revenue=value)
        target = draw(st.sampled_from(earlier))
        if kind == "resend":  # the same order under a new message id: refused
            return track(side, COMPLETED, at, message_id, order_id=target.order_id, revenue=target.value)
        # At most one reversal per order, for at most what is left of it: no revenue ever goes below 0.
        target.reversed = True
        name = draw(st.sampled_from((REFUNDED, CANCELLED)))
        if target.order_id is None:  # matches no order: only its amount comes off
            half = round(target.value / 2, 2)
            return track(side, name, at, message_id,
                         revenue=draw(st.sampled_from((target.value, half))) if name == REFUNDED else target.value)
        amounts = (None, target.value, round(target.value / 2, 2)) if name == REFUNDED else (None, target.value)
        amount = draw(st.sampled_from(amounts))
        properties = {"order_id": target.order_id} if amount is None else {"order_id": target.order_id,
                                                                           "revenue": amount}
        return track(side, name, at, message_id, **properties)

    def other(self, head: Head, kind: str, context: dict[str, Any]) -> dict[str, Any]:
        draw, side, at, message_id = self.draw, head.side, head.at, head.message_id
        if kind in TRACKED:
            product: dict[str, Any] = {"product_id": draw(st.sampled_from(PRODUCTS))} if kind == "view" else {}
            return track(side, TRACKED[kind], at, message_id, **context, **product)
        if kind == "add":
            return track(side, ADDED, at, message_id, **context, product_id=draw(st.sampled_from(PRODUCTS)),
                         price=draw(st.sampled_from((5.0, 25.0, 80.0))), quantity=draw(st.integers(1, 3)))
        if kind == "remove":
            return track(side, REMOVED, at, message_id, **context, product_id=draw(st.sampled_from(PRODUCTS)),
                         quantity=draw(st.integers(1, 2)))
        if kind == "identify":
            names = draw(st.lists(st.sampled_from(TRAITS[side]), min_size=1, unique=True))
            return message(side, "identify", at, message_id, **context,
                           traits={name: draw(st.sampled_from(("a", "b", "c"))) for name in names})
        if kind == "alias":
            return message(side, "alias", at, message_id, **context,
                           previousId=draw(st.sampled_from(("prev-0", "prev-1", "prev-2"))))
        if kind == "group":
            return message(side, "group", at, message_id, **context,
                           groupId=draw(st.sampled_from(("acme", "globex", "initech"))))
        return message(side, "page", at, message_id, **context, name="Home")

    def copies(self) -> None:
        """Some messages of each customer sent to the other as well, in the same batch."""
        for side, other in ((KNOWN, ANON), (ANON, KNOWN)):
            theirs = [s for s in self.sent if s.side == other and not s.copy and s.kind in COPYABLE]
            for pick in self.draw(st.lists(st.integers(0, 10**6), max_size=3)):
                if theirs:
                    original = theirs[pick % len(theirs)]
                    self.sent.append(Sent(side, original.batch, original.kind, original.message, copy=True))


@st.composite
def histories(draw: st.DrawFn) -> History:
    gaps = draw(st.lists(st.sampled_from(GAPS), min_size=1, max_size=6))
    nows = list(itertools.accumulate(gaps, initial=B))[1:]
    builder = _Builder(draw, nows)
    builder.stream(KNOWN)
    builder.stream(ANON)
    builder.copies()
    return History(nows, builder.sent, nows[-1] + draw(st.sampled_from((0, MIN, HOUR, DAY))))


# ---- when the aggregates cannot tell (decided from the events) ---------------------------------------------------


def order_ids(history: History) -> set[str]:
    return {e.order_id for side in SIDES for e in history.events(side) if e.name == COMPLETED and e.order_id}


def orders_exact(history: History) -> bool:
    """A reversal finds its order on its own profile, and on the oracle unless the oracle's recent-orders cap
    dropped it: exact when no reversal names an order, or when there are no more orders than the cap."""
    named = any(e.name in (REFUNDED, CANCELLED) and e.order_id for side in SIDES for e in history.events(side))
    return len(order_ids(history)) <= RECENT_ORDERS or not named


def latches_exact(history: History) -> bool:
    """No add to cart of one customer had a view of the other's in its 10-minute window (the ``when`` of
    high-intent-abandoners): each latch was then judged on the same views on its own profile as on the oracle."""
    def minutes(side: str, name: str) -> list[int]:
        return [int(e.timestamp) // MIN for e in history.events(side) if e.name == name]
    for side, other in ((KNOWN, ANON), (ANON, KNOWN)):
        views = minutes(other, "Product Viewed")
        if any(0 <= add - view <= 9 for add in minutes(side, ADDED) for view in views):
            return False
    return True


def exact_cart_products(history: History, known: Profile, anonymous: Profile) -> set[str]:
    """The products whose cart line the merge knows exactly: touched by one customer only, or by both without a
    removal; and not added by a customer both before and after the other's last order (which clears the line)."""
    last_order = {KNOWN: known.last_order, ANON: anonymous.last_order}
    exact = set()
    for product in PRODUCTS:
        lines = {side: [(int(e.timestamp), e.name) for e in history.events(side)
                        if e.product_id == product and e.name in (ADDED, REMOVED)] for side in SIDES}
        if all(lines.values()) and any(name == REMOVED for side in SIDES for _, name in lines[side]):
            continue
        straddles = False
        for side, other in ((KNOWN, ANON), (ANON, KNOWN)):
            cleared, adds = last_order[other], [at for at, name in lines[side] if name == ADDED]
            if cleared is not None and any(at <= cleared for at in adds) and any(at > cleared for at in adds):
                straddles = True
        if not straddles:
            exact.add(product)
    return exact


# ---- the property -------------------------------------------------------------------------------------------------


def fold_history(history: History) -> tuple[Profile, Profile, Profile]:
    known, anonymous, oracle = Profile(KNOWN), Profile(ANON), Profile(KNOWN)
    for number, now in enumerate(history.nows):
        for profile, batch in ((known, history.batch(number, KNOWN)), (anonymous, history.batch(number, ANON)),
                               (oracle, history.batch(number))):
            if batch:
                outcome = ENGINE.apply(profile, batch, now)
                assert {reason for _, reason in outcome.rejected} <= {REFUSED}
    return known, anonymous, oracle


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories())
def test_merging_two_folded_profiles_is_folding_both_histories_into_one(history: History) -> None:
    known, anonymous, oracle = fold_history(history)
    inputs = repr(known.to_item()), repr(anonymous.to_item())
    now = history.merge_at

    merged = merge(known, anonymous, now)

    assert (repr(known.to_item()), repr(anonymous.to_item())) == inputs  # neither input changed
    # the profiles as the store reads them (fields decoded on first use, counters and ids packed): the same merge
    stored = merge(decode_profile(encode_profile(known)), decode_profile(encode_profile(anonymous)), now)
    assert repr(stored.to_item()) == repr(merged.to_item())
    assert_round_trips(merged)

    assert (merged.created_at, merged.updated_at) == (oracle.created_at, oracle.updated_at)
    assert merged.channels == oracle.channels
    assert_same_counters(merged, oracle, now)
    for key in set(known.counter_keys()) & set(anonymous.counter_keys()):  # added up, then bounded at now
        for code, buckets in counter(merged, key).buckets.items():
            assert all(index > now // TIER_BY_CODE[code].size - TIER_BY_CODE[code].keep for index in buckets)
    assert_same_dedupe(history, merged, oracle)
    assert_orders(history, known, anonymous, merged, oracle)
    assert_cart(history, known, anonymous, merged, oracle)
    assert_context(history, known, anonymous, merged, oracle)
    assert merged.traits == {**{n: v for n, v in anonymous.traits.items() if n not in known.traits}, **known.traits}
    assert_latches(history, known, anonymous, merged, oracle)
    assert set(merged.aliases) == {*oracle.aliases, ANON} and merged.aliases[-1] == ANON
    assert set(merged.groups) == set(oracle.groups)
    assert (merged.memberships, merged.catalogue, merged.transitions) == (known.memberships, "", [])
    assert_evaluated_alike(history, merged, oracle, now)
    assert_redelivery_is_a_duplicate(history, merged, now)


def assert_round_trips(profile: Profile) -> None:
    item = profile.to_item()
    assert repr(Profile.from_item(item).to_item()) == repr(item)
    wire = encode_profile(profile)
    assert repr(wire) == repr(serialise_item(item))
    assert repr(decode_profile(wire).to_item()) == repr(item)


def counter_state(profile: Profile, key: str, now: int) -> dict[str, Any]:
    """A counter's lifetime figures, its buckets once pruned at ``now``, and its windows at moments from then on."""
    found = counter(profile, key)
    pruned = Counter.decode(found.encode())
    pruned.prune(now)
    windows = {(code, n, at): found.window(TIER_BY_CODE[code], n * TIER_BY_CODE[code].size, at)
               for code in found.buckets for n in (1, 2, 10, TIER_BY_CODE[code].keep)
               for at in (now, now + 30 * MIN, now + DAY, now + 10 * DAY, now + 100 * DAY)}
    return {"lifetime": (found.count, found.total, found.first, found.last, found.has_sum),
            "buckets": pruned.buckets, "windows": windows}


def assert_same_counters(merged: Profile, oracle: Profile, now: int) -> None:
    assert sorted(merged.counter_keys()) == sorted(oracle.counter_keys())
    for key in oracle.counter_keys():
        assert counter_state(merged, key, now) == counter_state(oracle, key, now), key


def assert_same_dedupe(history: History, merged: Profile, oracle: Profile) -> None:
    """Every message id, with the time it was applied; every order id (the oracle's second copies aside)."""
    copies = {message_digest(f"{s.message['messageId']}#copy") for s in history.sent if s.copy}
    assert ids_of(merged) == {d: at for d, at in ids_of(oracle).items() if d not in copies}
    for s in history.sent:
        assert merged.seen(s.event.message_id) == oracle.seen(s.event.message_id)
        if s.event.order_id:
            assert merged.order_completed(s.event.order_id) == oracle.order_completed(s.event.order_id)


def assert_orders(history: History, known: Profile, anonymous: Profile, merged: Profile, oracle: Profile) -> None:
    figures = (merged.orders, merged.revenue, merged.first_order, merged.last_order)
    assert figures[:2] == (known.orders + anonymous.orders, known.revenue + anonymous.revenue)
    if orders_exact(history):
        assert figures == (oracle.orders, oracle.revenue, oracle.first_order, oracle.last_order)
    if len(order_ids(history)) <= RECENT_ORDERS:  # no cap dropped any, on either side or the oracle
        assert sorted(merged.recent_orders) == sorted(oracle.recent_orders)
    elif known.recent_orders and anonymous.recent_orders:  # the newest by time (the oracle kept the last folded)
        recent = sorted([*known.recent_orders, *anonymous.recent_orders], key=lambda order: int(order[1]))
        assert merged.recent_orders == recent[-RECENT_ORDERS:]
    else:
        assert merged.recent_orders == known.recent_orders + anonymous.recent_orders
    assert all(merged.order_completed(order[0]) for order in merged.recent_orders)


def assert_cart(history: History, known: Profile, anonymous: Profile, merged: Profile, oracle: Profile) -> None:
    for product in exact_cart_products(history, known, anonymous):
        assert merged.cart.get(product) == oracle.cart.get(product), product
    assert set(merged.cart) <= set(known.cart) | set(anonymous.cart)
    assert merged.last_add == oracle.last_add


def first_touch(profile: Profile) -> dict[str, Any]:
    return {key: profile.context.get(key) for key in FIRST_TOUCH}


def assert_context(history: History, known: Profile, anonymous: Profile, merged: Profile, oracle: Profile) -> None:
    for key in (*LAST_TOUCH, "at"):  # every context here is a full one, so the later side's is exact
        assert merged.context.get(key) == oracle.context.get(key), key
    assert merged.context.get("traits_ms") == known.context.get("traits_ms", anonymous.context.get("traits_ms"))
    campaigns = {side: [e.timestamp for e in history.events(side) if e.context is not EMPTY_CONTEXT] for side in SIDES}
    if not campaigns[KNOWN] or not campaigns[ANON]:
        assert first_touch(merged) == first_touch(oracle)
        return
    # the rule: the side whose earliest event is earlier; exact when that is also the side of the first campaign
    chosen = anonymous if earliest_event(anonymous) < earliest_event(known) else known
    assert first_touch(merged) == first_touch(chosen)
    first = anonymous if min(campaigns[ANON]) < min(campaigns[KNOWN]) else known
    if first is chosen:
        assert first_touch(merged) == first_touch(oracle)


def assert_latches(history: History, known: Profile, anonymous: Profile, merged: Profile, oracle: Profile) -> None:
    keys = known.latches.keys() | anonymous.latches.keys()
    assert merged.latches == {key: max(side.latches.get(key, 0) for side in (known, anonymous)) for key in keys}
    if latches_exact(history):
        assert merged.latches == oracle.latches
    else:  # the other customer's views can only have qualified more adds
        assert all(at <= oracle.latches.get(key, -1) for key, at in merged.latches.items())


def assert_evaluated_alike(history: History, merged: Profile, oracle: Profile, now: int) -> None:
    """Evaluated in full (the merge left no catalogue fingerprint), the merged profile is in the oracle's
    segments, with its deadlines, wherever what the segments read is exact."""
    ENGINE.evaluate(merged, now)
    ENGINE.evaluate(oracle, now, None)
    assert merged.catalogue == CATALOGUE.fingerprint
    if orders_exact(history) and latches_exact(history):
        assert set(merged.memberships) == set(oracle.memberships)
        assert merged.deadlines == oracle.deadlines


def assert_redelivery_is_a_duplicate(history: History, merged: Profile, now: int) -> None:
    before = comparable(merged)
    outcome = ENGINE.apply(merged, history.every(), now)
    assert outcome.applied == 0
    assert {reason for _, reason in outcome.rejected} <= {REFUSED}
    assert comparable(merged) == before


# ---- idempotence: what an empty side changes -----------------------------------------------------------------------


def shopper(customer: str, start: int) -> Profile:
    """A profile with a bit of everything: views, a cart, orders (one partly refunded), traits, a campaign, an
    alias and a group."""
    return folded(customer, (start + HOUR, [
        track(customer, "Product Viewed", start + n * MIN, channel="web", product_id="sku-1") for n in range(4)] + [
        track(customer, ADDED, start + 5 * MIN, channel="web", campaign=3, product_id="sku-1", price=25.0),
        track(customer, COMPLETED, start + 10 * MIN, order_id=f"{customer}-o1", revenue=50.0),
        track(customer, ADDED, start + 20 * MIN, channel="mobile", product_id="sku-2", price=5.0, quantity=2),
        message(customer, "identify", start + 30 * MIN, traits={"plan": "pro", "email": f"{customer}@example.com"}),
        message(customer, "alias", start + 31 * MIN, previousId=f"{customer}-old"),
        message(customer, "group", start + 32 * MIN, groupId="acme"),
        track(customer, "Email Opened", start + 40 * MIN, email_id="e-1")]),
        (start + DAY, [track(customer, COMPLETED, start + 2 * HOUR, order_id=f"{customer}-o2", revenue=80.0),
                       track(customer, REFUNDED, start + 3 * HOUR, order_id=f"{customer}-o1", revenue=20.0),
                       track(customer, COMPLETED, start + 4 * HOUR, revenue=15.0)]))


@pytest.mark.parametrize("later", [0, DAY, 30 * DAY, 400 * DAY])
def test_merging_an_empty_anonymous_profile_changes_nothing_but_the_alias(later: int) -> None:
    known = shopper(KNOWN, B)
    now = B + DAY + later
    ENGINE.evaluate(known, now, None)
    item = known.to_item()

    merged = merge(known, Profile(ANON), now)

    assert {k: v for k, v in merged.to_item().items() if k not in ("al", "cv", "tx")} == {
        k: v for k, v in item.items() if k not in ("al", "cv", "tx")}
    assert merged.aliases == [*known.aliases, ANON]
    assert ENGINE.evaluate(merged, now) == []  # evaluated in full: no segment changes
    assert (merged.memberships, merged.deadlines) == (known.memberships, known.deadlines)


def test_merging_into_an_empty_known_profile_gives_the_anonymous_aggregates() -> None:
    anonymous = shopper(ANON, B)
    now = B + DAY

    merged = merge(Profile(KNOWN), anonymous, now)

    expected = {k: v for k, v in comparable(anonymous).items() if k not in ("customer_id", "al")}
    assert {k: v for k, v in comparable(merged).items() if k not in ("customer_id", "al")} == expected
    assert merged.customer_id == KNOWN and merged.aliases == [*anonymous.aliases, ANON]
    assert merged.memberships == {} and merged.catalogue == ""


def test_the_next_fold_evaluates_the_merged_profile_in_full() -> None:
    # The anonymous visitor viewed 6 products in the last hour: an engaged browser. The known customer did not.
    anonymous = folded(ANON, (B + HOUR, [track(ANON, "Product Viewed", B + n * MIN, channel="web",
                                                product_id="sku-1") for n in range(6)]))
    known = folded(KNOWN, (B + HOUR, [message(KNOWN, "identify", B + HOUR - MIN, traits={"plan": "pro"})]))
    assert "engaged-browsers" in anonymous.memberships and "engaged-browsers" not in known.memberships

    merged = merge(known, anonymous, B + HOUR + MIN)
    outcome = ENGINE.apply(merged, events(message(KNOWN, "page", B + HOUR + MIN, name="Home")), B + HOUR + MIN)

    assert ("engaged-browsers", ENTERED) in {(t.segment_id, t.kind) for t in outcome.transitions}
    assert merged.catalogue == CATALOGUE.fingerprint


def test_a_profile_is_not_merged_into_itself() -> None:
    with pytest.raises(ValueError, match="itself"):
        merge(Profile(KNOWN), Profile(KNOWN), B)


# ---- what the aggregates cannot tell (documented) -------------------------------------------------------------


def test_a_message_applied_to_both_profiles_counts_twice_and_never_again() -> None:
    view = track(KNOWN, "Product Viewed", B, "m-both", product_id="sku-1")
    known = folded(KNOWN, (B + MIN, [view]))
    anonymous = folded(ANON, (B + MIN, [{**view, "userId": None, "anonymousId": ANON}]))

    merged = merge(known, anonymous, B + MIN)

    assert counter(merged, "Product Viewed").count == 2  # each profile applied it: no aggregate says so
    assert ENGINE.apply(merged, events(view), B + 2 * MIN).duplicates == 1  # but it is known from now on
    assert counter(merged, "Product Viewed").count == 2


def test_an_order_completed_on_both_profiles_counts_twice_and_is_refused_from_then_on() -> None:
    # e.g. a browser and a back end both reported it, under the two ids
    known = folded(KNOWN, (B + MIN, [track(KNOWN, COMPLETED, B, order_id="o-1", revenue=100.0)]))
    anonymous = folded(ANON, (B + MIN, [track(ANON, COMPLETED, B + 1, order_id="o-1", revenue=100.0)]))

    merged = merge(known, anonymous, B + MIN)

    assert (merged.orders, merged.revenue) == (2, 20000)
    assert merged.recent_orders == [["o-1", B, 10000]]  # one entry: the known side's
    outcome = ENGINE.apply(merged, events(track(KNOWN, COMPLETED, B + 2, order_id="o-1", revenue=100.0)), B + HOUR)
    assert [reason for _, reason in outcome.rejected] == [REFUSED]


def test_a_refund_of_the_other_customers_order_did_not_find_it_but_the_next_one_does() -> None:
    known = folded(KNOWN, (B + MIN, [track(KNOWN, COMPLETED, B, order_id="o-1", revenue=100.0)]))
    anonymous = folded(ANON, (B + HOUR, [track(ANON, REFUNDED, B + 30 * MIN, order_id="o-1")]))  # no amount: unknown
    assert (anonymous.orders, anonymous.revenue) == (0, 0)

    merged = merge(known, anonymous, B + HOUR)

    assert (merged.orders, merged.revenue) == (1, 10000)  # folded together, the refund would have removed it
    ENGINE.apply(merged, events(track(KNOWN, REFUNDED, B + 2 * HOUR, order_id="o-1")), B + 2 * HOUR)
    assert (merged.orders, merged.revenue) == (0, 0)  # the merged profile knows the order


def test_a_removal_from_the_other_customers_cart_removed_nothing() -> None:
    known = folded(KNOWN, (B + MIN, [track(KNOWN, ADDED, B, product_id="sku-1", price=10.0, quantity=2)]))
    anonymous = folded(ANON, (B + HOUR, [track(ANON, REMOVED, B + 30 * MIN, product_id="sku-1")]))

    assert merge(known, anonymous, B + HOUR).cart == {"sku-1": [2, 1000, B]}  # folded together: 1


def test_an_order_clears_the_other_customers_cart_up_to_its_time() -> None:
    known = folded(KNOWN, (B + HOUR, [track(KNOWN, ADDED, B, product_id="sku-1", price=10.0),
                                      track(KNOWN, ADDED, B + 40 * MIN, product_id="sku-2", price=20.0)]))
    anonymous = folded(ANON, (B + HOUR, [track(ANON, COMPLETED, B + 30 * MIN, revenue=10.0),
                                         track(ANON, ADDED, B + 50 * MIN, product_id="sku-2", price=30.0)]))

    merged = merge(known, anonymous, B + HOUR)

    assert merged.cart == {"sku-2": [2, 3000, B + 50 * MIN]}  # sku-1 was added before the order; the later price
    assert merged.last_add == ["sku-2", B + 50 * MIN]


def test_a_latch_is_judged_on_its_own_profile() -> None:
    # Three views as the visitor, then the add to cart once signed in: folded together, a high-intent add.
    anonymous = folded(ANON, (B + 10 * MIN, [track(ANON, "Product Viewed", B + n * MIN, product_id="sku-1")
                                            for n in range(3)]))
    known = folded(KNOWN, (B + 10 * MIN, [track(KNOWN, ADDED, B + 4 * MIN, product_id="sku-1", price=10.0)]))
    together = folded(KNOWN, (B + 10 * MIN, [track(ANON, "Product Viewed", B + n * MIN, product_id="sku-1")
                                            for n in range(3)] + [
        track(KNOWN, ADDED, B + 4 * MIN, product_id="sku-1", price=10.0)]))

    merged = merge(known, anonymous, B + 10 * MIN)

    assert together.latches == {"high-intent-abandoners:condition.absence": B + 4 * MIN}
    assert merged.latches == {}


def test_first_touch_is_the_side_with_the_earlier_first_event() -> None:
    anonymous = folded(ANON, (B + DAY, [track(ANON, "Product Viewed", B, product_id="sku-1"),  # no campaign
                                        track(ANON, "Product Viewed", B + 5 * HOUR, campaign=2, product_id="sku-1")]))
    known = folded(KNOWN, (B + DAY, [track(KNOWN, "Product Viewed", B + HOUR, campaign=1, product_id="sku-1")]))

    merged = merge(known, anonymous, B + DAY)

    assert first_touch(merged) == first_touch(anonymous) == {
        "first_utm_source": "source-2", "first_utm_medium": "cpc", "first_utm_campaign": "campaign-2"}
    # (folded together, the first campaign is the known side's, an hour earlier: the profile keeps no time for it)
    assert merged.context["utm_source"] == "source-2" and merged.context["at"] == B + 5 * HOUR  # last touch


def test_last_touch_takes_the_later_side_and_fills_in_from_the_other() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    known.context = {"device": "ios", "city": "Berlin", "at": B + HOUR, "traits_ms": 5, "kept": 1}
    anonymous.context = {"device": "desktop", "os": "macOS", "at": B + 2 * HOUR, "traits_ms": 9, "extra": 2}

    assert merge(known, anonymous, B + DAY).context == {
        "extra": 2, "kept": 1, "device": "desktop", "os": "macOS", "city": "Berlin", "at": B + 2 * HOUR,
        "traits_ms": 5}


# ---- the caps, each at its limit ----------------------------------------------------------------------------------


def test_recent_orders_keep_the_newest_by_time_and_every_digest() -> None:
    known = folded(KNOWN, *[(B + n * DAY + MIN, [track(KNOWN, COMPLETED, B + n * DAY, order_id=f"k-{n}",
                                                       revenue=10.0)]) for n in range(0, 12, 2)])
    anonymous = folded(ANON, *[(B + n * DAY + MIN, [track(ANON, COMPLETED, B + n * DAY, order_id=f"a-{n}",
                                                          revenue=20.0)]) for n in range(1, 12, 2)])

    merged = merge(known, anonymous, B + 12 * DAY)

    assert [order[0] for order in merged.recent_orders] == ["k-4", "a-5", "k-6", "a-7", "k-8", "a-9", "k-10", "a-11"]
    assert all(merged.order_completed(f"{side}-{n}") for side in "ka" for n in range(12) if (n % 2) == (side == "a"))
    assert (merged.orders, merged.revenue, merged.first_order, merged.last_order) == (12, 18000, B, B + 11 * DAY)
    ENGINE.apply(merged, events(track(KNOWN, CANCELLED, B + 13 * DAY, order_id="a-5")), B + 13 * DAY)
    assert (merged.orders, merged.revenue) == (11, 16000)  # an absorbed order is found by a refund


def test_order_digests_keep_the_newer_sides_and_the_cap() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    for n in range(400):
        known.remember_order(f"k-{n}")
        anonymous.remember_order(f"a-{n}")
    known.last_order, anonymous.last_order = B + DAY, B  # the anonymous orders are the older ones
    known.recent_orders = [["k-399", B + DAY, 100]]
    anonymous.recent_orders = [["a-0", B - DAY, 100]]  # kept among the recent orders, so kept among the digests

    merged = merge(known, anonymous, B + DAY)

    digests = unpack_order_digests(merged.packed_order_digests(), ())
    assert len(digests) == MAX_ORDER_DIGESTS
    assert all(merged.order_completed(f"k-{n}") for n in range(400))
    assert [merged.order_completed(f"a-{n}") for n in (0, 1, 300, 301, 399)] == [True, False, False, True, True]
    assert list(digests)[-1] == message_digest("a-0")


def test_message_ids_keep_what_prune_dedupe_keeps() -> None:
    known, anonymous, single = Profile(KNOWN), Profile(ANON), Profile("single")
    for n in range(700):  # interleaved in time; one id applied on both sides
        known.remember(f"k-{n}", B + 2 * n)
        anonymous.remember(f"a-{n}", B + 2 * n + 1)
    anonymous.remember("k-5", B + 2_000)
    for n in range(700):
        single.remember(f"k-{n}", B + 2 * n)
        single.remember(f"a-{n}", B + 2 * n + 1)
    single.remember("k-5", B + 2_000)  # the later time

    # within the horizon the id cap; past it, what is younger than the horizon; long after, the newest 100
    for now, kept in ((B + DAY, MAX_MESSAGE_IDS), (B + DEDUPE_HORIZON + 1_000, 401), (B + 400 * DAY, MIN_MESSAGE_IDS)):
        merged = merge(known, anonymous, now)
        expected = Profile.from_item(single.to_item())
        expected.prune_dedupe(now)
        assert ids_of(merged) == ids_of(expected) and merged.message_ids == kept
        assert merged.seen("k-5") and merged.seen("a-699")


def test_the_cart_keeps_the_last_added_items() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    known.cart = {f"k-{n}": [1, 100, B + 2 * n] for n in range(30)}
    anonymous.cart = {f"a-{n}": [2, 200, B + 2 * n + 1] for n in range(30)}
    anonymous.cart["k-29"] = [3, 300, B + 100]  # on both sides: quantities add, the later price

    merged = merge(known, anonymous, B + DAY)

    assert len(merged.cart) == MAX_CART_ITEMS
    assert merged.cart["k-29"] == [4, 300, B + 100]
    assert set(merged.cart) == {f"k-{n}" for n in range(5, 30)} | {f"a-{n}" for n in range(5, 30)}


def test_counters_add_and_plain_counters_keep_the_most_recent() -> None:
    known = folded(KNOWN, (B + DAY, [track(KNOWN, f"Known {n}", B + n * MIN) for n in range(30)] + [
        track(KNOWN, ADDED, B, product_id="sku-1", price=1.0),  # a counter a segment reads, the least recent
        track(KNOWN, "Product Viewed", B + HOUR, product_id="sku-1")]))
    anonymous = folded(ANON, (B + DAY, [track(ANON, f"Anonymous {n}", B + 30 * MIN + n * MIN) for n in range(30)] + [
        track(ANON, "Product Viewed", B + HOUR + 30, product_id="sku-1"),
        track(ANON, "Product Viewed", B + 20 * DAY - 400 * DAY, product_id="sku-1")]))  # before every bucket kept
    anonymous.counter_for_update("Order Completed|gone", ("d",), False).add(B, 0, B)  # read by no segment now

    merged = merge(known, anonymous, B + DAY)

    plain = [key for key in merged.counter_keys() if key not in CATALOGUE.metrics]
    assert sorted(plain) == sorted([f"Known {n}" for n in range(20, 30)] + [f"Anonymous {n}" for n in range(30)])
    assert len(plain) == MAX_PLAIN_COUNTERS and ADDED in merged.counter_keys()
    assert "Order Completed|gone" not in merged.counter_keys()
    views = counter(merged, "Product Viewed")
    assert (views.count, views.first, views.last) == (3, B + 20 * DAY - 400 * DAY, B + HOUR + 30)
    assert views.window(TIER_BY_CODE["h"], 2 * HOUR, B + HOUR + MIN) == (2, 0)
    assert views.window(TIER_BY_CODE["d"], 35 * DAY, B + DAY) == (2, 0)
    later = merge(known, anonymous, B + 40 * DAY)  # an added counter is pruned at the merge's clock
    assert counter(later, "Product Viewed").buckets == {"d": {}, "h": {}, "m": {}}
    assert counter(later, "Product Viewed").count == 3
    assert counter(later, ADDED).encode() == counter(known, ADDED).encode()  # one side's: kept as stored


def test_traits_keep_the_known_customers_and_fill_in_to_the_cap() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    known.traits = {f"k{n}": n for n in range(40)}
    anonymous.traits = {**{f"k{n}": -n for n in range(30, 40)}, **{f"a{n}": n for n in range(40)}}

    merged = merge(known, anonymous, B)

    assert len(merged.traits) == MAX_TRAITS
    assert merged.traits == {**known.traits, **{f"a{n}": n for n in range(24)}}


def test_aliases_and_groups_keep_the_newest_and_the_absorbed_id_last() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    known.aliases = [f"k-{n}" for n in range(7)] + [ANON]
    anonymous.aliases = ["a-0", "k-6", KNOWN, "a-1"]
    known.groups = [f"g-{n}" for n in range(6)]
    anonymous.groups = ["g-0", "h-0", "h-1", "h-2"]

    merged = merge(known, anonymous, B)

    assert merged.aliases == [*[f"k-{n}" for n in range(7)], "a-0", "a-1", ANON][-MAX_ALIASES:]
    assert merged.groups == [*[f"g-{n}" for n in range(6)], "h-0", "h-1", "h-2"][-MAX_GROUPS:]


def test_revenue_is_capped_as_the_fold_caps_it() -> None:
    known, anonymous = Profile(KNOWN), Profile(ANON)
    known.orders = anonymous.orders = 1
    known.revenue = anonymous.revenue = MAX_LIFETIME_REVENUE - 1
    assert merge(known, anonymous, B).revenue == MAX_LIFETIME_REVENUE


# ---- the accessors the merge uses ---------------------------------------------------------------------------------

entries = st.lists(st.tuples(st.integers(0, 400 * DAY), st.integers(-(10**6), 10**6), st.booleans()), max_size=40)
tier_codes = st.lists(st.sampled_from("mhdw"), unique=True)


@settings(max_examples=300, deadline=None)
@given(entries, tier_codes, tier_codes, st.booleans(), st.booleans(), st.integers(0, 400 * DAY))
def test_a_counter_absorbing_another_counts_every_event_of_both(events: list[tuple[int, int, bool]], mine: list[str],
                                                                theirs: list[str], my_sum: bool, their_sum: bool,
                                                                clock: int) -> None:
    now = B + clock
    sides = {False: Counter(tuple(mine), my_sum), True: Counter(tuple(theirs), their_sum)}
    sums, tiers = {False: my_sum, True: their_sum}, {False: set(mine), True: set(theirs)}
    # each tier holds the events of the counters that keep it (there is no backfill)
    expected = {code: Counter((code,), True) for code in {*mine, *theirs}}
    for offset, value, to_other in events:
        value = value if sums[to_other] else 0  # a counter without a sum is fed none
        sides[to_other].add(B + offset, value, now)
        for code in tiers[to_other]:
            expected[code].add(B + offset, value, now)
    one, other = sides[False], sides[True]
    before = other.encode()

    one.absorb(other)

    assert other.encode() == before
    total = sum(value for _, value, to_other in events if sums[to_other])
    assert (one.count, one.total, one.has_sum) == (len(events), total, my_sum or their_sum)
    if events:
        assert (one.first, one.last) == (B + min(e[0] for e in events), B + max(e[0] for e in events))
    assert one.buckets == {code: expected[code].buckets[code] for code in expected}
    assert all(list(buckets) == sorted(buckets) for buckets in one.buckets.values())
    decoded = Counter.decode(one.encode())
    assert (decoded.count, decoded.total, decoded.first, decoded.last) == (one.count, one.total, one.first, one.last)
    assert {code: {i: b[0] for i, b in buckets.items()} for code, buckets in decoded.buckets.items()} == {
        code: {i: b[0] for i, b in buckets.items()} for code, buckets in one.buckets.items()}
    if one.has_sum:
        assert decoded.buckets == one.buckets


def test_message_ids_pack_and_unpack() -> None:
    ids = {message_digest(f"m-{n}"): B + n for n in range(5)}
    assert unpack_message_ids(pack_message_ids(ids)) == ids
    assert list(unpack_message_ids(pack_message_ids(ids))) == list(ids)
    assert pack_message_ids({}) == b""


def test_keeping_order_digests_keeps_the_last_ones() -> None:
    profile = Profile(KNOWN)
    profile.keep_order_digests([message_digest(f"o-{n}") for n in range(MAX_ORDER_DIGESTS + 2)] + [
        message_digest("o-5")])
    assert not profile.order_completed("o-0") and not profile.order_completed("o-1")
    assert profile.order_completed("o-2") and profile.order_completed(f"o-{MAX_ORDER_DIGESTS + 1}")
    assert len(profile.packed_order_digests()) == MAX_ORDER_DIGESTS * 8


# ---- bytes after 100 merges ---------------------------------------------------------------------------------------

LONGEST = 40  # the longest id, trait, product or event name the test below sends (asserted there)


def visitor(n: int, now: int) -> Profile:
    """A small anonymous profile, each with new traits, an event name, an alias and a group, and two new orders
    (the first 40) or a new cart item (the others: an order clears the cart added before it)."""
    name = f"anon-{n:03d}"
    return folded(name, (now, [
        message(name, "identify", now - 9 * MIN, channel="web", campaign=n % 10,
                traits={f"trait-{n:03d}-a": "x" * 20, f"trait-{n:03d}-b": n}),
        track(name, "Product Viewed", now - 8 * MIN, channel="web", product_id=f"sku-{n % 7}"),
        *([track(name, COMPLETED, now - 7 * MIN, order_id=f"order-{n:03d}", revenue=30.0),
           track(name, COMPLETED, now - 6 * MIN, revenue=4.0)] if n < 40 else  # the first 40 order, the others
          [track(name, ADDED, now - 5 * MIN, channel="mobile", product_id=f"product-{n:03d}", price=12.5)]),  # add
        track(name, f"Custom event {n:03d}", now - 4 * MIN),
        message(name, "page", now - 3 * MIN, channel="web", name="Home"),
        track(name, "Email Opened", now - 2 * MIN, email_id="e-1"),
        track(name, "Email Link Clicked", now - MIN, email_id="e-1"),
        message(name, "alias", now - 50, previousId=f"previous-{n:03d}"),
        message(name, "group", now - 40, groupId=f"group-{n:03d}"),
        track(name, "Signed Up", now - 30)]))


def caps_bound() -> int:
    """The largest item the caps allow, for ids and names of at most ``LONGEST`` characters and trait values of at
    most 20: every collection full, each entry as large as it can be, every number at its widest.

    Counters: each varint of the encoding is at most 5 bytes (every count, time, index and delta is below 2**35),
    a tier keeps ``keep`` buckets plus those a clock skew puts ahead of the clock, a plain counter none. A
    transition's reason is the longest description of any condition of the catalogue, or an outranking.
    """
    word, wide, varint = "w" * LONGEST, 2**40, b"\xff" * 5

    def packed(tiers: tuple[str, ...], has_sum: bool) -> bytes:
        buckets = sum(TIER_BY_CODE[code].keep + MAX_CLOCK_SKEW // TIER_BY_CODE[code].size + 1 for code in tiers)
        return varint * (6 + 2 * len(tiers) + buckets * (3 if has_sum else 2))

    counters = {key: packed(tuple(metric.tiers), metric.sum_property is not None)
                for key, metric in CATALOGUE.metrics.items()}
    counters |= {f"{word}{n:02d}": packed((), False) for n in range(MAX_PLAIN_COUNTERS)}
    segments = CATALOGUE.segments
    reasons = [f"no longer: {node.describe()}" for s in segments.values() for node in s.condition.walk()]
    reasons += [f"{winner} takes precedence in exclusive group {word} (priority {wide})" for winner in segments]
    reason, clause = max(reasons, key=len), max((node.path for s in segments.values()
                                                 for node in s.condition.walk()), key=len)
    worst = {
        "customer_id": KNOWN, "v": wide, "ca": wide, "ua": wide,
        "t": {f"{word}{n:02d}": "x" * 20 for n in range(MAX_TRAITS)},
        "ch": dict.fromkeys(CHANNELS, wide), "c": counters,
        "o": [wide, MAX_LIFETIME_REVENUE, wide, wide],
        "ro": [[word, wide, wide] for _ in range(RECENT_ORDERS)],
        "cart": {f"{word}{n:02d}": [wide, wide, wide] for n in range(MAX_CART_ITEMS)}, "la": [word, wide],
        "cx": {**{key: "x" * MAX_LABEL_LENGTH for key in (*LAST_TOUCH, *FIRST_TOUCH)}, "at": wide, "traits_ms": wide},
        "mi": b"x" * 12 * MAX_MESSAGE_IDS, "od": b"x" * 8 * MAX_ORDER_DIGESTS,
        "sq": {f"shardId-{n:012d}": ["9" * 56, wide] for n in range(MAX_SHARD_MARKS)},
        "m": dict.fromkeys(segments, wide), "dl": dict.fromkeys(segments, wide), "nd": wide, "ds": "00",
        "lt": dict.fromkeys(CATALOGUE.latch_keys, wide), "cv": CATALOGUE.fingerprint,
        "tx": [[segment, "entered", wide, clause, reason] for segment in segments],
        "al": [word] * MAX_ALIASES, "gr": [word] * MAX_GROUPS, "cs": _widest_consent(),
    }
    return item_size(worst)


def _widest_consent() -> dict[str, Any]:
    """Consent at its caps: every preference set and each history entry with the most categories of the longest
    names, message ids of the longest, times with a fraction."""
    categories = {f"{n:02d}".rjust(MAX_CATEGORY_CHARS, "c"): True for n in range(MAX_CATEGORIES)}
    moment, message_id = 2.0**40 + 0.001, "m" * MAX_ID_LENGTH
    history = [[moment, "server", message_id, categories] for _ in range(MAX_CONSENT_HISTORY)]
    return ConsentState(categories, moment, "server", message_id, moment, "unsubscribed", history).as_item()


def test_a_hundred_merges_stay_within_the_bound_of_the_caps() -> None:
    known = shopper(KNOWN, B)
    for n in range(100):
        now = B + DAY + (n + 1) * HOUR  # every message id within the horizon: over 1,100 of them
        anonymous = visitor(n, now)
        known = merge(known, anonymous, now)
        ENGINE.evaluate(known, now)
    item = known.to_item()

    plain = [key for key in known.counter_keys() if key not in CATALOGUE.metrics]
    assert (len(known.traits), len(known.cart), len(known.recent_orders), len(plain)) == (
        MAX_TRAITS, MAX_CART_ITEMS, RECENT_ORDERS, MAX_PLAIN_COUNTERS)  # every cap reached
    assert (len(known.aliases), len(known.groups), known.message_ids) == (MAX_ALIASES, MAX_GROUPS, MAX_MESSAGE_IDS)
    assert max(len(text) for text in [*known.traits, *known.cart, *plain, *known.aliases, *known.groups,
                                      *(order[0] for order in known.recent_orders)]) <= LONGEST
    assert known.orders == 2 * 40 + 3 and known.aliases[-1] == "anon-099"
    bound = caps_bound()
    # Well inside DynamoDB's 400 KB, and a bound of the caps alone (consent at its caps is over half of it).
    assert item_size(item) <= bound < 96 * 1024
    assert_round_trips(known)

