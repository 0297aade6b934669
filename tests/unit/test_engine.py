"""The engine: folding events into a profile (duplicates, late and future events, orders, cart, traits)
and evaluating segments incrementally (exclusive groups, clauses, deadlines, removed segments)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, build_catalogue
from cdp.core.counters import Counter
from cdp.core.engine import ENTERED, EXITED, Engine, Outcome, Transition
from cdp.core.events import Event, normalise
from cdp.core.fold import fold
from cdp.core.profile import MAX_TRAITS, Profile

MIN, HOUR, DAY = 60, 3600, 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z
T = B + 10 * HOUR + 30 * MIN

_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message(kind: str, at: float, message_id: str | None = None, **fields: Any) -> Event:
    return normalise({"type": kind, "messageId": message_id or f"msg-{next(_ids)}", "userId": "u1",
                      "timestamp": iso(at), **fields})


def track(name: str, at: float, message_id: str | None = None, **properties: Any) -> Event:
    return message("track", at, message_id, event=name, properties=properties)


def view(at: float, message_id: str | None = None) -> Event:
    return track("Product Viewed", at, message_id)


def order(at: float, order_id: str, revenue: float | None = None, name: str = "Order Completed") -> Event:
    properties: dict[str, Any] = {"order_id": order_id}
    if revenue is not None:
        properties["revenue"] = revenue
    return track(name, at, **properties)


def add(at: float, product: str = "p1", price: float = 10, quantity: int = 1) -> Event:
    return track("Product Added", at, product_id=product, price=price, quantity=quantity)


def remove(at: float, product: str = "p1", quantity: int = 1) -> Event:
    return track("Product Removed", at, product_id=product, quantity=quantity)


def identify(at: float, **traits: Any) -> Event:
    return message("identify", at, traits=traits)


def segment(segment_id: str, condition: dict[str, Any], **fields: Any) -> tuple[str, dict[str, Any]]:
    return f"{segment_id}.yaml", {"id": segment_id, "name": segment_id.replace("-", " ").title(),
                                  "condition": condition, **fields}


def engine_for(*definitions: tuple[str, dict[str, Any]]) -> Engine:
    return Engine(build_catalogue(list(definitions)))


def item(profile: Profile) -> dict[str, Any]:
    """The stored item, without ``tx`` (the transitions of the write that made it) and ``cv`` (which
    catalogue it was last evaluated against): bookkeeping, not profile state."""
    stored = profile.to_item()
    stored.pop("tx", None)
    stored.pop("cv", None)
    return stored


def counter_of(profile: Profile, key: str) -> Counter:
    counter = profile.counter(key)
    assert counter is not None, f"the profile has no {key!r} counter"
    return counter


def kinds(outcome: Outcome | list[Transition]) -> set[tuple[str, str]]:
    transitions = outcome.transitions if isinstance(outcome, Outcome) else outcome
    return {(t.segment_id, t.kind) for t in transitions}


def only(transitions: list[Transition], segment_id: str) -> Transition:
    [found] = [t for t in transitions if t.segment_id == segment_id]
    return found


GOLD = {"trait": {"name": "plan", "eq": "gold"}}
TWO_VIEWS_2H = segment("viewers", {"count": {"event": "Product Viewed", "within": "2h", "gte": 2}})
BUYERS = segment("buyers", {"rfm": {"metric": "orders", "gte": 1}})



# ---- the fold alone ---------------------------------------------------------------------------

def test_fold_changes_the_profile_and_notes_what_it_touched_but_evaluates_nothing() -> None:
    engine = engine_for(TWO_VIEWS_2H, BUYERS, segment("gold", GOLD))
    profile = Profile("u1")
    batch = [order(T + 30, "o1", 100), view(T, "m-x"), identify(T + 40, plan="gold"), view(T, "m-x"),
             view(T + HOUR)]
    folded = fold(profile, batch, engine.catalogue, now=T + MIN)
    assert (folded.applied, folded.duplicates, [reason for _, reason in folded.rejected]) == (
        3, 1, ["timestamp: is more than 300 s in the future"])
    assert folded.touched == {"e:Product Viewed", "e:Order Completed", "e:Identify", "rfm", "t:plan",
                              "c:server"}
    assert (profile.orders, profile.traits, counter_of(profile, "Product Viewed").count) == (1, {"plan": "gold"}, 1)
    assert (profile.memberships, profile.deadlines, profile.created_at) == ({}, {}, T + MIN)
    # the engine folds the same way, then evaluates
    evaluated = Profile("u1")
    outcome = engine.apply(evaluated, batch, now=T + MIN)
    assert kinds(outcome) == {("buyers", ENTERED), ("gold", ENTERED)}
    assert (outcome.applied, outcome.duplicates, outcome.rejected) == (folded.applied, folded.duplicates,
                                                                         folded.rejected)
    assert {k: v for k, v in item(evaluated).items() if k not in ("m", "mc", "dl", "nd", "ds")} == item(profile)


# ---- duplicates -------------------------------------------------------------------------------

def test_duplicate_message_id_changes_nothing() -> None:
    engine = engine_for(TWO_VIEWS_2H, BUYERS)
    profile = Profile("u1")
    first = view(T, "m-1")
    outcome = engine.apply(profile, [first, view(T + MIN, "m-2")], now=T + 2 * MIN)
    assert kinds(outcome) == {("viewers", ENTERED)}
    before = item(profile)
    # same message id, different content: still the same message
    redelivered = [view(T, "m-1"), track("Order Completed", T + 2 * MIN, "m-2", order_id="o1", revenue=100)]
    again = engine.apply(profile, redelivered, now=T + 3 * MIN)
    assert (again.applied, again.duplicates, again.rejected, again.transitions) == (0, 2, [], [])
    assert again.changed is False
    assert item(profile) == before
    assert profile.orders == 0


def test_duplicate_within_one_batch_is_applied_once() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    outcome = engine.apply(profile, [view(T, "m-1"), view(T, "m-1")], now=T)
    assert (outcome.applied, outcome.duplicates) == (1, 1)
    assert counter_of(profile, "Product Viewed").count == 1
    assert outcome.transitions == []


def test_redelivered_batch_is_a_no_op() -> None:
    engine = engine_for(TWO_VIEWS_2H, BUYERS, segment("gold", GOLD),
                        segment("carted", {"recency": {"event": "Product Added", "within": "1h"}}))
    profile = Profile("u1")
    batch = [view(T), view(T + 10), add(T + 20), order(T + 30, "o1", 100), identify(T + 40, plan="gold"),
             message("page", T + 50, name="Home")]
    first = engine.apply(profile, batch, now=T + MIN)
    assert first.applied == 6
    assert kinds(first) == {("viewers", ENTERED), ("buyers", ENTERED), ("gold", ENTERED), ("carted", ENTERED)}
    before = item(profile)
    second = engine.apply(profile, batch, now=T + 2 * MIN)
    assert (second.applied, second.duplicates, second.transitions, second.changed) == (0, 6, [], False)
    assert item(profile) == before


# ---- late and future events -------------------------------------------------------------------

LATE = (segment("recent", {"count": {"event": "Product Viewed", "within": "4h", "gte": 2}}),
        segment("lifetime", {"count": {"event": "Product Viewed", "gte": 3}}))


def test_late_event_lands_in_its_own_bucket_while_retained() -> None:
    engine = engine_for(*LATE)
    profile = Profile("u1")
    engine.apply(profile, [view(T)], now=T)
    late = engine.apply(profile, [view(T - 3 * HOUR)], now=T + MIN)
    assert (late.applied, late.beyond_retention) == (1, 0)
    counter = counter_of(profile, "Product Viewed")
    assert (T - 3 * HOUR) // HOUR in counter.buckets["h"]
    assert counter.buckets["h"][(T - 3 * HOUR) // HOUR][0] == 1
    assert (counter.count, counter.first, counter.last) == (2, T - 3 * HOUR, T)
    assert kinds(late) == {("recent", ENTERED)}  # 3 hours old: inside the 4h window


def test_late_event_past_retention_counts_only_in_lifetime_figures() -> None:
    engine = engine_for(*LATE)
    profile = Profile("u1")
    engine.apply(profile, [view(T), view(T - HOUR)], now=T)
    assert "recent" in profile.memberships
    late = engine.apply(profile, [view(T - 72 * HOUR)], now=T + MIN)  # hour buckets are kept for 48 hours
    assert (late.applied, late.beyond_retention) == (1, 1)
    counter = counter_of(profile, "Product Viewed")
    assert (T - 72 * HOUR) // HOUR not in counter.buckets["h"]
    assert sum(bucket[0] for bucket in counter.buckets["h"].values()) == 2
    assert (counter.count, counter.first, counter.last) == (3, T - 72 * HOUR, T)
    assert kinds(late) == {("lifetime", ENTERED)}


def test_late_order_does_not_move_recency() -> None:
    engine = engine_for(segment("recent-buyers", {"recency": {"event": "Order Completed", "within": "7d"}}))
    profile = Profile("u1")
    engine.apply(profile, [order(T, "o1", 10)], now=T)
    assert profile.deadlines["recent-buyers"] == T + 7 * DAY
    late = engine.apply(profile, [order(T - 10 * DAY, "o0", 10)], now=T + MIN)
    assert late.applied == 1 and late.transitions == []
    assert profile.deadlines["recent-buyers"] == T + 7 * DAY
    assert profile.orders == 2
    assert profile.first_order == T - 10 * DAY and profile.last_order == T


def test_event_more_than_five_minutes_ahead_is_refused() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    ahead = view(T + 5 * MIN + 1)
    outcome = engine.apply(profile, [view(T + 5 * MIN), ahead], now=T)
    assert outcome.applied == 1
    [(refused, reason)] = outcome.rejected
    assert refused is ahead
    assert reason == "timestamp: is more than 300 s in the future"
    assert counter_of(profile, "Product Viewed").count == 1
    # refused, not remembered: once the clock catches up it is applied
    later = engine.apply(profile, [ahead], now=T + 1)
    assert (later.applied, later.duplicates, later.rejected) == (1, 0, [])


def test_only_refused_events_change_nothing() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    before = item(profile)
    outcome = engine.apply(profile, [view(T + HOUR)], now=T)
    assert (outcome.applied, outcome.changed, len(outcome.rejected)) == (0, False, 1)
    assert item(profile) == before


# ---- orders, refunds and cancellations --------------------------------------------------------

ORDER_SEGMENTS = (segment("two-orders", {"rfm": {"metric": "orders", "gte": 2}}),
                  segment("week-orders", {"count": {"event": "Order Completed", "within": "7d", "gte": 2}}))


def two_orders() -> tuple[Engine, Profile]:
    engine = engine_for(*ORDER_SEGMENTS)
    profile = Profile("u1")
    outcome = engine.apply(profile, [order(T, "o1", 100), order(T + MIN, "o2", 50)], now=T + MIN)
    assert kinds(outcome) == {("two-orders", ENTERED), ("week-orders", ENTERED)}
    assert (profile.orders, profile.revenue) == (2, 15000)
    return engine, profile


def test_partial_refund_with_amount_reduces_revenue_only() -> None:
    engine, profile = two_orders()
    outcome = engine.apply(profile, [order(T + HOUR, "o1", 30, "Order Refunded")], now=T + HOUR)
    assert outcome.applied == 1 and outcome.transitions == []
    assert (profile.orders, profile.revenue) == (2, 12000)


def test_refund_without_amount_of_a_remembered_order_refunds_it_whole() -> None:
    engine, profile = two_orders()
    outcome = engine.apply(profile, [order(T + HOUR, "o2", None, "Order Refunded")], now=T + HOUR)
    assert (profile.orders, profile.revenue) == (1, 10000)
    exit_ = only(outcome.transitions, "two-orders")
    assert (exit_.kind, exit_.clause, exit_.reason) == (EXITED, "condition.rfm", "no longer: orders >= 2")
    # windowed counts of Order Completed count what happened: not rewritten
    assert "week-orders" in profile.memberships


def test_full_refund_with_amount_reduces_order_count() -> None:
    engine, profile = two_orders()
    engine.apply(profile, [order(T + HOUR, "o1", 100, "Order Refunded")], now=T + HOUR)
    assert (profile.orders, profile.revenue) == (1, 5000)


def test_partial_refunds_adding_up_to_the_whole_order() -> None:
    engine, profile = two_orders()
    engine.apply(profile, [order(T + HOUR, "o1", 30, "Order Refunded")], now=T + HOUR)
    assert profile.orders == 2
    engine.apply(profile, [order(T + 2 * HOUR, "o1", 70, "Order Refunded")], now=T + 2 * HOUR)
    assert (profile.orders, profile.revenue) == (1, 5000)


def test_cancellation_removes_the_order() -> None:
    engine, profile = two_orders()
    outcome = engine.apply(profile, [order(T + HOUR, "o1", None, "Order Cancelled")], now=T + HOUR)
    assert (profile.orders, profile.revenue) == (1, 5000)
    assert ("two-orders", EXITED) in kinds(outcome)


def test_cancellation_after_partial_refund_removes_what_is_left() -> None:
    engine, profile = two_orders()
    engine.apply(profile, [order(T + HOUR, "o1", 30, "Order Refunded")], now=T + HOUR)
    engine.apply(profile, [order(T + 2 * HOUR, "o1", None, "Order Cancelled")], now=T + 2 * HOUR)
    assert (profile.orders, profile.revenue) == (1, 5000)


@pytest.mark.parametrize("name", ["Order Refunded", "Order Cancelled"])
def test_reversal_of_unknown_order_without_amount_is_counted_and_changes_no_lifetime_figure(name: str) -> None:
    engine, profile = two_orders()
    before = item(profile)
    reversal = order(T + HOUR, "o-unknown", None, name)
    outcome = engine.apply(profile, [reversal], now=T + HOUR)
    assert (outcome.applied, outcome.rejected, outcome.transitions) == (1, [], [])
    assert (profile.orders, profile.revenue) == (2, 15000)
    assert counter_of(profile, name).count == 1 and profile.seen(reversal.message_id)
    after = item(profile)
    for key in ("o", "ro", "od", "cart", "m"):  # lifetime figures, recent and completed orders, cart, members
        assert after.get(key) == before.get(key), key


def test_refund_of_unknown_order_with_amount_reduces_revenue_only() -> None:
    engine, profile = two_orders()
    engine.apply(profile, [order(T + HOUR, "o-unknown", 20, "Order Refunded")], now=T + HOUR)
    assert (profile.orders, profile.revenue) == (2, 13000)


def test_revenue_never_goes_below_zero() -> None:
    engine, profile = two_orders()
    engine.apply(profile, [order(T + HOUR, "o-unknown", 1000, "Order Refunded")], now=T + HOUR)
    assert profile.revenue == 0


def test_duplicate_order_id_is_refused() -> None:
    engine, profile = two_orders()
    outcome = engine.apply(profile, [order(T + HOUR, "o1", 500)], now=T + HOUR)
    assert outcome.applied == 0
    [(_, reason)] = outcome.rejected
    assert reason == "properties.order_id: this order was already completed"  # never echoes the value
    assert (profile.orders, profile.revenue) == (2, 15000)
    assert counter_of(profile, "Order Completed").count == 2


# ---- cart -------------------------------------------------------------------------------------

def test_cart_add_and_remove() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    engine.apply(profile, [add(T, "p1", 10, 2)], now=T)
    assert profile.cart == {"p1": [2, 1000, T]}
    engine.apply(profile, [add(T + MIN, "p1", 12, 1)], now=T + MIN)
    assert profile.cart == {"p1": [3, 1200, T + MIN]}
    engine.apply(profile, [remove(T + 2 * MIN, "p1", 2), remove(T + 2 * MIN, "p9")], now=T + 2 * MIN)
    assert profile.cart == {"p1": [1, 1200, T + MIN]}
    engine.apply(profile, [remove(T + 3 * MIN, "p1")], now=T + 3 * MIN)
    assert profile.cart == {}
    assert profile.last_add == ["p1", T + MIN]


def test_cart_cleared_by_a_later_order_only_up_to_its_time() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    engine.apply(profile, [add(T + 2 * HOUR, "p2"), order(T + HOUR, "o1", 10), add(T, "p1")], now=T + 2 * HOUR)
    assert set(profile.cart) == {"p2"}  # p1 bought at T+1h; p2 added after the order


def test_cart_not_cleared_by_an_earlier_order_arriving_late() -> None:
    engine = engine_for(TWO_VIEWS_2H)
    profile = Profile("u1")
    engine.apply(profile, [add(T, "p1")], now=T)
    engine.apply(profile, [order(T - HOUR, "o1", 10)], now=T + MIN)
    assert set(profile.cart) == {"p1"}


# ---- traits -----------------------------------------------------------------------------------

def test_traits_from_identify() -> None:
    engine = engine_for(segment("gold", GOLD))
    profile = Profile("u1")
    outcome = engine.apply(profile, [identify(T, plan="gold", city="Leeds")], now=T)
    assert profile.traits == {"plan": "gold", "city": "Leeds"}
    entered = only(outcome.transitions, "gold")
    assert (entered.kind, entered.clause, entered.at, entered.customer_id) == (ENTERED, "condition.trait", T, "u1")
    assert entered.reason == "trait plan == 'gold'"


def test_traits_from_rudderstack_context() -> None:
    engine = engine_for(segment("gold", GOLD))
    profile = Profile("u1")
    engine.apply(profile, [message("identify", T, context={"traits": {"plan": "gold"}})], now=T)
    assert profile.traits == {"plan": "gold"}
    assert "gold" in profile.memberships


def test_older_identify_does_not_overwrite_newer_traits() -> None:
    engine = engine_for(segment("gold", GOLD))
    profile = Profile("u1")
    engine.apply(profile, [identify(T, plan="gold")], now=T)
    outcome = engine.apply(profile, [identify(T - HOUR, plan="bronze", age=30)], now=T + MIN)
    assert outcome.applied == 1
    assert profile.traits == {"plan": "gold", "age": 30}  # a trait it did not know yet is taken
    assert outcome.transitions == []
    engine.apply(profile, [identify(T + HOUR, plan="silver")], now=T + HOUR)
    assert profile.traits["plan"] == "silver"
    assert "gold" not in profile.memberships


def test_older_identify_within_the_same_second_does_not_overwrite() -> None:
    engine = engine_for(segment("gold", GOLD))
    profile = Profile("u1")
    engine.apply(profile, [identify(T + 0.5, plan="gold")], now=T + 1)
    engine.apply(profile, [identify(T + 0.2, plan="silver")], now=T + 1)  # 300 ms older, arriving later
    assert profile.traits["plan"] == "gold"


def test_trait_cap() -> None:
    engine = engine_for(segment("gold", GOLD))
    profile = Profile("u1")
    full = {f"t{i:02d}": i for i in range(MAX_TRAITS)}
    assert engine.apply(profile, [identify(T, **full)], now=T).applied == 1
    outcome = engine.apply(profile, [identify(T + 1, plan="gold")], now=T + 1)
    assert outcome.applied == 0
    [(_, reason)] = outcome.rejected
    assert reason.startswith("traits:") and str(MAX_TRAITS) in reason
    assert len(profile.traits) == MAX_TRAITS and "plan" not in profile.traits
    # changing traits it already holds is fine
    assert engine.apply(profile, [identify(T + 2, t00="changed")], now=T + 2).applied == 1
    assert profile.traits["t00"] == "changed"


# ---- exclusive groups -------------------------------------------------------------------------

def test_exclusive_group_keeps_only_the_highest_priority_member_and_displaces() -> None:
    engine = engine_for(segment("basic", {"trait": {"name": "plan", "exists": True}}, group="tier", priority=10),
                        segment("premium", GOLD, group="tier", priority=20),
                        segment("anyone", {"trait": {"name": "plan", "exists": True}}, priority=1))
    profile = Profile("u1")
    first = engine.apply(profile, [identify(T, plan="silver")], now=T)
    assert kinds(first) == {("basic", ENTERED), ("anyone", ENTERED)}
    second = engine.apply(profile, [identify(T + 1, plan="gold")], now=T + 1)
    assert kinds(second) == {("premium", ENTERED), ("basic", EXITED)}
    displaced = only(second.transitions, "basic")
    assert displaced.clause == "group"
    assert displaced.reason == "premium takes precedence in exclusive group tier (priority 20)"
    assert set(profile.memberships) == {"premium", "anyone"}  # ungrouped segments overlap freely
    third = engine.apply(profile, [identify(T + 2, plan="silver")], now=T + 2)
    assert kinds(third) == {("premium", EXITED), ("basic", ENTERED)}
    assert only(third.transitions, "premium").clause == "condition.trait"


@pytest.mark.parametrize(("members", "winner"), [
    ([("c-seg", 5, 1), ("d-seg", 5, 1)], "c-seg"),  # same priority and weight: id
    ([("c-seg", 5, 1), ("d-seg", 5, 1), ("z-heavy", 5, 2)], "z-heavy"),  # higher weight first
    ([("c-seg", 5, 1), ("z-heavy", 5, 2), ("y-top", 6, 0)], "y-top"),  # priority before weight
])
def test_exclusive_group_tie_break(members: list[tuple[str, int, float]], winner: str) -> None:
    engine = engine_for(*(segment(sid, GOLD, group="g", priority=p, weight=w) for sid, p, w in members))
    profile = Profile("u1")
    outcome = engine.apply(profile, [identify(T, plan="gold")], now=T)
    assert kinds(outcome) == {(winner, ENTERED)}
    assert set(profile.memberships) == {winner}


def test_ineligible_higher_priority_member_does_not_block() -> None:
    engine = engine_for(segment("low", GOLD, group="g", priority=1),
                        segment("high", {"trait": {"name": "plan", "eq": "platinum"}}, group="g", priority=9))
    profile = Profile("u1")
    assert kinds(engine.apply(profile, [identify(T, plan="gold")], now=T)) == {("low", ENTERED)}


def test_displacement_when_a_timer_makes_a_higher_member_eligible() -> None:
    waiting = {"trigger": {"event": "Product Added"}, "missing": {"event": "Order Completed"}}
    engine = engine_for(segment("potential", {"absence": {**waiting, "within": "0s", "expire": "7d"}},
                                group="cart", priority=50),
                        segment("abandoner", {"absence": {**waiting, "within": "48h"}}, group="cart", priority=70))
    profile = Profile("u1")
    assert kinds(engine.apply(profile, [add(T)], now=T)) == {("potential", ENTERED)}
    assert profile.next_deadline == T + 48 * HOUR
    assert engine.evaluate(profile, T + 48 * HOUR - 1, set()) == []
    transitions = engine.evaluate(profile, T + 48 * HOUR, set())
    assert kinds(transitions) == {("abandoner", ENTERED), ("potential", EXITED)}
    assert only(transitions, "potential").clause == "group"
    assert only(transitions, "abandoner").clause == "condition.absence"
    assert only(transitions, "abandoner").at == T + 48 * HOUR


# ---- transitions and their clauses ------------------------------------------------------------

def test_transitions_carry_the_clause_that_flipped() -> None:
    condition = {"all": [GOLD, {"recency": {"event": "Product Viewed", "within": "1h"}}]}
    engine = engine_for(segment("active-gold", condition))
    profile = Profile("u1")
    assert engine.apply(profile, [identify(T, plan="gold")], now=T).transitions == []
    entered = engine.apply(profile, [view(T + MIN)], now=T + MIN).transitions
    assert [(t.kind, t.clause, t.reason) for t in entered] == [
        (ENTERED, "condition.all[1].recency", "Product Viewed within 60m")]
    assert entered[0].segment_name == "Active Gold"
    assert profile.deadlines["active-gold"] == T + MIN + HOUR
    timed_out = engine.evaluate(profile, T + MIN + HOUR, set())
    assert [(t.kind, t.clause, t.reason, t.at) for t in timed_out] == [
        (EXITED, "condition.all[1].recency", "no longer: Product Viewed within 60m", T + MIN + HOUR)]
    engine.apply(profile, [view(T + 2 * HOUR)], now=T + 2 * HOUR)
    assert "active-gold" in profile.memberships
    left = engine.apply(profile, [identify(T + 2 * HOUR + 1, plan="silver")], now=T + 2 * HOUR + 1).transitions
    assert [(t.kind, t.clause, t.reason) for t in left] == [
        (EXITED, "condition.all[0].trait", "no longer: trait plan == 'gold'")]


def test_nested_clause_path() -> None:
    condition = {"any": [{"all": [GOLD, {"count": {"event": "Product Viewed", "gte": 2}}]},
                         {"channel": {"name": "mobile"}}]}
    engine = engine_for(segment("s", condition))
    profile = Profile("u1")
    engine.apply(profile, [identify(T, plan="gold"), view(T + 1)], now=T + 1)
    [entered] = engine.apply(profile, [view(T + 2)], now=T + 2).transitions
    assert (entered.kind, entered.clause) == (ENTERED, "condition.any[0].all[1].count")
    assert entered.reason == "count(Product Viewed) >= 2"
    [left] = engine.apply(profile, [identify(T + 3, plan="none")], now=T + 3).transitions
    assert (left.kind, left.clause) == (EXITED, "condition.any[0].all[0].trait")


# ---- incremental evaluation -------------------------------------------------------------------

def count_calls(monkeypatch: pytest.MonkeyPatch, catalogue: Catalogue, segment_id: str) -> list[float]:
    """Record the moment of every evaluation of a segment's condition."""
    condition = catalogue.segments[segment_id].condition
    original: Callable[..., Any] = condition.evaluate
    calls: list[float] = []

    def counting(ctx: Any) -> Any:
        calls.append(ctx.now)
        return original(ctx)

    monkeypatch.setattr(condition, "evaluate", counting)
    return calls


def test_event_that_touches_no_input_does_not_reevaluate(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(segment("viewers", {"count": {"event": "Product Viewed", "gte": 1}}), segment("gold", GOLD),
                        segment("web", {"channel": {"name": "web"}}))
    gold_calls = count_calls(monkeypatch, engine.catalogue, "gold")
    viewer_calls = count_calls(monkeypatch, engine.catalogue, "viewers")
    web_calls = count_calls(monkeypatch, engine.catalogue, "web")
    profile = Profile("u1")
    outcome = engine.apply(profile, [view(T)], now=T)  # a server-side track: no trait, not web
    assert kinds(outcome) == {("viewers", ENTERED)}
    assert (len(gold_calls), len(viewer_calls), len(web_calls)) == (1, 1, 1)  # a new profile: everything once
    engine.apply(profile, [view(T + 1)], now=T + 1)
    assert (len(gold_calls), len(viewer_calls), len(web_calls)) == (1, 2, 1)
    engine.apply(profile, [identify(T + 1, plan="gold")], now=T + 1)
    assert (len(gold_calls), len(viewer_calls), len(web_calls)) == (2, 2, 1)
    engine.apply(profile, [message("page", T + 2, name="Home")], now=T + 2)
    assert (len(gold_calls), len(viewer_calls), len(web_calls)) == (2, 2, 2)
    engine.evaluate(profile, T + 3, None)  # everything, as after a catalogue change
    assert (len(gold_calls), len(viewer_calls), len(web_calls)) == (3, 3, 3)


def test_a_changed_catalogue_evaluates_a_stored_profile_in_full_once() -> None:
    never_ordered = segment("never-ordered", {"not": {"recency": {"event": "Order Completed", "within": "30d"}}})
    profile = Profile("u1")
    engine_for(segment("viewers", {"count": {"event": "Product Viewed", "gte": 1}})).apply(profile, [view(T)], now=T)
    stored = Profile.from_item(profile.to_item())
    # The new segment reads nothing the next event touches, yet is true from nothing.
    outcome = engine_for(never_ordered).apply(stored, [view(T + 60)], now=T + 60)
    assert kinds(outcome) >= {("never-ordered", ENTERED)}


def test_passed_deadline_forces_reevaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(segment("recent", {"recency": {"event": "Product Viewed", "within": "1h"}}))
    calls = count_calls(monkeypatch, engine.catalogue, "recent")
    profile = Profile("u1")
    assert kinds(engine.apply(profile, [view(T)], now=T)) == {("recent", ENTERED)}
    assert calls == [T] and profile.deadlines == {"recent": T + HOUR}
    quiet = engine.apply(profile, [track("Button Clicked", T + 30 * MIN)], now=T + 30 * MIN)
    assert quiet.transitions == [] and calls == [T]  # unrelated, and not yet due
    due = engine.apply(profile, [track("Button Clicked", T + 2 * HOUR)], now=T + 2 * HOUR)
    assert calls == [T, T + 2 * HOUR]
    [left] = due.transitions
    assert (left.segment_id, left.kind, left.clause) == ("recent", EXITED, "condition.recency")
    assert profile.deadlines == {}


def test_timer_evaluates_only_due_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(segment("short", {"recency": {"event": "Product Viewed", "within": "1h"}}),
                        segment("long", {"recency": {"event": "Product Viewed", "within": "2h"}}))
    short_calls = count_calls(monkeypatch, engine.catalogue, "short")
    long_calls = count_calls(monkeypatch, engine.catalogue, "long")
    profile = Profile("u1")
    engine.apply(profile, [view(T)], now=T)
    assert profile.next_deadline == T + HOUR
    transitions = engine.evaluate(profile, T + HOUR, set())
    assert kinds(transitions) == {("short", EXITED)}
    assert (len(short_calls), len(long_calls)) == (2, 1)
    assert profile.next_deadline == T + 2 * HOUR


def test_segment_reading_a_membership_is_reevaluated_when_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(segment("gold", GOLD), segment("fan", {"segment": {"id": "gold"}}))
    calls = count_calls(monkeypatch, engine.catalogue, "fan")
    profile = Profile("u1")
    engine.apply(profile, [identify(T, city="Leeds")], now=T)
    assert calls == [T]  # a new profile: everything once
    engine.apply(profile, [identify(T, city="York")], now=T)
    assert calls == [T]  # gold was evaluated but did not change
    outcome = engine.apply(profile, [identify(T + 1, plan="gold")], now=T + 1)
    assert [(t.segment_id, t.kind) for t in outcome.transitions] == [("gold", ENTERED), ("fan", ENTERED)]
    assert only(outcome.transitions, "fan").clause == "condition.segment"


# ---- disabled and removed segments ------------------------------------------------------------

def member_of_x(condition: dict[str, Any]) -> Profile:
    engine = engine_for(segment("x", condition), segment("y", {"trait": {"name": "plan", "exists": True}}))
    profile = Profile("u1")
    engine.apply(profile, [identify(T, plan="gold"), view(T)], now=T)
    assert set(profile.memberships) == {"x", "y"}
    return profile


def test_disabled_segment_members_exit_with_a_reason() -> None:
    recency = {"recency": {"event": "Product Viewed", "within": "1h"}}
    profile = member_of_x(recency)
    assert "x" in profile.deadlines
    engine = engine_for(segment("x", recency, enabled=False), segment("y", {"trait": {"name": "plan", "exists": True}}))
    transitions = engine.evaluate(profile, T + 1, set())
    assert [(t.segment_id, t.kind, t.clause, t.reason) for t in transitions] == [
        ("x", EXITED, "segment", "segment disabled")]
    assert set(profile.memberships) == {"y"}
    assert "x" not in profile.deadlines


def test_removed_segment_members_exit_on_the_next_event() -> None:
    profile = member_of_x(GOLD)
    engine = engine_for(segment("y", {"trait": {"name": "plan", "exists": True}}))
    outcome = engine.apply(profile, [track("Button Clicked", T + 1)], now=T + 1)
    assert [(t.segment_id, t.kind, t.reason) for t in outcome.transitions] == [
        ("x", EXITED, "segment disabled")]
    assert outcome.changed is True
    assert set(profile.memberships) == {"y"}


# ---- the changed flag -------------------------------------------------------------------------

def test_changed_flag() -> None:
    engine = engine_for(segment("recent", {"recency": {"event": "Product Viewed", "within": "1h"}}))
    profile = Profile("u1")
    first = view(T)
    assert engine.apply(profile, [first], now=T).changed is True
    assert engine.apply(profile, [first], now=T + 1).changed is False  # duplicate only
    assert engine.apply(profile, [view(T + HOUR)], now=T + 1).changed is False  # refused only
    assert engine.apply(profile, [], now=T + 2).changed is False  # nothing due
    assert engine.apply(profile, [track("Unread Event", T + 3)], now=T + 3).changed is True  # a new event
    timed = engine.apply(profile, [], now=T + HOUR)  # no event, but a deadline passed
    assert kinds(timed) == {("recent", EXITED)}
    assert timed.changed is True
