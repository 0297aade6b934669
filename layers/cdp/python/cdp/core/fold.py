"""The profile fold: one customer's events, applied to their profile in event-time order.

:func:`fold` takes a batch of one customer's events: it skips the ones already applied,
refuses those stamped too far ahead of the clock, folds each of the others with
:func:`fold_event`, and then bounds the profile to what the catalogue reads. Folding
updates the traits, the lifetime order figures, the counters, the channels, the cart, the
context, the aliases and groups and the absence latches, and notes which inputs it touched
(``t:<trait>``, ``rfm``, ``e:<event>``, ``c:<channel>``, ``p:purchased``, ``p:viewed``), so that the engine
(:mod:`cdp.core.engine`) re-evaluates only the segments that read them.

Orders, as Segment accepts them (see :mod:`cdp.core.events`):

* ``Order Completed`` with an ``order_id`` counts once per order id, for ever: re-sent with a new
  message id it is refused. It is kept among the recent orders, so a refund can find it.
* ``Order Completed`` without an ``order_id`` counts once per message id (a redelivery is a
  duplicate; the same purchase sent again with a new message id counts again). It adds to the
  lifetime orders and revenue and the first and last order, is not kept among the recent orders,
  and no refund or cancellation can ever match it.
* ``Order Refunded`` / ``Order Cancelled`` of an order among the recent ones reduces that order
  (a cancellation, or a refund of at least its value, removes it and one order). Of any other
  order, or without an ``order_id``: with an amount, revenue drops by it (a cancellation also
  removes one order); without one, nothing exact is known, so only the event is counted.

A cart event without a product id is counted and leaves the cart as it is.

Recent products (``profile.products``, see :func:`cdp.core.profile.record_product`): an ``Order Completed``
that counts records each of its ``products[]`` (Segment's Ecommerce v2: ``product_id``, else ``sku``, and
``category``), and a top-level ``product_id``, as purchased; a ``Product Viewed`` records its product as viewed.
An item whose id is not a string or a number is passed over. A refund or cancellation leaves them as they are.
A change touches ``p:purchased`` or ``p:viewed``.

Consent (see :mod:`cdp.core.consent`): any message stating ``context.consent.categoryPreferences``
(``Segment Consent Preference Updated`` is one, counted like any track event) records them in
``profile.consent`` with the message's time, channel and id; older preferences never overwrite newer
ones. The Email spec's ``Unsubscribed`` and ``Email Marked as Spam`` unsubscribe the customer. A change
of either touches ``consent``.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cdp.core.catalogue import NOTHING_COUNTED, Catalogue
from cdp.core.clock import DEFAULT_MAX_FUTURE_SKEW
from cdp.core.consent import UNSUBSCRIBE_EVENTS
from cdp.core.events import (
    EMPTY_CONTEXT,
    NUMBER_DIGITS,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_EVENTS,
    ORDER_REFUNDED,
    PRODUCT_ADDED,
    PRODUCT_REMOVED,
    PRODUCT_VIEWED,
    Event,
)
from cdp.core.language import AbsenceCondition
from cdp.core.population import PopulationStats
from cdp.core.profile import (
    MAX_ALIASES,
    MAX_CART_ITEMS,
    MAX_GROUPS,
    MAX_PLAIN_COUNTERS,
    MAX_TRAITS,
    PURCHASED,
    RECENT_ORDERS,
    VIEWED,
    Profile,
    ProfileView,
    record_product,
)

MAX_CLOCK_SKEW = DEFAULT_MAX_FUTURE_SKEW  # events further than this ahead of the clock are refused
MAX_LIFETIME_REVENUE = 10**NUMBER_DIGITS - 1  # hundredths: the most a DynamoDB number holds exactly


def future_reason(skew: float) -> str:
    """Why an event stamped further ahead than the allowed skew is refused (its field is ``timestamp``)."""
    return f"is more than {skew:g} s in the future"


@dataclass
class Folded:
    """What folding a batch did: the inputs it touched, and what became of each event."""

    touched: set[str] = field(default_factory=set)
    counters: set[str] = field(default_factory=set)  # keys of the counters the batch added to
    applied: int = 0
    duplicates: int = 0
    beyond_retention: int = 0  # applied, but older than some counter it feeds keeps
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    spec_gaps: Tally[str] = field(default_factory=Tally)  # applied events without a spec field, by field


def fold(profile: Profile, events: Iterable[Event], catalogue: Catalogue, now: float, *,
         stats: PopulationStats | None = None, max_future_skew: float = MAX_CLOCK_SKEW) -> Folded:
    """Fold one customer's events into their profile, oldest first; evaluates no segment.

    When any event was applied, the profile's times are set, its dedupe memory is bounded and
    what no segment reads any longer is dropped.
    """
    folded = Folded()
    for event in sorted(events, key=lambda e: e.timestamp):
        if profile.seen(event.message_id):
            folded.duplicates += 1
            continue
        if event.timestamp > now + max_future_skew:
            folded.rejected.append((event, f"timestamp: {future_reason(max_future_skew)}"))
            continue
        problem = fold_event(profile, event, catalogue, now, folded, stats)
        if problem is not None:
            folded.rejected.append((event, problem))
            continue
        profile.remember(event.message_id, now)
        folded.applied += 1
        folded.spec_gaps.update(event.gaps)
    if folded.applied:
        if not profile.created_at:
            profile.created_at = int(now)
        profile.updated_at = int(now)
        profile.prune_dedupe(now)
        _tidy(profile, catalogue, now, None if profile.catalogue != catalogue.fingerprint else folded.counters)
    return folded


def fold_event(profile: Profile, event: Event, catalogue: Catalogue, now: float, folded: Folded,
               stats: PopulationStats | None = None) -> str | None:
    """Fold one event not applied before; returns why it is refused (and then changes nothing), or None.

    Notes the inputs it touched, and an event older than a counter keeps, in ``folded``; neither
    remembers the message id nor counts the event as applied (:func:`fold` does).
    """
    moment = int(event.timestamp)
    touched = folded.touched
    if event.type == "identify" and event.traits:
        problem = _fold_traits(profile, event, touched)
        if problem:
            return problem
    if event.name in ORDER_EVENTS:
        problem = _fold_order(profile, event, moment, touched)
        if problem:
            return problem
    _fold_products(profile, event, moment, touched)
    touched.add(f"e:{event.name}")
    touched.add(f"c:{event.channel}")
    if not _count(profile, event, catalogue, moment, now, folded):
        folded.beyond_retention += 1
    if moment > profile.channels.get(event.channel, 0):
        profile.channels[event.channel] = moment
    if event.name in (PRODUCT_ADDED, PRODUCT_REMOVED):
        _fold_cart(profile, event, moment)
    _fold_context(profile, event, moment)
    _fold_identities(profile, event)
    if event.consent or (event.type == "track" and event.name in UNSUBSCRIBE_EVENTS):
        _fold_consent(profile, event, touched)
    for node in catalogue.latches.get(event.name, ()):
        _fold_latch(profile, node, event, moment, stats)
    return None


def _fold_traits(profile: Profile, event: Event, touched: set[str]) -> str | None:
    """An identify call's traits; an older identify never overwrites a newer one's."""
    new = [name for name in event.traits if name not in profile.traits]
    if len(profile.traits) + len(new) > MAX_TRAITS:
        return f"traits: the profile would hold {len(profile.traits) + len(new)} traits; the limit is {MAX_TRAITS}"
    moment_ms = round(event.timestamp * 1000)
    newest = moment_ms >= profile.context.get("traits_ms", 0)
    for trait, value in event.traits.items():
        if newest or trait not in profile.traits:
            profile.traits[trait] = value
    if newest:
        profile.context["traits_ms"] = moment_ms
    touched.update(f"t:{trait}" for trait in event.traits)
    return None


def _fold_order(profile: Profile, event: Event, moment: int, touched: set[str]) -> str | None:
    """An order completed, refunded or cancelled: the lifetime figures and the recent orders."""
    order_id = event.order_id
    known = None if order_id is None else next((o for o in profile.recent_orders if o[0] == order_id), None)
    if event.name == ORDER_COMPLETED:
        problem = _complete_order(profile, event, known, moment)
        if problem is None:
            touched.add("rfm")
        return problem
    if _reverse_order(profile, event, known):
        touched.add("rfm")
    return None


def _complete_order(profile: Profile, event: Event, known: list[Any] | None, moment: int) -> str | None:
    # Lifetime figures count for ever, so a completed order never counts again: not when re-sent
    # with a new message id, nor after it was refunded or cancelled. Without an order id only the
    # message id tells one order from another (fold skips a message applied before).
    order_id = event.order_id
    if order_id is not None and (known is not None or profile.order_completed(order_id)):
        return "properties.order_id: this order was already completed"
    value = round((event.amount or 0.0) * 100)
    if profile.revenue + value > MAX_LIFETIME_REVENUE:
        return f"properties.revenue: would take lifetime revenue past {NUMBER_DIGITS} digits, DynamoDB's limit"
    profile.orders += 1
    profile.revenue += value
    if profile.first_order is None or moment < profile.first_order:
        profile.first_order = moment
    if profile.last_order is None or moment > profile.last_order:
        profile.last_order = moment
    if order_id is not None:  # kept for a refund to find; no refund can name an order without an id
        profile.recent_orders = [*profile.recent_orders, [order_id, moment, value]][-RECENT_ORDERS:]
        profile.remember_order(order_id)
    profile.cart = {pid: item for pid, item in profile.cart.items() if item[2] > moment}
    return None


def _fold_products(profile: Profile, event: Event, moment: int, touched: set[str]) -> None:
    """The products an order purchased, or the product a view showed, among the recent products."""
    if event.name not in (ORDER_COMPLETED, PRODUCT_VIEWED):
        return
    properties = event.properties
    if event.name == ORDER_COMPLETED:
        kind = PURCHASED
        items = properties.get("products")
        products = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        products.append(properties)  # a top-level product_id, as some sources send single-item orders
    else:
        kind, products = VIEWED, [properties]
    changed = False
    for product in products:
        product_id = _product_text(product.get("product_id")) or _product_text(product.get("sku"))
        if product_id:
            category = _product_text(product.get("category"))
            changed = record_product(profile.products, product_id, category, kind, moment) or changed
    if changed:
        touched.add("p:purchased" if kind == PURCHASED else "p:viewed")


def _product_text(value: Any) -> str:
    """An id or category as text (a string, or a whole number); "" for anything else (absent, a float, a list)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    return str(value)


def _reverse_order(profile: Profile, event: Event, known: list[Any] | None) -> bool:
    """A refund or cancellation reduces the lifetime figures; a whole one also removes the order.

    ``known`` is the recent order it reverses (None: unknown, or no order id). Without an amount and without
    a known order nothing exact is known, so nothing changes. Returns whether the lifetime figures may have.
    """
    if event.amount is None and known is None:
        return False
    order_value = known[2] if known is not None else None
    value = round(event.amount * 100) if event.amount is not None else order_value or 0
    whole = event.name == ORDER_CANCELLED or (order_value is not None and value >= order_value)
    if event.name == ORDER_REFUNDED and known is None and event.amount is not None:
        whole = False
    profile.revenue = max(0, profile.revenue - value)
    if whole and profile.orders:
        profile.orders -= 1
    if known is not None:
        profile.recent_orders = [o for o in profile.recent_orders if o is not known]
        if not whole:
            profile.recent_orders.append([known[0], known[1], known[2] - value])
    return True


def _count(profile: Profile, event: Event, catalogue: Catalogue, moment: int, now: float, folded: Folded) -> bool:
    """Add the event to every counter the catalogue keeps of it, and to its plain per-name counter.

    Notes the key of each counter it changed, and touches ``e:<key>`` of each filtered one it passed.
    False when it is older than one of those counters keeps.
    """
    name = event.name
    counted = catalogue.counted.get(name, NOTHING_COUNTED)
    keys = folded.counters
    landed = True
    for shape in counted.counters:
        spec = shape.metric
        if spec.source.matches(event):
            counter = profile.counter_for_update(spec.key, shape.tiers, shape.has_sum)
            landed = counter.add(moment, spec.value_of(event), now) and landed
            keys.add(spec.key)
            if spec.source.where:
                folded.touched.add(f"e:{spec.key}")
    if not counted.plain_tracked:
        profile.counter_for_update(name, (), False).add(moment, 0, now)
        keys.add(name)
    return landed


def _fold_cart(profile: Profile, event: Event, moment: int) -> None:
    if event.product_id is None:
        return  # no product to add or remove: the event is counted, the cart is as it was
    item = profile.cart.get(event.product_id)
    if event.name == PRODUCT_ADDED:
        price = round(event.amount * 100) if event.amount is not None else (item[1] if item else 0)
        if item is None:
            profile.cart[event.product_id] = [event.quantity, price, moment]
        else:
            item[0] += event.quantity
            if moment >= item[2]:  # a late add does not overwrite a newer add's price
                item[1] = price
            item[2] = max(item[2], moment)
        if profile.last_add is None or moment >= profile.last_add[1]:
            profile.last_add = [event.product_id, moment]
        if len(profile.cart) > MAX_CART_ITEMS:
            oldest = min(profile.cart, key=lambda pid: profile.cart[pid][2])
            del profile.cart[oldest]
    elif item is not None:
        item[0] -= event.quantity
        if item[0] <= 0:
            del profile.cart[event.product_id]


def _fold_context(profile: Profile, event: Event, moment: int) -> None:
    """The latest device, location and campaign; the first campaign is kept apart."""
    ctx = event.context
    if ctx is EMPTY_CONTEXT or moment < profile.context.get("at", 0):
        return  # a late event does not overwrite newer context
    fields = {"device": ctx.device_type, "os": ctx.os, "country": ctx.country, "city": ctx.city,
              "utm_source": ctx.utm_source, "utm_medium": ctx.utm_medium,
              "utm_campaign": ctx.utm_campaign}
    present = {key: value for key, value in fields.items() if value}
    if not present:
        return
    profile.context.update(present)
    profile.context["at"] = moment
    if ctx.utm_source and "first_utm_source" not in profile.context:
        profile.context["first_utm_source"] = ctx.utm_source
        if ctx.utm_medium:
            profile.context["first_utm_medium"] = ctx.utm_medium
        if ctx.utm_campaign:
            profile.context["first_utm_campaign"] = ctx.utm_campaign


def _fold_identities(profile: Profile, event: Event) -> None:
    """The customer's previous ids (alias calls) and group ids, the newest few of each; whether a message
    named the customer by user id."""
    if event.user_id is not None and event.user_id == profile.customer_id:
        profile.known = True
    if event.previous_id and event.previous_id not in profile.aliases:
        profile.aliases = [*profile.aliases, event.previous_id][-MAX_ALIASES:]
    if event.group_id and event.group_id not in profile.groups:
        profile.groups = [*profile.groups, event.group_id][-MAX_GROUPS:]


def _fold_consent(profile: Profile, event: Event, touched: set[str]) -> None:
    """The consent preferences the message states (an empty set states none), and an unsubscribe."""
    consent = profile.consent
    changed = False
    if event.consent:
        changed = consent.record(event.consent, event.timestamp, event.channel, event.message_id)
    reason = UNSUBSCRIBE_EVENTS.get(event.name) if event.type == "track" else None
    if reason is not None:
        changed = consent.unsubscribe(event.timestamp, reason) or changed
    if changed:
        touched.add("consent")


def _fold_latch(profile: Profile, node: AbsenceCondition, event: Event, moment: int,
                stats: PopulationStats | None) -> None:
    """Remember a trigger of an absence condition with ``when`` if the condition held at that moment."""
    if node.when is None or not node.trigger.source.matches(event):
        return
    if moment <= profile.latches.get(node.latch_key, -1):
        return
    if node.when.evaluate(ProfileView(profile, event.timestamp, stats))[0]:
        profile.latches[node.latch_key] = moment


def _tidy(profile: Profile, catalogue: Catalogue, now: float, changed: set[str] | None) -> None:
    """Prune the counters the batch changed (``None``: every counter, as after a catalogue change); drop the
    counters and latches no segment reads, and the least recent plain counters.

    A counter the batch did not change gained no bucket, so it stays within its bound unpruned (a window
    never counts a bucket older than itself), and is left as stored.
    """
    wanted = catalogue.metrics
    plain: list[str] = []
    for key in profile.counter_keys():
        spec = wanted.get(key)
        if spec is None and "|" in key:
            profile.drop_counter(key)  # its segment is gone
            continue
        if spec is None:
            plain.append(key)
        if changed is None or key in changed:
            counter = profile.counter(key)
            assert counter is not None
            if spec is None:
                counter.buckets.clear()
            counter.prune(now)
    if len(plain) > MAX_PLAIN_COUNTERS:
        lasts = sorted((_last(profile, key), key) for key in plain)
        for _, key in lasts[: len(plain) - MAX_PLAIN_COUNTERS]:
            profile.drop_counter(key)
    if profile.latches:
        live = catalogue.latch_keys
        for key in [k for k in profile.latches if k not in live]:
            del profile.latches[key]


def _last(profile: Profile, key: str) -> int:
    counter = profile.counter(key)
    assert counter is not None
    return counter.last
