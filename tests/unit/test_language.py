"""The segment language: every operator's value and deadline, as documented in segments/README.md.

Conditions are built with ``build_catalogue`` and fed by the engine: each event is applied at its own
time (as a live stream would be), then the condition is evaluated at an explicit ``now``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from cdp.core.catalogue import Catalogue, CatalogueError, build_catalogue
from cdp.core.engine import Engine
from cdp.core.events import Event, normalise
from cdp.core.language import AbsenceCondition, Condition
from cdp.core.population import PopulationStats
from cdp.core.profile import Profile, ProfileView

MIN, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400
B = 1_704_844_800  # 2024-01-10T00:00:00Z: a UTC midnight; B + DAY is a Thursday, where epoch weeks start
assert B % DAY == 0 and (B + DAY) % WEEK == 0

_ids = itertools.count()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message(kind: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": f"msg-{next(_ids)}", "userId": "u1", "timestamp": iso(at), **fields}


def track(name: str, at: float, **properties: Any) -> Event:
    return normalise(message("track", at, event=name, properties=properties))


def order(at: float, order_id: str, revenue: float) -> Event:
    return track("Order Completed", at, order_id=order_id, revenue=revenue)


def identify(at: float, **traits: Any) -> Event:
    return normalise(message("identify", at, traits=traits))


def catalogue_for(condition: dict[str, Any], others: tuple[dict[str, Any], ...] = ()) -> Catalogue:
    definitions: list[tuple[str, object]] = [("test.yaml", {"id": "s", "name": "S", "condition": condition})]
    definitions += [("other.yaml", other) for other in others]
    return build_catalogue(definitions)


class Run:
    """A catalogue with segment ``s`` and a profile fed event by event, each at its own time."""

    def __init__(self, condition: dict[str, Any], events: Sequence[Event] = (), *,
                 stats: PopulationStats | None = None, others: tuple[dict[str, Any], ...] = ()) -> None:
        self.catalogue = catalogue_for(condition, others)
        self.stats = stats
        self.engine = Engine(self.catalogue, stats)
        self.profile = Profile("u1")
        self.feed(*events)

    def feed(self, *events: Event) -> None:
        for event in sorted(events, key=lambda e: e.timestamp):
            outcome = self.engine.apply(self.profile, [event], now=event.timestamp)
            assert outcome.applied == 1, outcome.rejected

    @property
    def condition(self) -> Condition:
        return self.catalogue.segments["s"].condition

    def at(self, now: float) -> tuple[bool, float | None]:
        return self.condition.evaluate(ProfileView(self.profile, now, self.stats))


def check(condition: dict[str, Any], events: list[Event], now: float, **kwargs: Any) -> tuple[bool, float | None]:
    return Run(condition, events, **kwargs).at(now)


# ---- count: property filters ------------------------------------------------------------------

FILTER_CASES = [
    ("eq shorthand matches", {"category": "shoes"}, {"category": "shoes"}, True),
    ("eq shorthand differs", {"category": "shoes"}, {"category": "hats"}, False),
    ("eq number vs float", {"price": {"eq": 100}}, {"price": 100.0}, True),
    ("eq number vs string", {"price": {"eq": 100}}, {"price": "100"}, False),
    ("eq missing", {"category": "shoes"}, {}, False),
    ("ne differs", {"category": {"ne": "shoes"}}, {"category": "hats"}, True),
    ("ne same", {"category": {"ne": "shoes"}}, {"category": "shoes"}, False),
    ("ne missing passes", {"category": {"ne": "shoes"}}, {}, True),
    ("gt above", {"price": {"gt": 100}}, {"price": 100.5}, True),
    ("gt equal", {"price": {"gt": 100}}, {"price": 100}, False),
    ("gt string vs number", {"price": {"gt": 100}}, {"price": "200"}, False),
    ("gt bool is not a number", {"price": {"gt": 0}}, {"price": True}, False),
    ("gt missing", {"price": {"gt": 100}}, {}, False),
    ("gte equal", {"price": {"gte": 100}}, {"price": 100}, True),
    ("gte below", {"price": {"gte": 100}}, {"price": 99.99}, False),
    ("lt below", {"price": {"lt": 100}}, {"price": 99}, True),
    ("lt equal", {"price": {"lt": 100}}, {"price": 100}, False),
    ("lt missing", {"price": {"lt": 100}}, {}, False),
    ("lte equal", {"price": {"lte": 100}}, {"price": 100}, True),
    ("lte above", {"price": {"lte": 100}}, {"price": 100.01}, False),
    ("strings compare with strings", {"size": {"gte": "m"}}, {"size": "s"}, True),
    ("in member", {"brand": {"in": ["acme", "globex"]}}, {"brand": "globex"}, True),
    ("in not a member", {"brand": {"in": ["acme", "globex"]}}, {"brand": "initech"}, False),
    ("in missing", {"brand": {"in": ["acme", "globex"]}}, {}, False),
    ("contains list member", {"tags": {"contains": "sale"}}, {"tags": ["new", "sale"]}, True),
    ("contains list without", {"tags": {"contains": "sale"}}, {"tags": ["new"]}, False),
    ("contains substring", {"tags": {"contains": "sale"}}, {"tags": "clearance sale"}, True),
    ("contains no substring", {"tags": {"contains": "sale"}}, {"tags": "new in"}, False),
    ("in: true is not 1", {"gift": {"in": [1, 2]}}, {"gift": True}, False),
    ("in: 1 equals 1.0", {"gift": {"in": [1, 2]}}, {"gift": 1.0}, True),
    ("contains: true is not 1", {"tags": {"contains": 1}}, {"tags": [True]}, False),
    ("ne: true is not 1", {"gift": {"ne": 1}}, {"gift": True}, True),
    ("contains on a number", {"tags": {"contains": "1"}}, {"tags": 1}, False),
    ("exists present", {"coupon": {"exists": True}}, {"coupon": "WELCOME"}, True),
    ("exists null", {"coupon": {"exists": True}}, {"coupon": None}, False),
    ("exists missing", {"coupon": {"exists": True}}, {}, False),
    ("exists false on missing", {"coupon": {"exists": False}}, {}, True),
    ("exists false on null", {"coupon": {"exists": False}}, {"coupon": None}, True),
    ("exists false on present", {"coupon": {"exists": False}}, {"coupon": "WELCOME"}, False),
    ("dotted path matches", {"product.colour": "red"}, {"product": {"colour": "red"}}, True),
    ("dotted path differs", {"product.colour": "red"}, {"product": {"colour": "blue"}}, False),
    ("dotted path through a non-object", {"product.colour": "red"}, {"product": "red"}, False),
    ("dotted path deep", {"a.b.c": {"gte": 2}}, {"a": {"b": {"c": 3}}}, True),
    ("two filters both hold", {"category": "shoes", "price": {"lt": 50}}, {"category": "shoes", "price": 20}, True),
    ("two filters one fails", {"category": "shoes", "price": {"lt": 50}}, {"category": "shoes", "price": 80}, False),
]


@pytest.mark.parametrize(("where", "properties", "expected"), [c[1:] for c in FILTER_CASES],
                         ids=[c[0] for c in FILTER_CASES])
def test_count_where_filters(where: dict[str, Any], properties: dict[str, Any], expected: bool) -> None:
    condition = {"count": {"event": "Product Viewed", "where": where, "gte": 1}}
    assert check(condition, [track("Product Viewed", B, **properties)], B + 1) == (expected, None)


def test_a_boolean_is_not_equal_to_a_number() -> None:
    # "Numbers compare with numbers and strings with strings; a test between different types is false."
    condition = {"count": {"event": "Product Viewed", "where": {"gift": {"eq": 1}}, "gte": 1}}
    assert check(condition, [track("Product Viewed", B, gift=True)], B + 1) == (False, None)


def test_where_filter_counts_only_matching_events_of_that_name() -> None:
    condition = {"count": {"event": "Product Viewed", "where": {"category": "shoes"}, "within": "1h", "eq": 2}}
    events = [
        track("Product Viewed", B + 1 * MIN, category="shoes"),
        track("Product Viewed", B + 2 * MIN, category="hats"),
        track("Product Clicked", B + 3 * MIN, category="shoes"),
        track("Product Viewed", B + 4 * MIN, category="shoes"),
    ]
    value, _ = check(condition, events, B + 10 * MIN)
    assert value is True


# ---- count: windows, bucket edges and deadlines -----------------------------------------------

WINDOW_10M = {"count": {"event": "Product Viewed", "within": "10m", "gte": 1}}
NOW_0030_20 = B + 30 * MIN + 20  # 00:30:20: the 10m window's buckets are 00:21 .. 00:30


def test_event_exactly_at_the_window_start_bucket_boundary_counts_until_that_bucket_leaves() -> None:
    run = Run(WINDOW_10M, [track("Product Viewed", B + 21 * MIN)])
    assert run.at(NOW_0030_20) == (True, B + 31 * MIN)
    assert run.at(B + 31 * MIN - 1) == (True, B + 31 * MIN)
    assert run.at(B + 31 * MIN) == (False, None)


def test_event_just_older_than_the_window_is_not_counted() -> None:
    # 10m01s old at now
    assert check(WINDOW_10M, [track("Product Viewed", NOW_0030_20 - 10 * MIN - 1)], NOW_0030_20) == (False, None)


def test_event_younger_than_window_but_before_its_first_bucket_is_not_counted() -> None:
    # 9m21s old, but in the 00:20 bucket, which is before the window's first bucket (00:21)
    assert check(WINDOW_10M, [track("Product Viewed", B + 21 * MIN - 1)], NOW_0030_20) == (False, None)


def test_event_younger_than_window_minus_one_bucket_always_counts() -> None:
    assert check(WINDOW_10M, [track("Product Viewed", NOW_0030_20 - 9 * MIN + 1)], NOW_0030_20)[0] is True


def test_count_deadline_is_when_the_deciding_bucket_leaves() -> None:
    events = [track("Product Viewed", B + 21 * MIN), track("Product Viewed", B + 25 * MIN + 30)]
    gte2 = {"count": {"event": "Product Viewed", "within": "10m", "gte": 2}}
    gte1 = {"count": {"event": "Product Viewed", "within": "10m", "gte": 1}}
    assert check(gte2, events, NOW_0030_20) == (True, B + 31 * MIN)  # the 00:21 view leaves first
    assert check(gte1, events, NOW_0030_20) == (True, B + 35 * MIN)  # still one left until 00:25 leaves
    assert check(gte2, events, B + 31 * MIN) == (False, None)


def test_count_false_now_with_deadline_when_leaving_buckets_make_it_true() -> None:
    lt2 = {"count": {"event": "Product Viewed", "within": "10m", "lt": 2}}
    events = [track("Product Viewed", B + 21 * MIN), track("Product Viewed", B + 25 * MIN)]
    assert check(lt2, events, NOW_0030_20) == (False, B + 31 * MIN)
    assert check(lt2, events, B + 31 * MIN) == (True, None)  # stays true with no new event: lt only gets truer


def test_count_false_with_no_possible_change_has_no_deadline() -> None:
    gt5 = {"count": {"event": "Product Viewed", "within": "10m", "gt": 5}}
    assert check(gt5, [track("Product Viewed", B + 25 * MIN)], NOW_0030_20) == (False, None)


def test_count_with_no_events_at_all() -> None:
    assert check({"count": {"event": "Product Viewed", "within": "1h", "eq": 0}}, [], B) == (True, None)
    assert check({"count": {"event": "Product Viewed", "within": "1h", "gt": 0}}, [], B) == (False, None)


def test_hour_window_example_from_the_reference() -> None:
    # `within: 24h` at 15:20 counts the views since 16:00 the day before (the current bucket and 23 before it)
    condition = {"count": {"event": "Product Viewed", "within": "24h", "gte": 1}}
    at_1630 = Run(condition, [track("Product Viewed", B + 16 * HOUR + 30 * MIN)])
    assert at_1630.at(B + DAY + 15 * HOUR + 20 * MIN) == (True, B + DAY + 16 * HOUR)
    assert at_1630.at(B + DAY + 16 * HOUR) == (False, None)  # the 16:xx bucket has left
    at_1600 = Run(condition, [track("Product Viewed", B + 16 * HOUR)])
    assert at_1600.at(B + DAY + 15 * HOUR + 20 * MIN) == (True, B + DAY + 16 * HOUR)
    at_1530 = Run(condition, [track("Product Viewed", B + 15 * HOUR + 30 * MIN)])
    assert at_1530.at(B + DAY + 15 * HOUR + 20 * MIN) == (False, None)  # 23h50m old, but before 16:00
    assert at_1530.at(B + DAY + 15 * HOUR - 1) == (True, B + DAY + 15 * HOUR)


def test_day_window_uses_utc_days() -> None:
    condition = {"count": {"event": "Product Viewed", "within": "7d", "gte": 1}}
    now = B + 6 * DAY + HOUR  # days 0..6 are in the window
    assert check(condition, [track("Product Viewed", B)], now) == (True, B + 7 * DAY)
    assert check(condition, [track("Product Viewed", B + DAY - 1)], now) == (True, B + 7 * DAY)
    assert check(condition, [track("Product Viewed", B - 1)], now) == (False, None)  # 6d 1h old, day -1


def test_week_window_buckets_start_on_thursday() -> None:
    condition = {"count": {"event": "Product Viewed", "within": "6w", "gte": 1}}
    thursday = B + DAY
    now = thursday + 3 * WEEK
    assert check(condition, [track("Product Viewed", thursday)], now) == (True, thursday + 6 * WEEK)
    # one second earlier is Wednesday of the week before, which leaves a week sooner
    assert check(condition, [track("Product Viewed", thursday - 1)], now) == (True, thursday + 5 * WEEK)


def test_lifetime_count_has_no_window_and_no_deadline() -> None:
    events = [track("Product Viewed", moment) for moment in (B, B + 100 * DAY, B + 400 * DAY)]
    assert check({"count": {"event": "Product Viewed", "gte": 3}}, events, B + 900 * DAY) == (True, None)
    assert check({"count": {"event": "Product Viewed", "gt": 3}}, events, B + 900 * DAY) == (False, None)


# ---- sum and average --------------------------------------------------------------------------

def test_sum_of_order_revenue_uses_the_normalised_order_value() -> None:
    condition = {"sum": {"event": "Order Completed", "property": "revenue", "eq": 45}}
    events = [
        track("Order Completed", B, order_id="o1", total=20),  # total when there is no revenue
        track("Order Completed", B + 1, order_id="o2", products=[{"price": 10, "quantity": 2}, {"price": 5}]),
    ]
    assert check(condition, events, B + 2) == (True, None)


def test_sum_is_kept_to_the_cent() -> None:
    condition = {"sum": {"event": "Tip Given", "property": "amount", "eq": 0.3}}
    events = [track("Tip Given", B, amount=0.1), track("Tip Given", B + 1, amount=0.2)]
    assert check(condition, events, B + 2) == (True, None)


def test_sum_and_average_of_non_numeric_values_add_zero() -> None:
    events = [track("Product Viewed", B, price=10), track("Product Viewed", B + 1, price="abc"),
              track("Product Viewed", B + 2, price=True), track("Product Viewed", B + 3)]
    assert check({"sum": {"event": "Product Viewed", "property": "price", "eq": 10}}, events, B + 4)[0] is True
    # four events, total 10: the average is 2.5
    assert check({"average": {"event": "Product Viewed", "property": "price", "eq": 2.5}}, events, B + 4)[0] is True


def test_sum_window_deadline() -> None:
    condition = {"sum": {"event": "Order Completed", "property": "revenue", "within": "2h", "gte": 100}}
    events = [order(B + 10 * MIN, "o1", 60), order(B + 90 * MIN, "o2", 50)]
    assert check(condition, events, B + 105 * MIN) == (True, B + 2 * HOUR)
    assert check(condition, events, B + 2 * HOUR) == (False, None)
    smaller = {"sum": {"event": "Order Completed", "property": "revenue", "within": "2h", "gte": 50}}
    assert check(smaller, events, B + 105 * MIN) == (True, B + 3 * HOUR)


def test_average_over_lifetime() -> None:
    events = [order(B, "o1", 100), order(B + DAY, "o2", 50)]
    assert check({"average": {"event": "Order Completed", "property": "revenue", "eq": 75}}, events,
                 B + 2 * DAY) == (True, None)
    assert check({"average": {"event": "Order Completed", "property": "revenue", "gt": 75}}, events,
                 B + 2 * DAY) == (False, None)


def test_average_of_no_events_is_false_whatever_the_comparison() -> None:
    for op in ("lt", "lte", "eq", "ne", "gt", "gte"):
        condition = {"average": {"event": "Order Completed", "property": "revenue", op: 0}}
        assert check(condition, [], B) == (False, None), op


def test_average_window_deadlines() -> None:
    events = [order(B + 10 * MIN, "o1", 100), order(B + 70 * MIN, "o2", 50)]
    gt70 = {"average": {"event": "Order Completed", "property": "revenue", "within": "2h", "gt": 70}}
    assert check(gt70, events, B + 80 * MIN) == (True, B + 2 * HOUR)  # then the average is 50
    assert check(gt70, events, B + 2 * HOUR) == (False, None)
    lt80 = {"average": {"event": "Order Completed", "property": "revenue", "within": "2h", "lt": 80}}
    # 75 now, 50 once the first hour leaves: still below 80; false when no event is left (average of nothing)
    assert check(lt80, events, B + 80 * MIN) == (True, B + 3 * HOUR)
    assert check(lt80, events, B + 2 * HOUR) == (True, B + 3 * HOUR)
    assert check(lt80, events, B + 3 * HOUR) == (False, None)


# ---- recency ----------------------------------------------------------------------------------

def test_recency_of_last_event() -> None:
    condition = {"recency": {"event": "Order Completed", "within": "7d"}}
    events = [order(B, "o1", 10), order(B + DAY, "o2", 10)]
    assert check(condition, events, B + 3 * DAY) == (True, B + 8 * DAY)
    assert check(condition, events, B + 8 * DAY - 1) == (True, B + 8 * DAY)
    assert check(condition, events, B + 8 * DAY) == (False, None)


def test_recency_is_exact_to_the_second_not_bucketed() -> None:
    condition = {"recency": {"event": "Product Viewed", "within": "10m"}}
    moment = B + 7 * MIN + 33
    assert check(condition, [track("Product Viewed", moment)], moment + 10 * MIN - 1) == (True, moment + 10 * MIN)


def test_recency_of_first_event() -> None:
    condition = {"recency": {"event": "Signed Up", "of": "first", "within": "7d"}}
    events = [track("Signed Up", B), track("Signed Up", B + 5 * DAY)]
    assert check(condition, events, B + 6 * DAY) == (True, B + 7 * DAY)
    assert check(condition, events, B + 7 * DAY) == (False, None)  # the later one does not matter


def test_recency_never_happened() -> None:
    assert check({"recency": {"event": "Order Completed", "within": "7d"}}, [], B) == (False, None)
    assert check({"not": {"recency": {"event": "Order Completed", "within": "30d"}}}, [], B) == (True, None)


def test_recency_with_where() -> None:
    condition = {"recency": {"event": "Product Viewed", "where": {"category": "shoes"}, "within": "1h"}}
    events = [track("Product Viewed", B, category="shoes"), track("Product Viewed", B + 30 * MIN, category="hats")]
    assert check(condition, events, B + 40 * MIN) == (True, B + HOUR)


# ---- absence ----------------------------------------------------------------------------------

ABANDON = {"absence": {"trigger": {"event": "Product Added"}, "missing": {"event": "Order Completed"},
                       "within": "48h"}}
T = B + 10 * HOUR


def add(at: float, product: str = "p1") -> Event:
    return track("Product Added", at, product_id=product, price=10)


def test_absence_enters_at_trigger_plus_within() -> None:
    run = Run(ABANDON, [add(T)])
    assert run.at(T) == (False, T + 48 * HOUR)
    assert run.at(T + 48 * HOUR - 1) == (False, T + 48 * HOUR)
    assert run.at(T + 48 * HOUR) == (True, None)
    assert run.at(T + 400 * DAY) == (True, None)


def test_absence_without_trigger_is_false() -> None:
    assert check(ABANDON, [order(T, "o1", 10)], T + 100 * HOUR) == (False, None)


def test_absence_cancelled_by_missing_event_after_the_trigger() -> None:
    assert check(ABANDON, [add(T), order(T + HOUR, "o1", 10)], T + 2 * HOUR) == (False, None)
    assert check(ABANDON, [add(T), order(T + HOUR, "o1", 10)], T + 49 * HOUR) == (False, None)


def test_absence_cancelled_by_missing_event_at_the_trigger_time() -> None:
    assert check(ABANDON, [add(T), order(T, "o1", 10)], T + 49 * HOUR) == (False, None)


def test_absence_cancelled_after_it_became_true() -> None:
    run = Run(ABANDON, [add(T)])
    assert run.at(T + 50 * HOUR)[0] is True
    run.feed(order(T + 50 * HOUR, "o1", 10))
    assert run.at(T + 50 * HOUR) == (False, None)


def test_absence_missing_event_before_trigger_does_not_count() -> None:
    assert check(ABANDON, [order(T - HOUR, "o1", 10), add(T)], T + 48 * HOUR) == (True, None)


def test_absence_new_trigger_after_purchase_starts_a_new_wait() -> None:
    run = Run(ABANDON, [add(T), order(T + HOUR, "o1", 10), add(T + 2 * HOUR, "p2")])
    assert run.at(T + 49 * HOUR) == (False, T + 50 * HOUR)
    assert run.at(T + 50 * HOUR) == (True, None)


def test_absence_expire() -> None:
    condition = {"absence": {**ABANDON["absence"], "expire": "30d"}}
    run = Run(condition, [add(T)])
    assert run.at(T + HOUR) == (False, T + 48 * HOUR)
    assert run.at(T + 48 * HOUR) == (True, T + 30 * DAY)
    assert run.at(T + 30 * DAY - 1) == (True, T + 30 * DAY)
    assert run.at(T + 30 * DAY) == (False, None)


def test_absence_within_zero_is_true_at_the_trigger() -> None:
    condition = {"absence": {**ABANDON["absence"], "within": "0s", "expire": "48h"}}
    run = Run(condition, [add(T)])
    assert run.at(T) == (True, T + 48 * HOUR)
    assert run.at(T + 48 * HOUR) == (False, None)
    run.feed(order(T + HOUR, "o1", 10))
    assert run.at(T + HOUR) == (False, None)


def test_absence_missing_with_where_only_cancels_when_it_matches() -> None:
    condition = {"absence": {"trigger": {"event": "Checkout Started"},
                             "missing": {"event": "Payment Info Entered", "where": {"method": "card"}},
                             "within": "1h"}}
    events = [track("Checkout Started", T), track("Payment Info Entered", T + MIN, method="paypal")]
    assert check(condition, events, T + HOUR) == (True, None)
    events.append(track("Payment Info Entered", T + 2 * MIN, method="card"))
    assert check(condition, events, T + HOUR) == (False, None)


HIGH_INTENT = {"absence": {"trigger": {"event": "Product Added"}, "missing": {"event": "Order Completed"},
                           "within": "1h",
                           "when": {"count": {"event": "Product Viewed", "within": "10m", "gte": 3}}}}


def views(*moments: float) -> list[Event]:
    return [track("Product Viewed", moment) for moment in moments]


def test_absence_when_held_at_trigger_time() -> None:
    run = Run(HIGH_INTENT, [*views(T - 5 * MIN, T - 4 * MIN, T - 3 * MIN), add(T)])
    assert run.at(T + HOUR - 1) == (False, T + HOUR)
    assert run.at(T + HOUR) == (True, None)  # the views are long out of the 10m window by now


def test_absence_when_is_not_judged_at_evaluation_time() -> None:
    run = Run(HIGH_INTENT, [*views(T - 3 * MIN, T - 2 * MIN), add(T), *views(T + MIN)])
    node = run.condition
    assert isinstance(node, AbsenceCondition) and node.when is not None
    # three views within 10 minutes hold now, but only two had happened when the add came
    assert node.when.evaluate(ProfileView(run.profile, T + 2 * MIN, None))[0] is True
    assert run.at(T + HOUR) == (False, None)
    assert run.at(T + 2 * HOUR) == (False, None)


def test_absence_when_views_too_old_at_trigger_time() -> None:
    assert check(HIGH_INTENT, [*views(T - 30 * MIN, T - 29 * MIN, T - 28 * MIN), add(T)], T + HOUR) == (False, None)


def test_absence_when_a_later_trigger_that_does_not_qualify_keeps_the_qualified_one() -> None:
    run = Run(HIGH_INTENT, [*views(T - 5 * MIN, T - 4 * MIN, T - 3 * MIN), add(T), add(T + 30 * MIN, "p2")])
    assert run.at(T + HOUR) == (True, None)


def test_absence_when_a_later_qualified_trigger_restarts_the_wait() -> None:
    run = Run(HIGH_INTENT, [*views(T - 5 * MIN, T - 4 * MIN, T - 3 * MIN), add(T), order(T + MIN, "o1", 10),
                            *views(T + 20 * MIN, T + 21 * MIN, T + 22 * MIN), add(T + 25 * MIN, "p2")])
    assert run.at(T + HOUR) == (False, T + 25 * MIN + HOUR)
    assert run.at(T + 25 * MIN + HOUR) == (True, None)


# ---- ratio ------------------------------------------------------------------------------------

def ratio(op: str, value: float, min_denominator: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"numerator": {"event": "Email Link Clicked"}, "denominator": {"event": "Email Opened"},
                            "within": "30d", op: value}
    if min_denominator is not None:
        body["min_denominator"] = min_denominator
    return {"ratio": body}


def opened(at: float) -> Event:
    return track("Email Opened", at)


def clicked(at: float) -> Event:
    return track("Email Link Clicked", at)


NOW_RATIO = B + 10 * DAY + 12 * HOUR  # days 0..10 are in the 30d window; day d leaves at B + (d + 30) days


def test_ratio_true_and_false() -> None:
    two_of_two = [opened(B + HOUR), opened(B + 2 * HOUR), clicked(B + HOUR), clicked(B + 2 * HOUR)]
    assert check(ratio("gt", 0.5), two_of_two, NOW_RATIO)[0] is True
    one_of_three = [opened(B + HOUR), opened(B + 2 * HOUR), opened(B + 3 * HOUR), clicked(B + HOUR)]
    assert check(ratio("gt", 0.5), one_of_three, NOW_RATIO)[0] is False
    half = [opened(B + HOUR), opened(B + 2 * HOUR), clicked(B + HOUR)]
    assert check(ratio("gt", 0.5), half, NOW_RATIO)[0] is False
    assert check(ratio("gte", 0.5), half, NOW_RATIO)[0] is True


def test_ratio_min_denominator() -> None:
    one_of_one = [opened(B + HOUR), clicked(B + HOUR)]
    assert check(ratio("gt", 0.5), one_of_one, NOW_RATIO)[0] is True  # default minimum is 1
    assert check(ratio("gt", 0.5, 2), one_of_one, NOW_RATIO) == (False, None)
    assert check(ratio("lt", 0.5, 2), [opened(B + HOUR)], NOW_RATIO) == (False, None)  # below the minimum: false


def test_ratio_no_events_is_false() -> None:
    assert check(ratio("gte", 0), [], NOW_RATIO) == (False, None)


def test_ratio_deadline_when_denominator_falls_below_minimum() -> None:
    events = [opened(B + HOUR), opened(B + 5 * DAY), clicked(B + 5 * DAY), clicked(B + 5 * DAY + 1)]
    assert check(ratio("gt", 0.5, 2), events, NOW_RATIO) == (True, B + 30 * DAY)
    assert check(ratio("gt", 0.5, 2), events, B + 30 * DAY) == (False, None)


def test_ratio_deadline_when_it_becomes_true() -> None:
    events = [*(opened(B + HOUR + i) for i in range(3)), opened(B + 5 * DAY), opened(B + 5 * DAY + 1),
              clicked(B + 5 * DAY), clicked(B + 5 * DAY + 1)]
    assert check(ratio("gt", 0.5, 2), events, NOW_RATIO) == (False, B + 30 * DAY)  # 2/5 now, 2/2 then
    assert check(ratio("gt", 0.5, 2), events, B + 30 * DAY) == (True, B + 35 * DAY)


def test_ratio_buckets_leaving_together_are_judged_together() -> None:
    # day 0: 1 open, 1 click; day 5: 3 opens, 2 clicks. 3/4 now; 2/3 after day 0 leaves (never 3/3).
    events = [opened(B + HOUR), clicked(B + HOUR), *(opened(B + 5 * DAY + i) for i in range(3)),
              clicked(B + 5 * DAY), clicked(B + 5 * DAY + 1)]
    assert check(ratio("lt", 0.8, 3), events, NOW_RATIO) == (True, B + 35 * DAY)
    assert check(ratio("lt", 0.8, 3), events, B + 30 * DAY) == (True, B + 35 * DAY)


# ---- channel ----------------------------------------------------------------------------------

def page(at: float) -> Event:
    return normalise(message("page", at, name="Home"))


def screen(at: float) -> Event:
    return normalise(message("screen", at, name="Home"))


def test_channel_without_window() -> None:
    assert check({"channel": {"name": "web"}}, [page(B)], B + 400 * DAY) == (True, None)
    assert check({"channel": {"name": "mobile"}}, [page(B)], B + 1) == (False, None)
    assert check({"channel": {"name": "mobile"}}, [screen(B)], B + 1) == (True, None)
    assert check({"channel": {"name": "email"}}, [track("Email Opened", B)], B + 1) == (True, None)
    assert check({"channel": {"name": "server"}}, [track("Order Completed", B, order_id="o", revenue=1)],
                 B + 1) == (True, None)


def test_channel_with_window() -> None:
    condition = {"channel": {"name": "web", "within": "30d"}}
    run = Run(condition, [page(B), page(B + DAY)])
    assert run.at(B + 2 * DAY) == (True, B + 31 * DAY)
    assert run.at(B + 31 * DAY) == (False, None)


def test_not_channel() -> None:
    condition = {"not": {"channel": {"name": "mobile"}}}
    run = Run(condition, [page(B)])
    assert run.at(B + 1) == (True, None)
    run.feed(screen(B + 2))
    assert run.at(B + 3) == (False, None)


# ---- segment references -----------------------------------------------------------------------

GOLD = {"id": "gold", "name": "Gold", "condition": {"trait": {"name": "plan", "eq": "gold"}}}


def test_segment_reference_follows_the_other_segments_membership() -> None:
    run = Run({"segment": {"id": "gold"}}, others=(GOLD,))
    assert run.at(B) == (False, None)
    run.feed(identify(B, plan="gold"))
    assert "gold" in run.profile.memberships
    assert run.at(B + 1) == (True, None)
    assert "s" in run.profile.memberships  # re-evaluated because the membership it reads changed
    run.feed(identify(B + 2, plan="silver"))
    assert run.at(B + 3) == (False, None)
    assert "s" not in run.profile.memberships


# ---- trait ------------------------------------------------------------------------------------

def test_trait_comparisons() -> None:
    events = [identify(B, plan="gold", age=41, tags=["vip", "beta"])]
    assert check({"trait": {"name": "plan", "eq": "gold"}}, events, B + 1) == (True, None)
    assert check({"trait": {"name": "plan", "in": ["silver", "bronze"]}}, events, B + 1) == (False, None)
    assert check({"trait": {"name": "age", "gte": 18}}, events, B + 1) == (True, None)
    assert check({"trait": {"name": "tags", "contains": "vip"}}, events, B + 1) == (True, None)
    assert check({"trait": {"name": "email", "exists": True}}, events, B + 1) == (False, None)
    assert check({"trait": {"name": "plan", "exists": True}}, events, B + 1) == (True, None)


# ---- rfm and percentile -----------------------------------------------------------------------

def test_rfm_metrics() -> None:
    events = [order(B, "o1", 100), order(B + DAY, "o2", 50)]
    assert check({"rfm": {"metric": "orders", "eq": 2}}, events, B + 2 * DAY) == (True, None)
    assert check({"rfm": {"metric": "orders", "gt": 2}}, events, B + 2 * DAY) == (False, None)
    assert check({"rfm": {"metric": "revenue", "eq": 150}}, events, B + 2 * DAY) == (True, None)
    assert check({"rfm": {"metric": "revenue", "gt": 150}}, events, B + 2 * DAY) == (False, None)
    assert check({"rfm": {"metric": "average_order_value", "eq": 75}}, events, B + 2 * DAY) == (True, None)
    assert check({"rfm": {"metric": "average_order_value", "lt": 75}}, events, B + 2 * DAY) == (False, None)


def test_rfm_with_no_orders() -> None:
    assert check({"rfm": {"metric": "orders", "eq": 0}}, [], B) == (True, None)
    assert check({"rfm": {"metric": "average_order_value", "eq": 0}}, [], B) == (True, None)


def test_rfm_is_net_of_refunds() -> None:
    events = [order(B, "o1", 100), order(B + DAY, "o2", 50),
              track("Order Refunded", B + 2 * DAY, order_id="o2")]
    assert check({"rfm": {"metric": "revenue", "eq": 100}}, events, B + 3 * DAY) == (True, None)
    assert check({"rfm": {"metric": "orders", "eq": 1}}, events, B + 3 * DAY) == (True, None)


PREMIUM = {"percentile": {"metric": "revenue", "top": 20}}


def test_percentile_before_statistics_exist_is_false() -> None:
    assert check(PREMIUM, [order(B, "o1", 1_000_000)], B + 1) == (False, None)


def test_percentile_after_statistics() -> None:
    stats = PopulationStats.from_values({"revenue": [10 * i for i in range(1, 11)]})  # 80th percentile: 80
    assert check(PREMIUM, [order(B, "o1", 80.01)], B + 1, stats=stats) == (True, None)
    assert check(PREMIUM, [order(B, "o1", 80)], B + 1, stats=stats) == (False, None)  # ties at the threshold are out
    assert check(PREMIUM, [order(B, "o1", 500)], B + 1, stats=stats) == (True, None)
    assert check(PREMIUM, [], B + 1, stats=stats) == (False, None)


def test_percentile_nearest_rank_on_a_hundred_values() -> None:
    stats = PopulationStats.from_values({"revenue": list(range(1, 101))})
    assert check(PREMIUM, [order(B, "o1", 81)], B + 1, stats=stats)[0] is True
    assert check(PREMIUM, [order(B, "o1", 80)], B + 1, stats=stats)[0] is False
    top_5_orders = {"percentile": {"metric": "orders", "top": 5}}
    stats = PopulationStats.from_values({"orders": list(range(1, 101))})  # 95th percentile: 95
    assert check(top_5_orders, [order(B + i, f"o{i}", 1) for i in range(96)], B + 100, stats=stats)[0] is True
    assert check(top_5_orders, [order(B + i, f"o{i}", 1) for i in range(95)], B + 100, stats=stats)[0] is False


def test_percentile_needs_a_figure_above_zero() -> None:
    stats = PopulationStats.from_values({"revenue": [0] * 10})
    assert check(PREMIUM, [], B + 1, stats=stats) == (False, None)


def test_percentile_for_a_metric_without_statistics_is_false() -> None:
    stats = PopulationStats.from_values({"orders": [1, 2, 3]})
    assert check(PREMIUM, [order(B, "o1", 100)], B + 1, stats=stats) == (False, None)


# ---- all / any / not --------------------------------------------------------------------------

def recent(event: str, within: str) -> dict[str, Any]:
    return {"recency": {"event": event, "within": within}}


GOLD_TRAIT = {"trait": {"name": "plan", "eq": "gold"}}
A_AND_B = [track("A", T), track("B", T)]


def test_all_true_takes_the_earliest_deadline() -> None:
    condition = {"all": [recent("A", "1h"), recent("B", "2h")]}
    assert check(condition, A_AND_B, T + 10 * MIN) == (True, T + HOUR)
    assert check(condition, A_AND_B, T + HOUR) == (False, None)  # A's part now stays false


def test_all_with_a_part_that_stays_false_has_no_deadline() -> None:
    condition = {"all": [recent("A", "1h"), GOLD_TRAIT]}
    assert check(condition, A_AND_B, T + 10 * MIN) == (False, None)


def test_all_false_with_parts_that_will_turn_true() -> None:
    condition = {"all": [{"not": recent("A", "1h")}, {"not": recent("B", "2h")}]}
    run = Run(condition, A_AND_B)
    value, deadline = run.at(T + 10 * MIN)
    assert value is False
    assert deadline is not None and T + 10 * MIN < deadline <= T + 2 * HOUR
    while deadline is not None and deadline < T + 2 * HOUR:  # following the deadlines reaches the change
        value, deadline = run.at(deadline)
        assert value is False
    assert deadline == T + 2 * HOUR
    assert run.at(T + 2 * HOUR) == (True, None)


def test_any_with_a_part_that_stays_true_has_no_deadline() -> None:
    condition = {"any": [recent("A", "1h"), GOLD_TRAIT]}
    assert check(condition, [*A_AND_B, identify(T, plan="gold")], T + 10 * MIN) == (True, None)


def test_any_true_until_its_last_passing_part_expires() -> None:
    condition = {"any": [recent("A", "1h"), recent("B", "2h")]}
    run = Run(condition, A_AND_B)
    value, deadline = run.at(T + 10 * MIN)
    assert value is True
    assert deadline is not None and T + 10 * MIN < deadline <= T + 2 * HOUR
    while deadline is not None and deadline < T + 2 * HOUR:
        value, deadline = run.at(deadline)
        assert value is True
    assert deadline == T + 2 * HOUR
    assert run.at(T + 2 * HOUR) == (False, None)


def test_any_false_takes_the_earliest_deadline_of_its_parts() -> None:
    condition = {"any": [{"not": recent("A", "1h")}, GOLD_TRAIT, {"not": recent("B", "2h")}]}
    assert check(condition, A_AND_B, T + 10 * MIN) == (False, T + HOUR)
    assert check({"any": [GOLD_TRAIT, recent("C", "1h")]}, A_AND_B, T) == (False, None)


def test_not_flips_the_value_and_keeps_the_deadline() -> None:
    condition = {"not": recent("A", "1h")}
    assert check(condition, A_AND_B, T + 10 * MIN) == (False, T + HOUR)
    assert check(condition, A_AND_B, T + HOUR) == (True, None)
    assert check({"not": GOLD_TRAIT}, [], T) == (True, None)


def test_nested_combination() -> None:
    condition = {"all": [{"any": [GOLD_TRAIT, recent("A", "1h")]}, {"not": {"channel": {"name": "mobile"}}}]}
    assert check(condition, A_AND_B, T + 10 * MIN) == (True, T + HOUR)
    assert check(condition, [*A_AND_B, screen(T)], T + 10 * MIN) == (False, None)


# ---- describe ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("condition", "text"), [
    ({"count": {"event": "Product Viewed", "within": "24h", "gt": 5}}, "count(Product Viewed within 24h) > 5"),
    ({"count": {"event": "Product Viewed", "where": {"category": "shoes"}, "within": "10m", "gte": 3}},
     "count(Product Viewed where category=='shoes' within 10m) >= 3"),
    ({"count": {"event": "Product Viewed", "gte": 3}}, "count(Product Viewed) >= 3"),
    ({"sum": {"event": "Order Completed", "property": "revenue", "within": "30d", "gte": 500}},
     "sum(revenue of Order Completed within 30d) >= 500"),
    ({"average": {"event": "Order Completed", "property": "revenue", "within": "26w", "gt": 80.5}},
     "average(revenue of Order Completed within 26w) > 80.5"),
    ({"recency": {"event": "Order Completed", "within": "7d"}}, "Order Completed within 7d"),
    ({"recency": {"event": "Signed Up", "of": "first", "within": "7d"}}, "first Signed Up within 7d"),
    (ABANDON, "no Order Completed within 2d after Product Added"),
    (HIGH_INTENT, "no Order Completed within 60m after Product Added (when count(Product Viewed within 10m) >= 3)"),
    (ratio("gt", 0.5, 2), "ratio(Email Link Clicked / Email Opened within 30d) > 0.5"),
    ({"channel": {"name": "web", "within": "30d"}}, "seen on web within 30d"),
    ({"channel": {"name": "mobile"}}, "seen on mobile"),
    ({"segment": {"id": "gold"}}, "member of gold"),
    ({"rfm": {"metric": "orders", "gt": 3}}, "orders > 3"),
    ({"percentile": {"metric": "revenue", "top": 20}}, "top 20% by revenue"),
    (GOLD_TRAIT, "trait plan == 'gold'"),
    ({"not": {"channel": {"name": "mobile"}}}, "not (seen on mobile)"),
    ({"all": [GOLD_TRAIT, {"rfm": {"metric": "orders", "gte": 5}}]}, "all of (trait plan == 'gold'; orders >= 5)"),
    ({"any": [GOLD_TRAIT, {"rfm": {"metric": "revenue", "lt": 10}}]}, "any of (trait plan == 'gold'; revenue < 10)"),
])
def test_describe_texts(condition: dict[str, Any], text: str) -> None:
    catalogue = catalogue_for(condition, (GOLD,))
    assert catalogue.segments["s"].condition.describe() == text


def test_describe_has_no_python_reprs_of_objects() -> None:
    for segment in catalogue_for({"all": [ABANDON, HIGH_INTENT["absence"]["when"], ratio("lt", 1)]}).segments.values():
        for node in segment.condition.walk():
            text = node.describe()
            assert text and "object at" not in text and "Condition" not in text and "MetricSpec" not in text


def test_manual_must_be_the_whole_condition_and_true() -> None:
    with pytest.raises(CatalogueError, match=r"condition.all\[0\].manual: must be the whole condition"):
        build_catalogue([("t.yaml", {"id": "s", "name": "S", "condition": {"all": [{"manual": True}]}})])
    with pytest.raises(CatalogueError, match=r"condition\.manual: must be true"):
        build_catalogue([("t.yaml", {"id": "s", "name": "S", "condition": {"manual": "yes"}})])
    with pytest.raises(CatalogueError, match="group: a static"):
        build_catalogue([("t.yaml", {"id": "s", "name": "S", "group": "g", "condition": {"manual": True}})])


def test_purchased_within_holds_until_the_purchase_ages_out_with_no_new_event() -> None:
    bought = track("Order Completed", B, order_id="o-1", revenue=20.0,
                   products=[{"product_id": "A", "category": "hats"}, {"product_id": "B", "category": "shoes"}])
    run = Run({"purchased": {"product_id": "B", "within": "30d"}}, [bought])
    assert run.at(B + DAY) == (True, B + 30 * DAY)
    assert run.at(B + 30 * DAY) == (False, None)
    assert Run({"viewed": {"category": "shoes"}}, [bought]).at(B) == (False, None)


def test_a_where_path_through_an_array_matches_any_element() -> None:
    condition = {"count": {"event": "Order Completed", "gte": 1, "where": {"products[].category": "shoes"}}}
    shoes = track("Order Completed", B, order_id="o-1", revenue=5.0,
                  products=[{"product_id": "A", "category": "hats"}, {"product_id": "B", "category": "shoes"}])
    hats = track("Order Completed", B, order_id="o-2", revenue=5.0, products=[{"product_id": "A", "category": "hats"}])
    assert Run(condition, [shoes]).at(B + 1) == (True, None)
    assert Run(condition, [hats]).at(B + 1) == (False, None)
