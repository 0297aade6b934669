"""Merging an anonymous customer's profile into a known customer's: the pure core of an identity merge.

An ``identify`` carrying both a ``userId`` and an ``anonymousId``, or an ``alias``, says two profiles are one
customer. :func:`merge_profiles` returns the known profile with the anonymous one absorbed, as close as the
profile's compact aggregates allow to what folding both customers' events into one profile would have made.
Neither input is changed. The merged profile has the known customer's id and version (the write that stores it
is conditional on that version), and it is bounded exactly as a fold leaves a profile before its write.

==================  ===========================================================================================
field               merged
==================  ===========================================================================================
``ca`` / ``ua``     the earlier first write / the later last write (the merge is not an event)
``t``               the known customer's traits win; a trait only the anonymous one has is kept (in its order),
                    while fewer than ``MAX_TRAITS``; ``traits_ms`` is the known side's (else the anonymous')
``ch``              per channel, the later last-seen
``c``               per counter key, one side's counter as it is, or both added: lifetime count and sum add, first
                    and last are the earliest and latest, buckets add index by index (``Counter.absorb``); the
                    added ones are then pruned at ``now``, and counters no segment reads are dropped and the
                    least recent plain ones beyond ``MAX_PLAIN_COUNTERS`` go, as a fold does
``o``               orders and revenue add (revenue capped as the fold caps it), first order the earliest, last
                    order the latest
``ro``              the union of both (an order id on both sides: the known side's entry), the newest
                    ``RECENT_ORDERS`` by time, oldest first (when only one side has any: its list as it is)
``od``              the union of both sides' completed-order digests, the side with the older last order first;
                    the last ``MAX_ORDER_DIGESTS``, plus every recent order's
``cart``            each side's items less those the other side's orders cleared (an order clears every item last
                    added at or before it): an item on both sides adds its quantities, with the unit price of the
                    later add; the ``MAX_CART_ITEMS`` last added. ``la``: the later of the two
``cx``              last touch (device, OS, location, campaign): the side seen later (``at``) wins, the other fills
                    what it lacks; first touch: the whole first campaign of the side whose earliest event (its
                    counters' first times) is earlier; any other key: the known side's, else the anonymous'
``rp``              recent products: the union by (product, kind), each with the later time (and that side's
                    category, else the other's), in time order; the newest ``MAX_PRODUCTS`` of each kind
``mi``              both sides' message ids (one on both: the later time applied), oldest first, then the
                    retention of ``Profile.prune_dedupe`` at ``now`` (none on the anonymous side: the known
                    side's as its last write left them)
``sq``              the known side's watermarks (the anonymous side's mark records of another partition key)
``lt``              per latch, the later qualified trigger time; latches no segment reads are dropped
``al`` / ``gr``     the known side's, then the anonymous side's new ones, the absorbed anonymous id last (moved
                    there if it was already held); the last ``MAX_ALIASES`` / ``MAX_GROUPS``
``kn``              known when either side is
``mg``              the known side's merged ids, then the anonymous side's (the caller adds the anonymous id)
``cs``              consent (``merged_consent``): the latest preferences of either side (a tie: the known
                    side's), both histories in time order (the last ``MAX_CONSENT_HISTORY``), and
                    unsubscribed when either side is, at the earlier time
``ct``              computed traits, per model (``rfm``, ``clusters``, ``predictions``): the known side's traits
                    and ``[version, trained_at]`` stamp when it has that model's stamp, else the anonymous
                    side's (the next traits job recomputes them from the merged figures; the ingest assigns
                    a cluster only to a profile with no stamp of the stored model)
``m`` ``mc`` ``dl`` the known side's: not merged. ``tx`` is emptied and ``cv`` cleared, so the next evaluation
                    (``Engine.evaluate``, or the next ``Engine.apply``) evaluates every segment in full and records
                    the entries and exits the merge causes (each entry's clause in ``mc``)
==================  ===========================================================================================

What the aggregates cannot tell, and so differs from folding both customers' events into one profile:

* A message or an order applied to both profiles before the merge counts twice: the aggregates do not say what
  any one event added. The merged profile knows the message id (and the order id), so it counts no third time.
* A refund or cancellation of an order completed on the other profile was folded as a reversal of an unknown
  order. A ``Product Removed`` of a product in the other profile's cart removed nothing from it; an order on one
  side clears the other side's cart item whole, adds made after the order included.
* A trigger's ``when`` was judged on its own profile at the time: the other profile's events did not qualify it.
* Last touch is exact per field only when the later side's latest context carried that field. First touch has no
  time in the profile, so the side is chosen by its earliest event.
* The caps hold, by time where the profile keeps one (recent orders, cart items, message ids, plain counters) and
  by side where it does not (order digests, aliases, groups, traits): which entries a cap drops can differ from
  what folding both histories would have dropped along the way.

Merging the same anonymous profile twice counts it twice: the caller merges once per identity link.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from cdp.core.catalogue import Catalogue
from cdp.core.consent import merged_consent
from cdp.core.counters import Counter
from cdp.core.engine import CONSENT, EXITED, EXPIRY, Engine, Transition
from cdp.core.fold import MAX_LIFETIME_REVENUE
from cdp.core.profile import (
    MAX_ALIASES,
    MAX_CART_ITEMS,
    MAX_GROUPS,
    MAX_PLAIN_COUNTERS,
    MAX_TRAITS,
    RECENT_ORDERS,
    Profile,
    bounded_products,
    pack_message_ids,
    unpack_message_ids,
    unpack_order_digests,
)
from cdp.core.traits import TRAIT_MODELS, ComputedTraits

LAST_TOUCH = ("device", "os", "country", "city", "utm_source", "utm_medium", "utm_campaign")
FIRST_TOUCH = ("first_utm_source", "first_utm_medium", "first_utm_campaign")
_CONTEXT_TIMES = ("at", "traits_ms")


def _later_expiry(merged: Profile, known: Profile, anonymous: Profile) -> None:
    """The later expiry of the two (retention counts from either side's last event)."""
    expiries = [p.deadlines[EXPIRY] for p in (known, anonymous) if EXPIRY in p.deadlines]
    if expiries:
        merged.deadlines[EXPIRY] = max(expiries)
    ttls = [p.expires_at for p in (known, anonymous) if p.expires_at is not None]
    merged.expires_at = max(ttls) if ttls else None


def merge_profiles(known: Profile, anonymous: Profile, now: float, *, catalogue: Catalogue) -> Profile:
    """A new profile: ``known`` with ``anonymous`` absorbed, bounded at ``now`` as a fold bounds it for
    ``catalogue`` (the catalogue the fold uses: it says which counters and latches segments read). Neither
    input is changed. See the module docstring for the rule of each field."""
    if known.customer_id == anonymous.customer_id:
        raise ValueError("a profile cannot be merged into itself")
    merged = Profile(known.customer_id)
    merged.version = known.version
    merged.created_at = min((t for t in (known.created_at, anonymous.created_at) if t), default=0)
    merged.updated_at = max(known.updated_at, anonymous.updated_at)
    merged.traits = _traits(known.traits, anonymous.traits)
    merged.channels = dict(known.channels)
    for channel, seen in anonymous.channels.items():
        merged.channels[channel] = max(seen, merged.channels.get(channel, seen))
    _merge_counters(merged, known, anonymous, now, catalogue)
    _merge_orders(merged, known, anonymous)
    merged.cart = _cart(known, anonymous)
    merged.last_add = _later_add(known.last_add, anonymous.last_add)
    merged.context = _context(known, anonymous)
    merged.products = merged_products(known.products, anonymous.products)
    _merge_dedupe(merged, known, anonymous, now)
    merged.memberships = dict(known.memberships)
    merged.entered_by = {s: clause for s, clause in known.entered_by.items() if s in merged.memberships}
    merged.deadlines = dict(known.deadlines)
    _later_expiry(merged, known, anonymous)
    merged.latches = _latches(known.latches, anonymous.latches, catalogue)
    merged.transitions = []
    merged.catalogue = ""  # not evaluated against any catalogue: the next evaluation is a full one
    merged.aliases = _identities(known.aliases, anonymous.aliases, anonymous.customer_id,
                                 known.customer_id)[-MAX_ALIASES:]
    merged.groups = _identities(known.groups, anonymous.groups, None, None)[-MAX_GROUPS:]
    merged.known = known.known or anonymous.known
    held = known.merged_ids()
    merged.merges = [list(entry) for entry in known.merges] + [
        list(entry) for entry in anonymous.merges if entry[0] not in held]
    merged.consent = merged_consent(known.consent, anonymous.consent)
    merged.computed = merged_computed(known.computed, anonymous.computed)
    return merged


def merged_computed(known: ComputedTraits, anonymous: ComputedTraits) -> ComputedTraits:
    """Per model, the traits and stamp of the side the model last wrote: the known one when it has the model."""
    merged = ComputedTraits()
    for model in sorted({*known.models, *anonymous.models}):
        side = known if model in known.models else anonymous
        merged.models[model] = list(side.models[model])
        merged.values.update({name: copy.deepcopy(value) for name, value in side.values.items()
                              if TRAIT_MODELS.get(name) == model})
    return merged


def merged_products(known: list[list[Any]], anonymous: list[list[Any]]) -> list[list[Any]]:
    """Both sides' recent products, one entry per (product, kind) at the later time, within the caps."""
    entries: dict[tuple[str, str], list[Any]] = {}
    for entry in (*known, *anonymous):
        key = (entry[0], entry[2])
        held = entries.get(key)
        if held is None or entry[3] > held[3]:
            entries[key] = [entry[0], entry[1] or (held[1] if held else ""), entry[2], entry[3]]
        elif not held[1] and entry[1]:
            held[1] = entry[1]
    return bounded_products(entries.values())


def _traits(known: dict[str, Any], anonymous: dict[str, Any]) -> dict[str, Any]:
    traits = copy.deepcopy(known)
    for name, value in anonymous.items():
        if name not in traits and len(traits) < MAX_TRAITS:
            traits[name] = copy.deepcopy(value)
    return traits


# ---- counters --------------------------------------------------------------------------------------------


def _merge_counters(merged: Profile, known: Profile, anonymous: Profile, now: float, catalogue: Catalogue) -> None:
    """Both sides' counters, those on both added; then bounded as the fold bounds them before a write.

    A counter only one side has gained no bucket, so it stays within its bound and is kept as stored (as the
    fold keeps a counter its batch did not change); one on both sides is pruned at ``now``.
    """
    packed = known.packed_counters()
    wanted = catalogue.metrics
    for key, theirs in anonymous.packed_counters().items():
        mine = packed.get(key)
        if mine is None:
            packed[key] = theirs
            continue
        counter = Counter.decode(mine)
        counter.absorb(Counter.decode(theirs))
        if key not in wanted:
            counter.buckets.clear()  # a plain counter keeps lifetime figures only
        counter.prune(now)
        packed[key] = counter.encode()
    merged.keep_packed_counters(packed)
    plain: list[str] = []
    for key in merged.counter_keys():
        if key in wanted:
            continue
        if "|" in key:
            merged.drop_counter(key)  # its segment is gone
        else:
            plain.append(key)
    if len(plain) > MAX_PLAIN_COUNTERS:
        lasts = sorted((_counter(merged, key).last, key) for key in plain)
        for _, key in lasts[:len(plain) - MAX_PLAIN_COUNTERS]:
            merged.drop_counter(key)


def _counter(profile: Profile, key: str) -> Counter:
    counter = profile.counter(key)
    assert counter is not None
    return counter


def _earliest_event(profile: Profile) -> int | None:
    """When the profile's earliest event happened, as its counters' lifetime figures say (every event name
    is counted under its own key); None when it has no counter."""
    firsts = [counter.first for counter in map(Counter.decode, profile.packed_counters().values()) if counter.count]
    return min(firsts, default=None)


# ---- orders ----------------------------------------------------------------------------------------------


def _merge_orders(merged: Profile, known: Profile, anonymous: Profile) -> None:
    merged.orders = known.orders + anonymous.orders
    merged.revenue = min(known.revenue + anonymous.revenue, MAX_LIFETIME_REVENUE)
    firsts = [t for t in (known.first_order, anonymous.first_order) if t is not None]
    lasts = [t for t in (known.last_order, anonymous.last_order) if t is not None]
    merged.first_order = min(firsts) if firsts else None
    merged.last_order = max(lasts) if lasts else None
    merged.recent_orders = _recent_orders(known.recent_orders, anonymous.recent_orders)
    older, newer = known, anonymous
    if (anonymous.last_order or 0) <= (known.last_order or 0):
        older, newer = anonymous, known  # the side whose orders are older goes first: its digests go first
    merged.keep_order_digests([*unpack_order_digests(older.packed_order_digests(), ()),
                               *unpack_order_digests(newer.packed_order_digests(), ())])
    for order in merged.recent_orders:  # a recent order is always among the digests (the decoder relies on it)
        if not merged.order_completed(order[0]):
            merged.remember_order(order[0])


def _recent_orders(known: list[list[Any]], anonymous: list[list[Any]]) -> list[list[Any]]:
    mine = [list(order) for order in known]
    held = {order[0] for order in known}
    theirs = [list(order) for order in anonymous if order[0] not in held]
    if not theirs or not mine:  # one side's list as it is (in the order its fold left it)
        return mine or theirs
    return sorted([*mine, *theirs], key=lambda order: int(order[1]))[-RECENT_ORDERS:]


# ---- cart ------------------------------------------------------------------------------------------------


def _cart(known: Profile, anonymous: Profile) -> dict[str, list[int]]:
    cart = _uncleared(known.cart, anonymous.last_order)
    for product, item in _uncleared(anonymous.cart, known.last_order).items():
        held = cart.get(product)
        if held is None:
            cart[product] = item
            continue
        later = item if item[2] > held[2] else held
        cart[product] = [held[0] + item[0], later[1], max(held[2], item[2])]
    if len(cart) > MAX_CART_ITEMS:  # the least recently added go, as the fold evicts them one by one
        for product in sorted(cart, key=lambda p: cart[p][2])[:len(cart) - MAX_CART_ITEMS]:
            del cart[product]
    return cart


def _uncleared(cart: dict[str, list[int]], last_order: int | None) -> dict[str, list[int]]:
    """A copy of the cart less the items an order at ``last_order`` clears (those last added at or before it)."""
    return {product: list(item) for product, item in cart.items() if last_order is None or item[2] > last_order}


def _later_add(known: list[Any] | None, anonymous: list[Any] | None) -> list[Any] | None:
    if anonymous is not None and (known is None or int(anonymous[1]) > int(known[1])):
        return list(anonymous)
    return list(known) if known is not None else None


# ---- context ---------------------------------------------------------------------------------------------


def _context(known: Profile, anonymous: Profile) -> dict[str, Any]:
    mine, theirs = known.context, anonymous.context
    if not theirs:
        return copy.deepcopy(mine)
    special = {*LAST_TOUCH, *FIRST_TOUCH, *_CONTEXT_TIMES}
    context = {key: value for key, value in theirs.items() if key not in special}
    context.update((key, value) for key, value in mine.items() if key not in special)
    older, newer = (mine, theirs) if theirs.get("at", 0) > mine.get("at", 0) else (theirs, mine)
    for key in LAST_TOUCH:
        value = newer.get(key, older.get(key))
        if value is not None:
            context[key] = value
    if "at" in mine or "at" in theirs:
        context["at"] = max(mine.get("at", 0), theirs.get("at", 0))
    first = _first_touch(known, anonymous)
    context.update((key, first[key]) for key in FIRST_TOUCH if key in first)
    traits_ms = mine.get("traits_ms", theirs.get("traits_ms"))  # the known side's traits win, so its time
    if traits_ms is not None:
        context["traits_ms"] = traits_ms
    return copy.deepcopy(context)


def _first_touch(known: Profile, anonymous: Profile) -> dict[str, Any]:
    """The context holding the first campaign: the only side with one, else the side first seen earlier."""
    mine, theirs = known.context, anonymous.context
    if "first_utm_source" not in theirs:
        return mine
    if "first_utm_source" not in mine:
        return theirs
    earliest_mine, earliest_theirs = _earliest_event(known), _earliest_event(anonymous)
    if earliest_theirs is not None and (earliest_mine is None or earliest_theirs < earliest_mine):
        return theirs
    return mine


# ---- dedupe, latches, identities -------------------------------------------------------------------------


def _merge_dedupe(merged: Profile, known: Profile, anonymous: Profile, now: float) -> None:
    """Both sides' message ids, bounded as before a write; the known side's shard watermarks."""
    merged.shard_marks = {shard: list(mark) for shard, mark in known.shard_marks.items()}
    theirs = unpack_message_ids(anonymous.packed_message_ids())
    if not theirs:  # nothing new to remember: kept as the known side's last write bounded them
        merged.keep_packed_message_ids(known.packed_message_ids())
        return
    ids = unpack_message_ids(known.packed_message_ids())
    for digest, at in theirs.items():
        ids[digest] = max(at, ids.get(digest, at))
    merged.keep_packed_message_ids(pack_message_ids(dict(sorted(ids.items(), key=lambda entry: entry[1]))))
    merged.prune_dedupe(now)


def _latches(known: dict[str, int], anonymous: dict[str, int], catalogue: Catalogue) -> dict[str, int]:
    latches = dict(known)
    for key, at in anonymous.items():
        latches[key] = max(at, latches.get(key, at))
    live = catalogue.latch_keys
    return {key: at for key, at in latches.items() if key in live}


def _identities(known: list[str], anonymous: Iterable[str], absorbed: str | None, own: str | None) -> list[str]:
    """The known side's ids, then the anonymous side's new ones, then the absorbed id (moved last)."""
    ids = [i for i in known if i != absorbed]
    for identity in anonymous:
        if identity not in ids and identity not in (absorbed, own):
            ids.append(identity)
    if absorbed is not None:
        ids.append(absorbed)
    return ids



# ---- the two sides of a merge in the ingest ---------------------------------------------------------------

MERGED = "merged"  # the clause of every transition a merge causes


def freeze_merged(profile: Profile, into: str, now: float) -> list[Transition] | None:
    """Mark ``profile`` as merged into ``into``: it leaves every segment (clause ``merged``), keeps no deadline,
    and no write changes it again. Returns its exits, or None when it is marked already (nothing to write)."""
    if profile.merged_into is not None:
        return None
    at = int(now)
    exits = [Transition(profile.customer_id, segment_id, segment_id, EXITED, at, MERGED,
                        "merged into another customer") for segment_id in profile.memberships]
    profile.merged_into = into
    profile.memberships = {}
    profile.entered_by = {}
    profile.deadlines = {}
    profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in exits]
    if not profile.created_at:
        profile.created_at = at
    profile.updated_at = at
    return exits


def absorb(profile: Profile, snapshots: Iterable[Profile], engine: Engine, now: float,
           messages: Mapping[str, str]) -> tuple[int, list[Transition]]:
    """Merge into ``profile``, in place, each snapshot (a profile frozen by :func:`freeze_merged`) it has not
    absorbed yet, recording the id with the time and the merging message (``messages``: id -> message id, ""
    when a merge is completed for a later message), then evaluate every segment on the result. Returns how many
    it absorbed and the transitions, each with the clause ``merged`` (an exit for a missing profiling consent:
    ``consent``)."""
    absorbed = 0
    pending = [s for s in snapshots if s.customer_id != profile.customer_id]
    # A snapshot that another one absorbed before it was frozen arrives inside that one (a chain): not twice.
    inside = {merged for snapshot in pending for merged in snapshot.merged_ids()}
    for snapshot in pending:
        held = profile.merged_ids()
        if snapshot.customer_id in held or snapshot.customer_id in inside:
            continue
        merged = merge_profiles(profile, snapshot, now, catalogue=engine.catalogue)
        merged.merges.append([snapshot.customer_id, int(now), messages.get(snapshot.customer_id, "")])
        profile.take(merged)
        absorbed += 1
    if not absorbed:
        return 0, []
    profile.updated_at = int(now)
    # Exits for a missing profiling consent keep their clause: integrations act on it.
    transitions = [t if t.clause == CONSENT else
                   replace(t, clause=MERGED, reason=f"{t.clause}: {t.reason}" if t.clause else t.reason)
                   for t in engine.evaluate(profile, now, None)]
    profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in transitions]
    return absorbed, transitions
