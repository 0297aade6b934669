"""The segmentation engine: folds events into a profile, then re-evaluates the segments they touch.

``Engine.apply`` is what ingest calls once per customer per batch; ``Engine.evaluate``
is what the timers call when a profile's deadline passes. Both return the membership
transitions, each with the clause that flipped, and leave the profile's next deadline set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cdp.core.catalogue import Catalogue, Segment
from cdp.core.clock import DEFAULT_MAX_FUTURE_SKEW
from cdp.core.counters import Counter
from cdp.core.events import (
    NUMBER_DIGITS,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_EVENTS,
    ORDER_REFUNDED,
    PRODUCT_ADDED,
    PRODUCT_REMOVED,
    Event,
)
from cdp.core.language import AbsenceCondition, AllOf, AnyOf, Condition, Not
from cdp.core.population import PopulationStats
from cdp.core.profile import (
    MAX_ALIASES,
    MAX_CART_ITEMS,
    MAX_GROUPS,
    MAX_PLAIN_COUNTERS,
    MAX_TRAITS,
    RECENT_ORDERS,
    Profile,
)

MAX_CLOCK_SKEW = DEFAULT_MAX_FUTURE_SKEW  # events further than this ahead of the clock are refused
MAX_LIFETIME_REVENUE = 10**NUMBER_DIGITS - 1  # hundredths: the most a DynamoDB number holds exactly
ENTERED = "entered"
EXITED = "exited"


def future_reason(skew: float) -> str:
    """Why an event stamped further ahead than the allowed skew is refused (its field is ``timestamp``)."""
    return f"is more than {skew:g} s in the future"


@dataclass(frozen=True, slots=True)
class Transition:
    """A customer entering or leaving a segment, and why."""

    customer_id: str
    segment_id: str
    segment_name: str
    kind: str
    at: int
    clause: str
    reason: str


@dataclass
class Outcome:
    transitions: list[Transition] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    beyond_retention: int = 0
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    changed: bool = False
    next_deadline: int | None = None


class ProfileView:
    """The figures conditions read, for one profile at one moment."""

    __slots__ = ("now", "profile", "stats")

    def __init__(self, profile: Profile, now: float, stats: PopulationStats | None) -> None:
        self.profile, self.now, self.stats = profile, now, stats

    def counter(self, key: str) -> Counter | None:
        return self.profile.counter(key)

    def trait(self, name: str) -> Any:
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


class Engine:
    def __init__(self, catalogue: Catalogue, stats: PopulationStats | None = None,
                 max_future_skew: float = MAX_CLOCK_SKEW) -> None:
        self.catalogue = catalogue
        self.stats = stats
        self.max_future_skew = max_future_skew  # seconds an event may be stamped ahead of the clock

    # ---- folding events -----------------------------------------------------------------------

    def apply(self, profile: Profile, events: Iterable[Event], now: float) -> Outcome:
        """Fold one customer's events into the profile, then evaluate what they touched."""
        outcome = Outcome()
        touched: set[str] = set()
        for event in sorted(events, key=lambda e: e.timestamp):
            if profile.seen(event.message_id):
                outcome.duplicates += 1
                continue
            if event.timestamp > now + self.max_future_skew:
                outcome.rejected.append((event, f"timestamp: {future_reason(self.max_future_skew)}"))
                continue
            problem = self._fold(profile, event, now, touched, outcome)
            if problem is not None:
                outcome.rejected.append((event, problem))
                continue
            profile.remember(event.message_id, now)
            outcome.applied += 1
        if outcome.applied:
            if not profile.created_at:
                profile.created_at = int(now)
            profile.updated_at = int(now)
            profile.prune_dedupe(now)
            self._tidy(profile, now)
            outcome.changed = True
        before = (dict(profile.memberships), dict(profile.deadlines))
        outcome.transitions = self.evaluate(profile, now, touched)
        if (dict(profile.memberships), dict(profile.deadlines)) != before:
            outcome.changed = True
        outcome.next_deadline = profile.next_deadline
        return outcome

    def set_manual(self, profile: Profile, segment_id: str, member: bool, now: float) -> Transition | None:
        """Add a customer to, or remove them from, a static segment. The write carries the transition."""
        segment = self.catalogue.segments.get(segment_id)
        if segment is None or not segment.manual:
            raise ValueError(f"{segment_id!r} is not an enabled static segment")
        if (segment_id in profile.memberships) == member:
            return None
        if member:
            profile.memberships[segment_id] = int(now)
        else:
            del profile.memberships[segment_id]
        if not profile.created_at:
            profile.created_at = int(now)
        profile.updated_at = int(now)
        transition = Transition(profile.customer_id, segment_id, segment.name, ENTERED if member else EXITED,
                                int(now), "manual", "added by hand" if member else "removed by hand")
        profile.transitions = [[transition.segment_id, transition.kind, transition.at, transition.clause,
                                transition.reason]]
        return transition

    # ---- overlap --------------------------------------------------------------------------------

    def primary_segment(self, profile: Profile) -> Segment | None:
        """The member segment with the highest priority (ties: higher weight, then id)."""
        members = [self.catalogue.segments[s] for s in profile.memberships if s in self.catalogue.segments]
        return min(members, key=Segment.rank) if members else None

    def score(self, profile: Profile) -> float:
        """The sum of the weights of the segments the customer belongs to."""
        segments = self.catalogue.segments
        return sum(segments[s].weight for s in profile.memberships if s in segments)

    def _fold(self, profile: Profile, event: Event, now: float, touched: set[str],
              outcome: Outcome) -> str | None:
        moment = int(event.timestamp)
        name = event.name
        if event.type == "identify" and event.traits:
            problem = self._traits(profile, event)
            if problem:
                return problem
            touched.update(f"t:{trait}" for trait in event.traits)
        if name in ORDER_EVENTS:
            problem = self._order(profile, event, moment)
            if problem:
                return problem
            touched.add("rfm")
        touched.add(f"e:{name}")
        touched.add(f"c:{event.channel}")

        specs = self.catalogue.metrics_by_event.get(name, ())
        plain_tracked = False
        landed = True
        for spec in specs:
            if spec.source.matches(event):
                counter = profile.counter_for_update(spec.key, tuple(sorted(spec.tiers)),
                                                     spec.sum_property is not None)
                landed = counter.add(moment, spec.value_of(event), now) and landed
            plain_tracked = plain_tracked or spec.key == name
        if not plain_tracked:
            profile.counter_for_update(name, (), False).add(moment, 0, now)
        if not landed:
            outcome.beyond_retention += 1

        if moment > profile.channels.get(event.channel, 0):
            profile.channels[event.channel] = moment
        if name in (PRODUCT_ADDED, PRODUCT_REMOVED):
            self._cart(profile, event, moment)
        self._context(profile, event, moment)
        if event.previous_id and event.previous_id not in profile.aliases:
            profile.aliases = [*profile.aliases, event.previous_id][-MAX_ALIASES:]
        if event.group_id and event.group_id not in profile.groups:
            profile.groups = [*profile.groups, event.group_id][-MAX_GROUPS:]
        for node in self.catalogue.latches.get(name, ()):
            self._latch(profile, node, event, moment)
        return None

    def _traits(self, profile: Profile, event: Event) -> str | None:
        new = [name for name in event.traits if name not in profile.traits]
        if len(profile.traits) + len(new) > MAX_TRAITS:
            return f"traits: the profile would hold {len(profile.traits) + len(new)} traits; the limit is {MAX_TRAITS}"
        moment_ms = round(event.timestamp * 1000)
        newest = moment_ms >= profile.context.get("traits_ms", 0)
        for trait, value in event.traits.items():
            if newest or trait not in profile.traits:  # an older identify never overwrites a newer one
                profile.traits[trait] = value
        if newest:
            profile.context["traits_ms"] = moment_ms
        return None

    def _order(self, profile: Profile, event: Event, moment: int) -> str | None:
        assert event.order_id is not None
        known = next((order for order in profile.recent_orders if order[0] == event.order_id), None)
        if event.name == ORDER_COMPLETED:
            # Lifetime figures count for ever, so a completed order never counts again: not when re-sent
            # with a new message id, nor after it was refunded or cancelled.
            if known is not None or profile.order_completed(event.order_id):
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
            profile.recent_orders = [*profile.recent_orders, [event.order_id, moment, value]][-RECENT_ORDERS:]
            profile.remember_order(event.order_id)
            profile.cart = {pid: item for pid, item in profile.cart.items() if item[2] > moment}
            return None
        # Refunds and cancellations reduce the lifetime figures; a full one also removes the order.
        if event.amount is None and known is None:
            return (f"properties.revenue: is required when the order is not among the last {RECENT_ORDERS}"
                    " completed orders")
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
        return None

    def _cart(self, profile: Profile, event: Event, moment: int) -> None:
        assert event.product_id is not None
        item = profile.cart.get(event.product_id)
        if event.name == PRODUCT_ADDED:
            price = round(event.amount * 100) if event.amount is not None else (item[1] if item else 0)
            if item is None:
                profile.cart[event.product_id] = [event.quantity, price, moment]
            else:
                item[0] += event.quantity
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

    @staticmethod
    def _context(profile: Profile, event: Event, moment: int) -> None:
        ctx = event.context
        if moment < profile.context.get("at", 0):
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

    def _latch(self, profile: Profile, node: AbsenceCondition, event: Event, moment: int) -> None:
        if node.when is None or not node.trigger.source.matches(event):
            return
        if moment <= profile.latches.get(node.latch_key, -1):
            return
        if node.when.evaluate(ProfileView(profile, event.timestamp, self.stats))[0]:
            profile.latches[node.latch_key] = moment

    def _tidy(self, profile: Profile, now: float) -> None:
        wanted = self.catalogue.metrics
        plain: list[tuple[int, str]] = []
        for key in profile.counter_keys():
            counter = profile.counter(key)
            assert counter is not None
            spec = wanted.get(key)
            if spec is None and "|" in key:
                profile.drop_counter(key)  # its segment is gone
                continue
            if spec is None:
                counter.buckets.clear()
                plain.append((counter.last, key))
            counter.prune(now)
        if len(plain) > MAX_PLAIN_COUNTERS:
            plain.sort()
            for _, key in plain[: len(plain) - MAX_PLAIN_COUNTERS]:
                profile.drop_counter(key)
        live = {node.latch_key for nodes in self.catalogue.latches.values() for node in nodes}
        for key in [k for k in profile.latches if k not in live]:
            del profile.latches[key]

    # ---- evaluating segments ------------------------------------------------------------------

    def evaluate(self, profile: Profile, now: float, touched: set[str] | None = None) -> list[Transition]:
        """Re-evaluate the segments whose inputs were touched or whose deadline has passed.

        ``touched=None`` re-evaluates every segment (after a catalogue or statistics change).
        """
        view = ProfileView(profile, now, self.stats)
        transitions: list[Transition] = []
        segments = self.catalogue.segments
        if profile.catalogue != self.catalogue.fingerprint:
            # A new profile, or a changed catalogue: a condition can be true with none of its inputs
            # touched (e.g. "no order within 30 days"), so every segment is evaluated once.
            touched = None
            profile.catalogue = self.catalogue.fingerprint
        for segment_id in [s for s in profile.memberships if s not in segments]:
            del profile.memberships[segment_id]
            transitions.append(Transition(profile.customer_id, segment_id, segment_id, EXITED, int(now),
                                          "segment", "the segment was disabled or removed"))
        for segment_id in [s for s in profile.deadlines if s not in segments]:
            del profile.deadlines[segment_id]
        changed: set[str] = set()
        for unit in self.catalogue.units:
            if touched is not None and not (unit.inputs & touched) and not (unit.inputs & changed):
                due = any(profile.deadlines.get(s.id, math.inf) <= now for s in unit.segments)
                if not due:
                    continue
            eligible: list[Segment] = []
            for segment in unit.segments:
                value, deadline = segment.condition.evaluate(view)
                if deadline is None:
                    profile.deadlines.pop(segment.id, None)
                else:
                    profile.deadlines[segment.id] = math.ceil(deadline)
                if value:
                    eligible.append(segment)
            members = eligible[:1] if unit.segments[0].group else eligible
            for segment in unit.segments:
                was = segment.id in profile.memberships
                now_member = segment in members
                if was == now_member:
                    continue
                changed.add(f"s:{segment.id}")
                if now_member:
                    profile.memberships[segment.id] = int(now)
                    clause, reason = self._explain(segment, view, True, touched)
                    transitions.append(Transition(profile.customer_id, segment.id, segment.name, ENTERED,
                                                  int(now), clause, reason))
                else:
                    del profile.memberships[segment.id]
                    if segment in eligible:
                        winner = members[0]
                        clause, reason = "group", (f"{winner.id} takes precedence in exclusive group"
                                                   f" {segment.group} (priority {winner.priority})")
                    else:
                        clause, reason = self._explain(segment, view, False, touched)
                    transitions.append(Transition(profile.customer_id, segment.id, segment.name, EXITED,
                                                  int(now), clause, reason))
        # The write carries its own transitions, so the table stream can say why each one happened.
        profile.transitions = [[t.segment_id, t.kind, t.at, t.clause, t.reason] for t in transitions]
        return transitions

    def _explain(self, segment: Segment, view: ProfileView, value: bool,
                 touched: set[str] | None) -> tuple[str, str]:
        leaves = _deciding(segment.condition, view, value)
        chosen = None
        if touched is not None:
            chosen = next((leaf for leaf in leaves if leaf.inputs & touched), None)
        if chosen is None:
            chosen = next((leaf for leaf in leaves if leaf.time_driven), leaves[0])
        text = chosen.describe()
        return chosen.path, text if value else f"no longer: {text}"


def _deciding(node: Condition, view: ProfileView, want: bool) -> list[Condition]:
    """The leaves that make ``node`` evaluate to ``want``: where a flip must have happened."""
    if isinstance(node, Not):
        return _deciding(node.item, view, not want)
    if isinstance(node, (AllOf, AnyOf)):
        every = isinstance(node, AllOf) == want
        parts = [c for c in node.items if every or c.evaluate(view)[0] == want]
        return [leaf for part in parts for leaf in _deciding(part, view, want)]
    return [node]
